"""ms.fit(..., palettize_nbits=N): joint sparse + palettized storage, only when asked."""

from __future__ import annotations

from typing import Any

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from test_fit import SAMPLES, dense_weights, two_branch_model

import mil_sparsity as ms
from mil_sparsity.fit.probes import choose, loaded
from mil_sparsity.inspect_model import stored_weight_bytes
from mil_sparsity.kernels.palettize import joint_nbytes
from mil_sparsity.model.io import load_program

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model() -> Any:
    return two_branch_model()


@pytest.fixture(scope="module")
def plain(model: Any) -> ms.FitResult:
    return ms.fit(model, SAMPLES, max_size_ratio=0.3, methods=["magnitude"], progress=False)


@pytest.fixture(scope="module")
def joint(model: Any) -> ms.FitResult:
    return ms.fit(model, SAMPLES, max_size_ratio=0.3, methods=["magnitude"], palettize_nbits=4, progress=False)


def storage(result: ms.FitResult) -> dict[str, tuple[str, ...]]:
    return {w.name.removesuffix("_sparse"): w.chain for w in ms.weights(result.model) if w.chain}


def test_pruned_weights_are_stored_sparse_and_palettized(joint: ms.FitResult, plain: ms.FitResult) -> None:
    pruned = {item.weight for item in joint.plan if item.setting is not None}
    assert pruned
    chains = storage(joint)
    for name in pruned:
        assert set(chains[name]) == {"constexpr_lut_to_sparse", "constexpr_sparse_to_dense"}
    assert all(set(chain) == {"constexpr_sparse_to_dense"} for chain in storage(plain).values())
    assert joint.palettization is not None and plain.palettization is None
    assert "palettize_nbits=4" in joint.budget and "palettized to 4 bits" in " ".join(joint.report.notes)


def test_the_stored_values_are_what_the_probes_evaluated(model: Any, joint: ms.FitResult) -> None:
    evaluator, found = loaded_model(model)
    stored = dense_weights(joint.model)
    for item in joint.plan:
        if item.setting is None:
            continue
        made = choose(found[item.weight], item.setting, (item.method,), None)
        assert made is not None
        expected = made.dense(4)
        np.testing.assert_array_equal(stored[f"{item.weight}_sparse"], expected)
        assert len(np.unique(expected[made.outcome.mask])) <= 16
        assert item.nbytes == joint_nbytes(made.outcome.nonzero_data.size, expected.size, 4, expected.dtype.itemsize)


def loaded_model(model: Any) -> Any:
    import tempfile

    path = tempfile.mkdtemp() + "/m.mlpackage"
    model.save(path)
    return loaded(path, "main")


def test_sizes_count_what_is_stored_and_beat_sparse_storage(model: Any, joint: ms.FitResult, plain: ms.FitResult) -> None:
    before = stored_weight_bytes(load_program(model))
    after = stored_weight_bytes(load_program(joint.model))
    assert joint.size_ratio == after / before <= 0.3
    fixed = before - sum(item.dense_nbytes for item in joint.plan)
    assert after == fixed + sum(item.nbytes for item in joint.plan)
    # at the same budget, 4-bit kept values leave room for far less pruning: better outputs
    assert joint.quality.worst()["cosine"] > plain.quality.worst()["cosine"] + 0.05


def test_the_selector_and_the_palettization_reproduce_the_model(model: Any, joint: ms.FitResult) -> None:
    pruned = ms.prune_weights(model, joint.selector, calibration=joint.calibration)
    again = cto.palettize_weights(pruned, joint.palettization, joint_compression=True)
    first, second = dense_weights(joint.model), dense_weights(again)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_a_quality_floor_holds_with_palettized_weights(model: Any) -> None:
    result = ms.fit(model, SAMPLES, min_cosine=0.97, methods=["magnitude"], palettize_nbits=6, progress=False)
    assert result.quality.worst()["cosine"] >= 0.97
    assert result.size_ratio < 0.5


def test_the_smallest_reachable_size_counts_palettized_values(model: Any) -> None:
    with pytest.raises(ValueError, match=r"a kept value 2 bits"):
        ms.fit(model, SAMPLES, max_size_ratio=0.02, methods=["magnitude"], palettize_nbits=2, progress=False)


@pytest.mark.parametrize("nbits", [0, 5, 16, 2.0, "4"])
def test_bad_nbits_name_the_field_and_the_choices(model: Any, nbits: Any) -> None:
    with pytest.raises(ValueError) as raised:
        ms.fit(model, SAMPLES, max_size_ratio=0.5, palettize_nbits=nbits, progress=False)
    assert "palettize_nbits" in str(raised.value) and "(1, 2, 3, 4, 6, 8)" in str(raised.value)


def test_joint_storage_needs_ios18() -> None:
    weight = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8))], opset_version=ct.target.iOS17)
    def prog(x: Any) -> Any:
        return mb.linear(x=x, weight=weight, name="y")

    ios17 = ct.convert(prog, minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    with pytest.raises(ValueError) as raised:
        ms.fit(ios17, [{"x": np.ones((2, 8), np.float32)}], max_size_ratio=0.5, palettize_nbits=4, progress=False)
    assert "palettize_nbits=4" in str(raised.value) and "iOS18" in str(raised.value) and "iOS17" in str(raised.value)


def test_palettized_probes_are_the_same_in_worker_processes(model: Any, joint: ms.FitResult) -> None:
    again = ms.fit(model, SAMPLES, max_size_ratio=0.3, methods=["magnitude"], palettize_nbits=4, n_jobs=2, progress=False)
    assert [row.to_dict() for row in again.probes] == [row.to_dict() for row in joint.probes]
    assert [item.to_dict() for item in again.plan] == [item.to_dict() for item in joint.plan]
