"""ms.prune_weights / ms.pack_weights: the one-call post-hoc form of coremltools' prune_weights.

* Switching from coremltools is two lines: the same OptimizationConfig gives the same weights
  (bit for bit) and the same deployment target as ``ct.optimize.coreml.prune_weights``, also
  when it mixes threshold and magnitude configs (split over our two passes).
* Every config form a pass's ``config`` option takes gives the same model.
* ``calibration`` reaches prune_by_magnitude as its option; pack_weights keeps values.
* Wrong config families are ValueErrors naming the function to use instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct
from coremltools.optimize.coreml import (
    OpMagnitudePrunerConfig,
    OpThresholdPrunerConfig,
    OptimizationConfig,
)

import mil_sparsity as ms
from mil_sparsity.oneshot import split_by_pass
from mil_sparsity.posthoc import load_program
from _mil_helpers import one_pass
from _models import (
    SPARSE_OP,
    assert_bit_equal,
    dense_value,
    distinct_magnitudes,
    hash_tree,
    ref_threshold,
    weight_vars,
)
from test_posthoc_targets import zero_offsets
from test_streaming import assert_equivalent, spec_of

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BIG = ("linear", "weight", (128, 64))
LAST = ("linear", "weight", (32, 128))


def load(path: Path) -> Any:
    return ct.models.MLModel(str(path), skip_model_load=True)


def weights_of(model: Any, tmp_path: Path, name: str) -> dict[Any, Any]:
    """(op type, input, shape) -> (op type of the weight's producer, dense value)."""
    path = tmp_path / f"{name}.mlpackage"
    model.save(str(path))
    function = load_program(load(path)).functions["main"]
    return {key: (var.op.op_type, dense_value(var)) for key, var in weight_vars(function).items()}


def assert_same_weights(ours: dict[Any, Any], theirs: dict[Any, Any]) -> None:
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert ours[key][0] == theirs[key][0], key
        assert_bit_equal(ours[key][1], theirs[key][1], str(key))


def tie_free_mlp(target: str, path: Path) -> Path:
    """linear 64->128 -> relu -> linear 128->32, fp32 weights with pairwise distinct magnitudes:
    coremltools' percentile cut and our exact count agree only without ties (README)."""
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(7)
    first, second = distinct_magnitudes(rng, (128, 64), np.float32), distinct_magnitudes(rng, (32, 128), np.float32)
    version = getattr(ct.target, target)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=version)
    def prog(x: Any) -> Any:
        x = mb.relu(x=mb.linear(x=x, weight=mb.const(val=first, name="fc1_weight"), name="fc1"))
        return mb.linear(x=x, weight=mb.const(val=second, name="fc2_weight"), name="fc2")

    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=version,
               compute_precision=ct.precision.FLOAT32).save(str(path))
    return path


def const_name(path: Path, key: Any) -> str:
    return str(weight_vars(load_program(load(path)).functions["main"])[key].op.name)


# ---- the switch from coremltools --------------------------------------------------------------------
@pytest.mark.parametrize("target", ["iOS15", "iOS16", "iOS18"])
def test_same_optimization_config_same_model_as_coremltools(target, tmp_path):
    src = tie_free_mlp(target, tmp_path / "src.mlpackage")
    config = OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.5))

    theirs = ct.optimize.coreml.prune_weights(load(src), config=config)
    ours = ms.prune_weights(load(src), config)

    assert isinstance(ours, ct.models.MLModel)
    assert ours.get_spec().specificationVersion == theirs.get_spec().specificationVersion
    assert ours.get_spec().specificationVersion == max(ct.target.iOS16.value, getattr(ct.target, target).value)
    mine = weights_of(ours, tmp_path, "ours")
    assert mine[BIG][0] == mine[LAST][0] == SPARSE_OP
    assert_same_weights(mine, weights_of(theirs, tmp_path, "theirs"))


