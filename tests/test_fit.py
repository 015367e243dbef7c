"""ms.fit on small models whose weights' sensitivities are known by construction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

import mil_sparsity as ms
from mil_sparsity.configs import BlockConfig, MagnitudeConfig, NMConfig
from mil_sparsity.fit import api as fit_api
from mil_sparsity.inspect_model import stored_weight_bytes, weight_sources
from mil_sparsity.model.io import load_program

RNG = np.random.default_rng(11)
IOS18 = ct.target.iOS18


def two_branch_model() -> Any:
    """y = linear(x, loud) + linear(x, quiet): ``loud`` is 30x larger, so pruning it costs far
    more output quality than pruning ``quiet``; a third weight ``tail`` maps the sum on."""
    loud = RNG.standard_normal((96, 48)).astype(np.float32) * 3.0
    quiet = RNG.standard_normal((96, 48)).astype(np.float32) * 0.1
    tail = RNG.standard_normal((32, 96)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(6, 48))], opset_version=IOS18)
    def prog(x: Any) -> Any:
        a = mb.linear(x=x, weight=mb.const(val=loud, name="loud"), name="a")
        b = mb.linear(x=x, weight=mb.const(val=quiet, name="quiet"), name="b")
        return mb.linear(x=mb.relu(x=mb.add(x=a, y=b)), weight=mb.const(val=tail, name="tail"), name="y")

    return ct.convert(
        prog, convert_to="mlprogram", minimum_deployment_target=IOS18,
        compute_precision=ct.precision.FLOAT32, skip_model_load=True,
    )


@pytest.fixture(scope="module")
def model() -> Any:
    return two_branch_model()


SAMPLES = [{"x": RNG.standard_normal((6, 48)).astype(np.float32)} for _ in range(3)]


def chosen(result: ms.FitResult) -> dict[str, float]:
    return {item.weight: item.sparsity for item in result.plan}


def dense_weights(mlmodel: Any) -> dict[str, np.ndarray]:
    prog = load_program(mlmodel)
    return {source.name: source.dense_value() for source in weight_sources(prog, 0)}


@pytest.fixture(scope="module")
def by_size(model: Any) -> ms.FitResult:
    return ms.fit(model, SAMPLES, max_size_ratio=0.6, methods=["magnitude"])


def test_a_size_budget_prunes_the_insensitive_weight_furthest(model: Any, by_size: ms.FitResult) -> None:
    sparsity = chosen(by_size)
    assert set(sparsity) == {"loud", "quiet", "tail"}
    assert sparsity["quiet"] >= 0.89  # pruning it barely shows: it goes to the sparsest setting
    assert sparsity["loud"] < sparsity["quiet"]
    assert by_size.size_ratio <= 0.6
    before, after = (stored_weight_bytes(load_program(m)) for m in (model, by_size.model))
    assert by_size.size_ratio == after / before


def test_the_selector_reproduces_the_model_bit_for_bit(model: Any, by_size: ms.FitResult) -> None:
    again = ms.prune_weights(model, by_size.selector, calibration=by_size.calibration)
    first, second = dense_weights(by_size.model), dense_weights(again)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_the_result_carries_the_probe_table_and_a_report(by_size: ms.FitResult) -> None:
    weights = {row.weight for row in by_size.probes}
    assert weights == {"loud", "quiet", "tail"}
    assert len(by_size.probes) == 3 * 5  # every weight at the five "all" settings
    loud = sorted((r for r in by_size.probes if r.weight == "loud"), key=lambda r: r.sparsity)
    assert loud[-1].quality < loud[0].quality  # 90% hurts more than 30%
    quiet_90 = next(r for r in by_size.probes if r.weight == "quiet" and r.sparsity > 0.85)
    assert quiet_90.quality > loud[0].quality
    assert {r.name for r in by_size.report.packed} == {i.weight for i in by_size.plan if i.setting}
    assert "loud" in by_size.format_plan() and "max_size_ratio=0.6" in by_size.format_plan()
    worst = by_size.quality.worst()["cosine"]
    assert worst is not None and 0.0 < worst < 1.0


def test_a_quality_floor_holds_on_the_samples(model: Any) -> None:
    result = ms.fit(model, SAMPLES, min_cosine=0.99, methods=["magnitude"])
    worst = result.quality.worst()["cosine"]
    assert worst is not None and worst >= 0.99
    assert result.size_ratio < 1.0
    looser = ms.fit(model, SAMPLES, min_cosine=0.9, methods=["magnitude"])
    assert looser.size_ratio < result.size_ratio


def test_an_unreachable_floor_returns_the_model_unpruned_with_a_note(model: Any) -> None:
    result = ms.fit(model, SAMPLES, min_cosine=1.0, methods=["magnitude"])
    assert all(item.setting is None for item in result.plan)
    assert result.size_ratio == 1.0
    assert any("unpruned" in note for note in result.report.notes)


def test_calibration_aware_methods_are_used_when_statistics_exist(model: Any) -> None:
    result = ms.fit(model, SAMPLES, max_size_ratio=0.6)
    assert result.calibration is not None  # collected from the samples
    assert {row.method for row in result.probes} == {"admm"}
    again = ms.prune_weights(model, result.selector, calibration=result.calibration)
    for name, value in dense_weights(result.model).items():
        np.testing.assert_array_equal(value, dense_weights(again)[name])


@pytest.mark.parametrize("unit", ["cpu", "ane"])
def test_compute_units_restrict_the_patterns(model: Any, unit: str) -> None:
    result = ms.fit(model, SAMPLES, max_size_ratio=0.7, methods=["magnitude"], compute_unit=unit)
    configs = [c for c in result.selector.op_name_configs.values() if c is not None]
    assert configs
    for config in configs:
        if unit == "cpu":
            assert isinstance(config, NMConfig) and config.m == 16 and config.n / config.m >= 0.5
        elif isinstance(config, MagnitudeConfig):
            assert config.target_sparsity >= 0.75
        else:
            assert isinstance(config, BlockConfig) and config.block_size % 2 == 0


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({}, TypeError, ["exactly one budget", "neither"]),
        ({"max_size_ratio": 0.5, "min_cosine": 0.9}, TypeError, ["both"]),
        ({"max_size_ratio": 0.0}, ValueError, ["max_size_ratio", "(0, 1]", "0.0"]),
        ({"min_cosine": 1.5}, ValueError, ["min_cosine", "(0, 1]", "1.5"]),
        ({"max_size_ratio": "half"}, TypeError, ["max_size_ratio", "number"]),
        ({"max_size_ratio": 0.5, "compute_unit": "gpu"}, ValueError, ["compute_unit", "gpu", "ane"]),
        ({"max_size_ratio": 0.5, "methods": ["obs"]}, ValueError, ["methods", "obs", "admm"]),
        ({"max_size_ratio": 0.5, "n_jobs": 0}, ValueError, ["n_jobs", "0"]),
    ],
)
def test_bad_arguments_name_the_field(model: Any, kwargs: Any, error: type, words: list[str]) -> None:
    with pytest.raises(error) as raised:
        ms.fit(model, SAMPLES, **kwargs)
    for word in words:
        assert word in str(raised.value)


def test_a_size_below_what_is_reachable_names_the_smallest_ratio(model: Any) -> None:
    with pytest.raises(ValueError, match=r"max_size_ratio=0.05 is below what pruning can reach: about 0\.1"):
        ms.fit(model, SAMPLES, max_size_ratio=0.05, methods=["magnitude"])


def test_bad_samples_fail_before_any_probe(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe(*_: Any) -> Any:
        raise AssertionError("a probe ran")

    monkeypatch.setattr(fit_api, "probe_weight", no_probe)
    with pytest.raises(ValueError, match="'x'"):
        ms.fit(model, [{"x": np.zeros((6, 47), np.float32)}], max_size_ratio=0.5)
    with pytest.raises(ValueError, match="unknown"):
        ms.fit(model, [{"x": SAMPLES[0]["x"], "z": SAMPLES[0]["x"]}], max_size_ratio=0.5)


def test_a_package_path_and_an_npz_of_samples(model: Any, tmp_path: Path) -> None:
    package = tmp_path / "m.mlpackage"
    model.save(str(package))
    data = tmp_path / "samples.npz"
    np.savez(data, x=np.stack([s["x"] for s in SAMPLES]))
    result = ms.fit(str(package), str(data), max_size_ratio=0.6, methods=["magnitude"])
    assert result.quality.samples == len(SAMPLES)
    assert result.size_ratio <= 0.6
    assert os.path.isdir(package)


def test_results_are_the_same_for_every_n_jobs(model: Any, by_size: ms.FitResult) -> None:
    parallel = ms.fit(model, SAMPLES, max_size_ratio=0.6, methods=["magnitude"], n_jobs=2)
    assert parallel.probes == by_size.probes
    assert parallel.selector == by_size.selector


def test_results_are_the_same_on_a_dask_cluster(model: Any, by_size: ms.FitResult) -> None:
    distributed = pytest.importorskip("distributed")
    import joblib

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            with joblib.parallel_config(backend="dask"):
                on_dask = ms.fit(model, SAMPLES, max_size_ratio=0.6, methods=["magnitude"], n_jobs=2)
    assert on_dask.probes == by_size.probes
    assert on_dask.selector == by_size.selector


def test_max_probes_measures_at_most_that_many_and_predicts_the_rest(model: Any) -> None:
    result = ms.fit(model, SAMPLES, max_size_ratio=0.6, methods=["magnitude"], max_probes=7)
    measured = [row for row in result.probes if row.measured]
    assert 1 <= len(measured) <= 7
    assert any(not row.measured for row in result.probes)
    assert len({(r.weight, r.setting) for r in result.probes}) == len(result.probes) == 15
    assert result.size_ratio <= 0.6
    assert any("max_probes=7" in note for note in result.report.notes)
    unlimited = ms.fit(model, SAMPLES, max_size_ratio=0.6, methods=["magnitude"], max_probes=15)
    assert all(row.measured for row in unlimited.probes)
    with pytest.raises(ValueError, match="max_probes must be an int >= 1"):
        ms.fit(model, SAMPLES, max_size_ratio=0.6, max_probes=0)
