"""Whole-pass properties on hostile weights, already-compressed models, and memory bounds."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private
from mil_sparsity.plan import handlers

from _mil_helpers import bits, run_pass, snapshot, sparse_ops
from _reference import ref_block, ref_magnitude, ref_n_m, ref_threshold

SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-7, -1e-7, 6e-8, 1.0, -1.0, 0.5]


@st.composite
def hostile_weights(draw: Any, allow_nan: bool = True) -> np.ndarray:
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    rank = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=rank, max_size=rank)))
    pool = [v for v in SPECIAL if allow_nan or not np.isnan(v)]
    elements = st.one_of(
        st.sampled_from(pool),  # zeros, -0.0, runs of equal values, subnormals, inf, NaN
        st.floats(-4, 4, width=16 if dtype == np.float16 else 32),
    )
    weight = draw(hnp.arrays(dtype, shape, elements=elements))
    weight[np.isnan(weight)] = np.nan  # one NaN payload: references order NaNs by position
    return weight


def program_for(weight: np.ndarray, target: Any) -> Any:
    dtype = types.fp16 if weight.dtype == np.float16 else types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=weight.shape, dtype=dtype)], opset_version=target)
    def prog(x: Any) -> Any:
        return mb.add(x=x, y=mb.const(val=weight, name="w"))

    return prog


CONFIGS = st.one_of(
    st.builds(lambda s: (ms.PRUNE_BY_MAGNITUDE, ms.MagnitudeConfig(s, weight_threshold=0), lambda w: ref_magnitude(w, s)), st.sampled_from([0.0, 0.3, 0.5, 0.75, 1.0])),
    st.builds(lambda t: (ms.PRUNE_BY_THRESHOLD, ms.ThresholdConfig(t, 0.0, weight_threshold=0), lambda w: ref_threshold(w, t)), st.sampled_from([0.0, 1e-7, 0.5, 1.0])),
    st.builds(lambda n, m, d: (ms.PRUNE_BY_MAGNITUDE, ms.NMConfig(min(n, m), m, dim=d, weight_threshold=0), lambda w: ref_n_m(w, min(n, m), m, d % w.ndim)),
              st.integers(1, 4), st.integers(1, 5), st.integers(-2, 1)),
    st.builds(lambda s: (ms.SPARSE_PACK, ms.PackConfig(minimum_sparsity_percentile=0.0, weight_threshold=0), lambda w: w), st.just(0)),
)


def selector_for(config: Any) -> ms.OpSelector:
    return ms.OpSelector(op_name_configs={"w": config})  # by name: structured configs apply too


def check(prog: Any, weight: np.ndarray, pass_name: str, config: Any, expected: np.ndarray) -> None:
    report = run_pass(prog, pass_name, selector_for(config))
    ops = sparse_ops(prog)
    [record] = report.records
    if record.decision == "skipped":
        assert not ops, record.reason
        assert "fewer than m" in record.reason  # the only skip these configs can produce
        return
    [op] = ops
    dense = private.materialized_value(op)
    assert dense.dtype == weight.dtype and dense.shape == weight.shape
    np.testing.assert_array_equal(bits(dense), bits(expected))  # NaN kept, -0.0 -> +0.0
    assert record.sparsity == pytest.approx(float((dense == 0).mean()))
    prog.validate()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_weights(), CONFIGS, st.sampled_from([ct.target.iOS16, ct.target.iOS18]))
def test_pass_materializes_the_reference_pruning(weight: np.ndarray, case: Any, target: Any) -> None:
    pass_name, config, reference = case
    if isinstance(config, ms.NMConfig) and weight.shape[config.dim % weight.ndim] < config.m:
        expected = weight
    else:
        expected = reference(weight)
    check(program_for(weight, target), weight, pass_name, config, expected)


@st.composite
def distinct_magnitudes(draw: Any) -> np.ndarray:
    """Weights whose magnitudes are all different and exact in fp16 (k/64, k < 1300)."""
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank)))
    size = int(np.prod(shape))
    order = draw(st.permutations(range(size)))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=size, max_size=size))
    return (np.array(signs) * (np.array(order) + 1) / 64).reshape(shape).astype(dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(distinct_magnitudes(), st.sampled_from([0.25, 0.5, 1.0]), st.integers(2, 4), st.integers(-2, 1),
       st.sampled_from([ct.target.iOS16, ct.target.iOS18]))
def test_block_pass_materializes_the_reference(weight: np.ndarray, sparsity: float, block: int, dim: int, target: Any) -> None:
    config = ms.BlockConfig(sparsity, block, dim=dim, weight_threshold=0)
    check(program_for(weight, target), weight, ms.PRUNE_BY_MAGNITUDE, config,
          ref_block(weight, sparsity, block, dim % weight.ndim))


def test_n_m_groups_hold_exactly_n_pruned() -> None:
    weight = np.random.default_rng(0).standard_normal((6, 21, 3)).astype(np.float16)
    prog = program_for(weight, ct.target.iOS18)
    run_pass(prog, ms.PRUNE_BY_MAGNITUDE, selector_for(ms.NMConfig(3, 4, dim=1, weight_threshold=0)))
    dense = private.materialized_value(sparse_ops(prog)[0])
    groups = np.moveaxis(dense == 0, 1, -1)
    full = groups[..., :20].reshape(-1, 4)
    assert np.all(full.sum(axis=1) == 3)
    assert np.all(groups[..., 20:].sum(axis=-1) == 0)  # tail of 1: max(0, 3 - (4 - 1)) = 0


@pytest.mark.parametrize("pass_name, config", [
    (ms.PRUNE_BY_MAGNITUDE, ms.MagnitudeConfig(0.5, weight_threshold=0)),
    (ms.SPARSE_PACK, ms.PackConfig(minimum_sparsity_percentile=0.0, weight_threshold=0)),
])
def test_palettized_and_quantized_consts_are_left_alone(pass_name: str, config: Any) -> None:
    import coremltools.optimize.coreml as cto
    from mil_sparsity.posthoc import load_program

    weight = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 128))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        return mb.linear(x=x, weight=weight)

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)
    for compressed in (
        cto.palettize_weights(model, cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=4, mode="uniform"))),
        cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(weight_threshold=0))),
    ):
        program = load_program(compressed)
        before = snapshot(program)
        report = run_pass(program, pass_name, config)
        assert snapshot(program) == before
        assert any("already feeds constexpr_" in r.reason for r in report.records)


# ---- memory ---------------------------------------------------------------------------------

MEMORY_CASES = [
    ms.ThresholdConfig(0.5, 0.0),
    ms.MagnitudeConfig(0.5),
    ms.BlockConfig(0.5, 4, dim=0),
    ms.NMConfig(2, 4, dim=1),
    ms.PackConfig(minimum_sparsity_percentile=0.0),
]


@pytest.fixture(scope="module")
def big_weight() -> np.ndarray:
    weight = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32).astype(np.float16)
    weight[:, ::2] = 0  # half zeros, so packing has work to do too
    return weight  # 2**24 elements


def peak_extra(run: Any) -> int:
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    try:
        run()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("config", MEMORY_CASES, ids=lambda c: type(c).__name__)
def test_handler_peak_memory_at_most_3x_dense(big_weight: np.ndarray, config: Any) -> None:
    assert big_weight.size == 2**24
    peak = peak_extra(lambda: handlers.run_handler(big_weight, config))
    assert peak <= 3 * big_weight.nbytes, f"{peak / big_weight.nbytes:.2f}x"


@pytest.mark.parametrize("target", [ct.target.iOS16, ct.target.iOS18], ids=lambda t: t.name)
@pytest.mark.parametrize("config", MEMORY_CASES[:4], ids=lambda c: type(c).__name__)
def test_pass_peak_memory_at_most_3x_dense(big_weight: np.ndarray, config: Any, target: Any) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4096), dtype=types.fp16)], opset_version=target)
    def prog(x: Any) -> Any:
        return mb.linear(x=x, weight=big_weight)

    pass_name = ms.PRUNE_BY_THRESHOLD if isinstance(config, ms.ThresholdConfig) else ms.PRUNE_BY_MAGNITUDE
    peak = peak_extra(lambda: run_pass(prog, pass_name, config))
    assert len(sparse_ops(prog)) == 1
    assert peak <= 3 * big_weight.nbytes, f"{peak / big_weight.nbytes:.2f}x"