def test_mixed_threshold_and_magnitude_config_like_coremltools(tmp_path):
    """coremltools' one pass takes both config kinds; we split them over our two passes and give
    every weight the config the whole selector gives it."""
    src = tie_free_mlp("iOS16", tmp_path / "src.mlpackage")
    last = const_name(src, LAST)
    config = OptimizationConfig(
        global_config=OpMagnitudePrunerConfig(target_sparsity=0.5),
        op_name_configs={last: OpThresholdPrunerConfig(threshold=1.0, minimum_sparsity_percentile=0.2)},
    )
    report = ms.SparsityReport()
    ours = ms.prune_weights(src, config, report=report)
    theirs = ct.optimize.coreml.prune_weights(load(src), config=config)

    mine = weights_of(ours, tmp_path, "ours")
    assert_same_weights(mine, weights_of(theirs, tmp_path, "theirs"))
    assert mine[LAST][0] == SPARSE_OP
    source_last = dense_value(weight_vars(load_program(load(src)).functions["main"])[LAST])
    assert_bit_equal(mine[LAST][1], ref_threshold(source_last, 1.0), "threshold-pruned weight")
    by_pass = {record.name: record.pass_name for record in report.packed}
    assert by_pass[last] == ms.PRUNE_BY_THRESHOLD
    assert by_pass[const_name(src, BIG)] == ms.PRUNE_BY_MAGNITUDE
    assert len(report.packed) == 2


def test_split_keeps_each_weights_config():
    magnitude, threshold = ms.MagnitudeConfig(0.5), ms.ThresholdConfig(threshold=0.1)
    selector = ms.OpSelector(
        global_config=magnitude,
        op_type_configs={"conv": threshold, "matmul": None},
        op_name_configs={"w*": ms.NMConfig(2, 4), "fc": threshold},
    )
    parts = dict(split_by_pass(selector))
    assert list(parts) == [ms.PRUNE_BY_THRESHOLD, ms.PRUNE_BY_MAGNITUDE]
    for name, consumer, op_type in [("w1", "x", "linear"), ("a", "fc", "linear"), ("a", "b", "conv"),
                                    ("a", "b", "matmul"), ("a", "b", "linear")]:
        whole = selector.resolve(name, consumer, op_type).config
        found = [part.resolve(name, consumer, op_type).config for part in parts.values()]
        assert [config for config in found if config is not None] == ([whole] if whole is not None else [])


# ---- every config form ----------------------------------------------------------------------------
CONFIG_FORMS = {
    "config": lambda: ms.NMConfig(2, 4),
    "selector": lambda: ms.OpSelector(global_config=ms.NMConfig(2, 4)),
    "dict": lambda: ms.OpSelector(global_config=ms.NMConfig(2, 4)).to_dict(),
    "json": lambda: ms.OpSelector(global_config=ms.NMConfig(2, 4)).to_json(),
    "coremltools": lambda: OptimizationConfig(global_config=OpMagnitudePrunerConfig(n_m_ratio=(2, 4))),
}


@pytest.mark.parametrize("form", list(CONFIG_FORMS))
def test_every_config_form_gives_the_apply_pipeline_model(form, sources, tmp_path):
    src = sources.get("mlp", "iOS18")
    digests = hash_tree(src)
    report = ms.SparsityReport()
    ours = ms.prune_weights(src, CONFIG_FORMS[form](), report=report)
    expected = ms.apply_pipeline(src, one_pass(ms.PRUNE_BY_MAGNITUDE, config=ms.NMConfig(2, 4)))
    assert hash_tree(src) == digests
    assert zero_offsets(ours.get_spec()) == zero_offsets(expected.get_spec())
    ours.save(str(tmp_path / "ours.mlpackage"))
    expected.save(str(tmp_path / "expected.mlpackage"))
    assert_equivalent(tmp_path / "ours.mlpackage", tmp_path / "expected.mlpackage")
    assert {r.pass_name for r in report} == {ms.PRUNE_BY_MAGNITUDE} and len(report.packed) == 2


def test_threshold_config_runs_prune_by_threshold(sources):
    report = ms.SparsityReport()
    ms.prune_weights(sources.get("mlp", "iOS18"), ms.ThresholdConfig(threshold=0.05, minimum_sparsity_percentile=0.2), report=report)
    assert {r.pass_name for r in report} == {ms.PRUNE_BY_THRESHOLD} and report.packed


