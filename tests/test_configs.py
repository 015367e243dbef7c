"""Configs and OpSelector: validation names the field, dict/JSON round trips, coremltools translation."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mil_sparsity as ms
from mil_sparsity.configs import CONFIG_TYPES, config_from_dict, config_to_dict

VALID = {
    ms.ThresholdConfig: {},
    ms.MagnitudeConfig: {"target_sparsity": 0.5},
    ms.BlockConfig: {"target_sparsity": 0.5, "block_size": 4},
    ms.NMConfig: {"n": 2, "m": 4},
    ms.PackConfig: {},
}

# field -> invalid values (and the error type each must raise)
INVALID: dict[str, list[tuple[Any, type[Exception]]]] = {
    "threshold": [(-0.1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("0.1", TypeError), (None, TypeError), (True, TypeError)],
    "minimum_sparsity_percentile": [(-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("0.5", TypeError), ([0.5], TypeError)],
    "target_sparsity": [(-0.01, ValueError), (1.01, ValueError), (math.nan, ValueError), (-math.inf, ValueError), ("0.5", TypeError), (None, TypeError)],
    "weight_threshold": [(-1, ValueError), (2.5, TypeError), ("2048", TypeError), (None, TypeError), (False, TypeError)],
    "block_size": [(1, ValueError), (0, ValueError), (-4, ValueError), (4.0, TypeError), ("4", TypeError)],
    "dim": [(1.0, TypeError), ("0", TypeError), (True, TypeError)],  # None: the reduction axis
    "n": [(0, ValueError), (-1, ValueError), (2.0, TypeError)],
    "m": [(0, ValueError), (-4, ValueError), (4.0, TypeError)],
}


def cases() -> list[tuple[type, str, Any, type[Exception]]]:
    out = []
    for cls, base in VALID.items():
        for field in attrs.fields(cls):
            for value, error in INVALID.get(field.name, []):
                if cls is ms.PackConfig and field.name == "minimum_sparsity_percentile" and value is None:
                    continue
                out.append((cls, field.name, value, error))
    return out


@pytest.mark.parametrize("cls, field, value, error", cases(), ids=lambda v: repr(v)[:30])
def test_invalid_field_raises_naming_field(cls: type, field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"{cls.__name__}.{field}"):
        cls(**{**VALID[cls], field: value})


def test_n_greater_than_m_raises() -> None:
    with pytest.raises(ValueError, match=r"NMConfig.n must be <= NMConfig.m, got n=5, m=4"):
        ms.NMConfig(5, 4)


def test_pack_minimum_may_be_none_and_configs_are_frozen() -> None:
    config = ms.PackConfig(minimum_sparsity_percentile=None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.weight_threshold = 3  # type: ignore[misc]


def test_integers_accepted_for_float_fields() -> None:
    assert ms.MagnitudeConfig(1).target_sparsity == 1
    assert ms.ThresholdConfig(threshold=0).threshold == 0


configs_strategy = st.one_of(
    st.builds(ms.ThresholdConfig, st.floats(0, 10), st.floats(0, 1), st.integers(0, 10**6)),
    st.builds(ms.MagnitudeConfig, st.floats(0, 1), st.integers(0, 10**6)),
    st.builds(ms.BlockConfig, st.floats(0, 1), st.integers(2, 64), st.integers(-5, 4), st.integers(0, 10**6)),
    st.integers(1, 16).flatmap(lambda m: st.builds(ms.NMConfig, st.integers(1, m), st.just(m), st.integers(-5, 4), st.integers(0, 10**6))),
    st.builds(ms.PackConfig, st.none() | st.floats(0, 1), st.integers(0, 10**6)),
)


@settings(max_examples=200, deadline=None)
@given(configs_strategy)
def test_config_dict_round_trip(config: Any) -> None:
    data = json.loads(json.dumps(config_to_dict(config)))
    assert data["kind"] == config.kind
    assert config_from_dict(data) == config


@settings(max_examples=100, deadline=None)
@given(
    configs_strategy | st.none(),
    st.dictionaries(st.sampled_from(["conv", "linear", "matmul", "conv_transpose"]), configs_strategy | st.none(), max_size=3),
    st.dictionaries(st.text("abcdefgh_*?", min_size=1, max_size=8), configs_strategy | st.none(), max_size=4),
)
def test_selector_json_round_trip(global_config: Any, by_type: Any, by_name: Any) -> None:
    selector = ms.OpSelector(global_config, by_type, by_name)
    assert ms.OpSelector.from_json(selector.to_json()) == selector
    assert ms.OpSelector.from_dict(json.loads(json.dumps(selector.to_dict()))) == selector


@pytest.mark.parametrize(
    "data, error, match",
    [
        ({"global_config": {"kind": "magnitude", "target_sparsity": 0.5, "sparsity": 1}}, ValueError, r"unknown key\(s\) \['sparsity'\]"),
        ({"global_config": {"kind": "prune"}}, ValueError, "kind must be one of"),
        ({"global_config": {"target_sparsity": 0.5}}, ValueError, "kind must be one of"),
        ({"global": None}, ValueError, r"unknown key\(s\) \['global'\]"),
        ({"op_type_configs": {"conv": {"kind": "n_m", "n": 5, "m": 4}}}, ValueError, "NMConfig.n must be <="),
        ({"op_name_configs": {"x": {"kind": "block", "target_sparsity": 0.5}}}, ValueError, "block_size"),
        ({"op_name_configs": []}, TypeError, "op_name_configs must be a dict"),
        ({"global_config": {"kind": "magnitude", "target_sparsity": "half"}}, TypeError, "MagnitudeConfig.target_sparsity"),
    ],
)
def test_selector_from_dict_rejects_bad_input(data: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ms.OpSelector.from_dict(data)


def test_selector_rejects_non_configs() -> None:
    with pytest.raises(TypeError, match="OpSelector.global_config"):
        ms.OpSelector(global_config=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"op_type_configs\['conv'\]"):
        ms.OpSelector(op_type_configs={"conv": {"kind": "magnitude"}})  # type: ignore[dict-item]


def test_selector_resolution_rules() -> None:
    selector = ms.OpSelector(
        global_config=ms.MagnitudeConfig(0.1),
        op_type_configs={"conv": ms.MagnitudeConfig(0.2)},
        op_name_configs={"layer*": ms.MagnitudeConfig(0.3), "layer1": ms.MagnitudeConfig(0.4), "w_exact": None},
    )
    assert selector.resolve("w", "layer1", "conv").config == ms.MagnitudeConfig(0.4)  # exact beats glob
    assert selector.resolve("w", "layer2", "conv").config == ms.MagnitudeConfig(0.3)  # glob beats type
    assert selector.resolve("layer9_w", "other", "linear").config == ms.MagnitudeConfig(0.3)  # glob on const name
    assert selector.resolve("w", "c", "conv").config == ms.MagnitudeConfig(0.2)
    assert selector.resolve("w", "c", "linear").config == ms.MagnitudeConfig(0.1)
    none = selector.resolve("w_exact", "layer1", "conv")  # const name beats consumer name
    assert none.config is None and none.by_name


def test_as_selector_accepts_every_documented_form() -> None:
    from mil_sparsity.selector import as_selector

    config = ms.MagnitudeConfig(0.5)
    expected = ms.OpSelector(global_config=config)
    assert as_selector(config) == expected
    assert as_selector(expected) is expected
    assert as_selector(expected.to_dict()) == expected
    assert as_selector(expected.to_json()) == expected
    with pytest.raises(ValueError, match="not valid JSON"):
        as_selector("{")
    with pytest.raises(TypeError, match="config must be"):
        as_selector(3)


def test_coremltools_optimization_config_translates_field_by_field() -> None:
    import coremltools.optimize.coreml as cto
    from mil_sparsity.selector import as_selector

    ct_config = cto.OptimizationConfig(
        global_config=cto.OpThresholdPrunerConfig(threshold=0.03, minimum_sparsity_percentile=0.55, weight_threshold=1024),
        op_type_configs={"conv": cto.OpMagnitudePrunerConfig(n_m_ratio=(3, 4)), "linear": None},
        op_name_configs={
            "a": cto.OpMagnitudePrunerConfig(target_sparsity=0.6, weight_threshold=10),
            "b": cto.OpMagnitudePrunerConfig(target_sparsity=0.5, block_size=4, dim=1),
        },
    )
    selector = as_selector(ct_config)
    assert selector.global_config == ms.ThresholdConfig(0.03, 0.55, 1024)
    assert selector.op_type_configs == {"conv": ms.NMConfig(3, 4, dim=1), "linear": None}
    assert selector.op_name_configs == {
        "a": ms.MagnitudeConfig(0.6, weight_threshold=10),
        "b": ms.BlockConfig(0.5, 4, dim=1),
    }
    block_default = as_selector(cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, block_size=2)))
    assert block_default.global_config == ms.BlockConfig(0.5, 2, dim=0)
    with pytest.raises(ValueError, match="only OpThresholdPrunerConfig and OpMagnitudePrunerConfig"):
        as_selector(cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=4)))


def test_every_config_type_is_covered() -> None:
    assert set(VALID) == set(CONFIG_TYPES)


def test_every_config_shares_the_base_class() -> None:
    for cls, fields in VALID.items():
        config = cls(**fields)
        assert isinstance(config, ms.SparsityConfig)
        assert config.weight_threshold == 2048
        assert config.to_dict() == config_to_dict(config)
    assert {cls.kind for cls in VALID if cls.structured} == {"block", "n_m"}


def test_configs_are_hashable_dict_keys() -> None:
    configs = [cls(**fields) for cls, fields in VALID.items()]
    seen = {config: index for index, config in enumerate(configs)}
    assert seen[ms.MagnitudeConfig(0.5)] == configs.index(ms.MagnitudeConfig(0.5))
    assert len(seen) == len(configs)
    assert hash(ms.NMConfig(2, 4)) == hash(ms.NMConfig(2, 4, dim=None))


def test_format_version_is_written_and_checked() -> None:
    data = ms.OpSelector(global_config=ms.MagnitudeConfig(0.5)).to_dict()
    assert data["format_version"] == 1
    assert ms.OpSelector.from_dict(data) == ms.OpSelector(global_config=ms.MagnitudeConfig(0.5))
    with pytest.raises(ValueError, match=r"OpSelector\.format_version must be 1 .*got 2"):
        ms.OpSelector.from_dict({**data, "format_version": 2})
    with pytest.raises(ValueError, match=r"config\.format_version must be 1 .*got '1'"):
        config_from_dict({"kind": "pack", "format_version": "1"})
    assert config_from_dict({"kind": "pack", "format_version": 1}) == ms.PackConfig()


def test_missing_required_field_is_named() -> None:
    with pytest.raises(ValueError, match=r"config: BlockConfig needs 'block_size' \(required field missing\)"):
        config_from_dict({"kind": "block", "target_sparsity": 0.5})
    with pytest.raises(ValueError, match=r"NMConfig needs 'n', 'm' \(required fields missing\)"):
        config_from_dict({"kind": "n_m"})