def test_ios15_model_is_raised_with_a_note(sources):
    report = ms.SparsityReport()
    result = ms.pack_weights(sources.get("mlp", "iOS15"), report=report)
    assert result.get_spec().specificationVersion == ct.target.iOS16.value
    assert len(report.notes) == 1 and "from iOS15 to iOS16" in report.notes[0]


# ---- pack_weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [None, ms.PackConfig(minimum_sparsity_percentile=0.5), {"global_config": {"kind": "pack"}}],
                         ids=["default", "config", "dict"])
def test_pack_weights_keeps_values(config, sources, tmp_path):
    src = sources.get("mlp", "iOS18")  # layer 0 holds 60% zeros, layer 1 none
    report = ms.SparsityReport()
    packed = ms.pack_weights(load(src), config, report=report)
    before = {key: ("const", dense_value(var)) for key, var in weight_vars(load_program(load(src)).functions["main"]).items()}
    after = weights_of(packed, tmp_path, "packed")
    assert after[BIG][0] == SPARSE_OP and after[LAST][0] == "const"
    for key in before:
        assert_bit_equal(after[key][1], before[key][1], str(key))
    assert [r.pass_name for r in report.packed] == [ms.SPARSE_PACK]


# ---- calibration -------------------------------------------------------------------------------------
def test_calibration_is_forwarded_to_prune_by_magnitude(sources, tmp_path):
    src = sources.get("mlp", "iOS18")
    stats = ms.ActivationStats()
    rng = np.random.default_rng(0)
    for var in weight_vars(load_program(load(src)).functions["main"]).values():
        channels = int(var.shape[1])
        stats.add("main", str(var.op.name), rng.uniform(0.1, 10.0, channels), 16)
    config = ms.MagnitudeConfig(target_sparsity=0.5, scoring="activation")
    report = ms.SparsityReport()
    ours = ms.prune_weights(src, config, calibration=stats, report=report)
    expected = ms.apply_pipeline(src, one_pass(ms.PRUNE_BY_MAGNITUDE, config=config, calibration=stats))
    ours.save(str(tmp_path / "ours.mlpackage"))
    expected.save(str(tmp_path / "expected.mlpackage"))
    assert_equivalent(tmp_path / "ours.mlpackage", tmp_path / "expected.mlpackage")
    assert {r.scoring for r in report.packed} == {"activation"} and len(report.packed) == 2
    # and without it, the activation-scored config fails as the pass says
    with pytest.raises(ValueError, match="needs the pass option 'calibration'"):
        ms.prune_weights(src, config)


# ---- errors -----------------------------------------------------------------------------------------
def test_wrong_config_family_names_the_function_to_use(sources, tmp_path):
    src = sources.get("mlp", "iOS18")
    digests = hash_tree(src)
    with pytest.raises(ValueError, match=r"prune_weights: config holds pack configs \(PackConfig\), which prune nothing; use mil_sparsity.pack_weights"):
        ms.prune_weights(src, ms.PackConfig())
    with pytest.raises(ValueError, match="prune_weights: config holds pack configs"):
        ms.prune_weights(src, ms.OpSelector(global_config=ms.MagnitudeConfig(0.5), op_type_configs={"linear": ms.PackConfig()}))
    with pytest.raises(ValueError, match=r"pack_weights: config holds configs of mil_sparsity::prune_by_magnitude \(kinds \['magnitude'\]\).*prune_weights"):
        ms.pack_weights(src, ms.MagnitudeConfig(0.5))
    with pytest.raises(ValueError, match="no config set"):
        ms.prune_weights(src, ms.OpSelector())
    with pytest.raises(ValueError, match="calibration .*threshold configs only"):
        ms.prune_weights(src, ms.ThresholdConfig(threshold=0.1), calibration=ms.ActivationStats())
    with pytest.raises(TypeError, match="config must be a sparsity config"):
        ms.prune_weights(src, 0.5)
    with pytest.raises(TypeError, match="model must be an MLModel"):
        ms.prune_weights(42, ms.MagnitudeConfig(0.5))
    assert hash_tree(src) == digests
    assert spec_of(src).specificationVersion == ct.target.iOS18.value
