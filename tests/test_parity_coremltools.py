"""Parity with coremltools' own ``compression::prune_weights`` on tie-free weights.

Each case builds the same MIL program twice (same weight arrays), runs our pass on one copy
and coremltools' pass on the other, and compares the ``constexpr_sparse_to_dense`` ops: same
decision, same stored bits, same materialized weight bit for bit. The cases are those where
coremltools' rule is well defined: no magnitude ties (see ``distinct_magnitudes`` /
``separated_blocks``), thresholds exactly representable in fp16, target * count integral,
n:m and block on rank 2-5 weights with m (block_size) <= channels / 2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coremltools as ct
import coremltools.optimize.coreml as cto
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import types

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private
from mil_sparsity.selector import as_selector
from _reference import ref_block, ref_magnitude, ref_n_m, ref_threshold
from _models import (
    SPARSE_OP,
    assert_bit_equal,
    check_sparse_form,
    dense_value,
    distinct_magnitudes,
    iter_ops,
    separated_blocks,
)

OPSETS = [
    pytest.param(ct.target.iOS16, id="iOS16"),
    pytest.param(ct.target.iOS17, id="iOS17"),
    pytest.param(ct.target.iOS18, id="iOS18"),
]
DTYPES = [pytest.param(np.float16, id="fp16"), pytest.param(np.float32, id="fp32")]

LINEAR_SHAPE = (64, 64)
CONV_SHAPE = (32, 16, 3, 3)


# ---------------------------------------------------------------------------------------------
def build(opset: Any, weights: dict[str, np.ndarray]) -> Any:
    """Two weights, one input and one op per weight: ``linear`` reads weights["linear"],
    every other key a conv (any rank). Ops are named after their key and consts ``<key>_weight`` (for
    op_name_configs), so two builds of the same weights have the same names."""
    dtype = types.fp16 if next(iter(weights.values())).dtype == np.float16 else types.fp32

    def input_shape(key: str, weight: np.ndarray) -> tuple[int, ...]:
        if key == "linear":
            return (1, weight.shape[1])
        return (1, weight.shape[1]) + (6,) * (weight.ndim - 2)

    assert len(weights) == 2
    specs = [mb.TensorSpec(shape=input_shape(key, w), dtype=dtype) for key, w in weights.items()]

    @mb.program(input_specs=specs, opset_version=opset)
    def prog(x0, x1):
        outputs = []
        for x, (key, weight) in zip((x0, x1), weights.items()):
            const = mb.const(val=weight.copy(), name=f"{key}_weight")
            if key == "linear":
                outputs.append(mb.linear(x=x, weight=const, name=key))
            else:
                outputs.append(mb.conv(x=x, weight=const, name=key))
        return tuple(outputs)

    return prog


def run_pass(prog: Any, pass_name: str, config: Any) -> Any:
    """Apply one pass. For our passes, also check that the arrays of the program's consts
    (which the pass reads) are not modified in place."""
    consts = [
        op.outputs[0].val
        for op in iter_ops(prog.functions["main"])
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)
    ]
    copies = [value.copy() for value in consts]
    graph_pass = private.pass_instance(pass_name)
    graph_pass.config = config
    graph_pass.apply(prog)
    if pass_name.startswith("mil_sparsity::"):
        for value, copy in zip(consts, copies):
            assert value.tobytes() == copy.tobytes(), f"{pass_name} modified a const's array in place"
    return prog


def run_coremltools(prog: Any, config: Any) -> Any:
    if not isinstance(config, cto.OptimizationConfig):
        config = cto.OptimizationConfig(global_config=config)
    return run_pass(prog, "compression::prune_weights", config)


def weights_of(prog: Any) -> dict[str, Any]:
    """consumer op name (the weights' key) -> the weight Var it reads."""
    return {
        op.name: op.weight for op in iter_ops(prog.functions["main"]) if op.op_type in ("linear", "conv")
    }


def mask_bits(op: Any) -> np.ndarray:
    return np.asarray(op.mask.val).astype(np.uint8).reshape(-1)


def assert_same(ours: Any, theirs: Any, opset: Any) -> dict[str, np.ndarray]:
    """Same decision per weight, same stored arrays, same materialized bits. Returns the
    materialized weights of ``ours`` (None for weights left as const)."""
    ours_w, theirs_w = weights_of(ours), weights_of(theirs)
    assert set(ours_w) == set(theirs_w)
    assert len(ours_w) >= 2
    dense = {}
    for key in ours_w:
        a, b = ours_w[key], theirs_w[key]
        assert a.op.op_type == b.op.op_type, f"{key}: ours {a.op.op_type}, coremltools {b.op.op_type}"
        assert_bit_equal(dense_value(a), dense_value(b), key)
        if a.op.op_type == SPARSE_OP:
            check_sparse_form(a.op, ios18=opset >= ct.target.iOS18)
            assert set(a.op.inputs) == set(b.op.inputs)
            assert_bit_equal(a.op.nonzero_data.val, b.op.nonzero_data.val, f"{key} nonzero_data")
            assert np.array_equal(mask_bits(a.op), mask_bits(b.op)), f"{key} mask"
            dense[key] = dense_value(a)
        else:
            dense[key] = None
    return dense


def random_weights(seed: int, dtype: Any, linear_shape=LINEAR_SHAPE, conv_shape=CONV_SHAPE) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "linear": distinct_magnitudes(rng, linear_shape, dtype),
        "conv": distinct_magnitudes(rng, conv_shape, dtype),
    }


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0625, 0.5, 2.0])
def test_threshold_parity(opset, dtype, threshold):
    weights = random_weights(1, dtype)
    minimum = 0.35
    ours = run_pass(
        build(opset, weights),
        ms.PRUNE_BY_THRESHOLD,
        ms.ThresholdConfig(threshold=threshold, minimum_sparsity_percentile=minimum),
    )
    theirs = run_coremltools(
        build(opset, weights),
        cto.OpThresholdPrunerConfig(threshold=threshold, minimum_sparsity_percentile=minimum),
    )
    dense = assert_same(ours, theirs, opset)
    for key, weight in weights.items():
        fraction = float(np.mean(np.abs(weight) <= threshold))
        if fraction >= minimum:
            assert dense[key] is not None, key
            assert_bit_equal(dense[key], ref_threshold(weight, threshold), key)
        else:
            assert dense[key] is None, key


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_unstructured_magnitude_parity(opset, dtype, target):
    weights = random_weights(2, dtype)
    ours = run_pass(build(opset, weights), ms.PRUNE_BY_MAGNITUDE, ms.MagnitudeConfig(target_sparsity=target))
    theirs = run_coremltools(build(opset, weights), cto.OpMagnitudePrunerConfig(target_sparsity=target))
    dense = assert_same(ours, theirs, opset)
    for key, weight in weights.items():
        assert_bit_equal(dense[key], ref_magnitude(weight, target), key)
        assert int(np.sum(dense[key] == 0)) == round(target * weight.size)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("n, m", [(1, 4), (2, 4), (3, 4), (4, 8)])
def test_n_m_parity(opset, dtype, dim, n, m):
    weights = random_weights(3, dtype)
    ours = run_pass(build(opset, weights), ms.PRUNE_BY_MAGNITUDE, ms.NMConfig(n=n, m=m, dim=dim))
    theirs = run_coremltools(build(opset, weights), cto.OpMagnitudePrunerConfig(n_m_ratio=(n, m), dim=dim))
    dense = assert_same(ours, theirs, opset)
    for key, weight in weights.items():
        assert_bit_equal(dense[key], ref_n_m(weight, n, m, dim), key)
        groups = np.moveaxis(dense[key], dim, -1).reshape(-1, m)
        assert ((groups == 0).sum(axis=1) == n).all()


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("n, m", [(1, 4), (3, 4)])
def test_n_m_parity_with_tail_group(opset, dtype, dim, n, m):
    """Channels not divisible by m: coremltools zero-pads the last group; so do we (the pad
    counts toward the n)."""
    weights = random_weights(4, dtype, linear_shape=(42, 66), conv_shape=(26, 10, 3, 3))
    ours = run_pass(build(opset, weights), ms.PRUNE_BY_MAGNITUDE, ms.NMConfig(n=n, m=m, dim=dim))
    theirs = run_coremltools(build(opset, weights), cto.OpMagnitudePrunerConfig(n_m_ratio=(n, m), dim=dim))
    dense = assert_same(ours, theirs, opset)
    for key, weight in weights.items():
        assert weight.shape[dim] % m == 2
        assert_bit_equal(dense[key], ref_n_m(weight, n, m, dim), key)
        tail = np.take(dense[key], [weight.shape[dim] - 2, weight.shape[dim] - 1], axis=dim)
        assert int((tail == 0).sum()) == max(0, n - 2) * (weight.size // weight.shape[dim])


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim, block_size", [(0, 2), (0, 4), (1, 2), (1, 4)])
@pytest.mark.parametrize("target", [0.25, 0.5, 0.75])
def test_block_parity(opset, dtype, dim, block_size, target):
    rng = np.random.default_rng(5)
    weights = {
        "linear": separated_blocks(rng, (16, 32), block_size, dim, dtype),
        "conv": separated_blocks(rng, (8, 8, 3, 3), block_size, dim, dtype),
    }
    for weight in weights.values():
        blocks = weight.size // block_size
        assert block_size <= weight.shape[dim] / 2 and weight.shape[dim] % block_size == 0
        assert float(target * blocks).is_integer()
    ours = run_pass(
        build(opset, weights),
        ms.PRUNE_BY_MAGNITUDE,
        ms.BlockConfig(target_sparsity=target, block_size=block_size, dim=dim, weight_threshold=256),
    )
    theirs = run_coremltools(
        build(opset, weights),
        cto.OpMagnitudePrunerConfig(
            target_sparsity=target, block_size=block_size, dim=dim, weight_threshold=256
        ),
    )
    dense = assert_same(ours, theirs, opset)
    for key, weight in weights.items():
        assert_bit_equal(dense[key], ref_block(weight, target, block_size, dim), key)
        assert int((dense[key] == 0).sum()) == round(target * weight.size / block_size) * block_size


PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float16, np.float32]),
    opset=st.sampled_from([ct.target.iOS16, ct.target.iOS18]),
    out_channels=st.integers(8, 32),
    in_channels=st.integers(8, 32),
    kernel=st.integers(1, 2),
    dim=st.sampled_from([0, 1]),
    data=st.data(),
)
def test_n_m_parity_property(seed, dtype, opset, out_channels, in_channels, kernel, dim, data):
    """Any shape and any n:m coremltools handles (m <= channels / 2, tails included)."""
    rng = np.random.default_rng(seed)
    weights = {
        "linear": distinct_magnitudes(rng, (out_channels, in_channels), dtype),
        "conv": distinct_magnitudes(rng, (out_channels, in_channels, kernel, kernel), dtype),
    }
    channels = (out_channels, in_channels)[dim]
    m = data.draw(st.integers(2, channels // 2), label="m")
    n = data.draw(st.integers(1, m), label="n")
    ours = run_pass(
        build(opset, weights),
        ms.PRUNE_BY_MAGNITUDE,
        ms.NMConfig(n=n, m=m, dim=dim, weight_threshold=0),
    )
    theirs = run_coremltools(
        build(opset, weights),
        cto.OpMagnitudePrunerConfig(n_m_ratio=(n, m), dim=dim, weight_threshold=0),
    )
    dense = assert_same(ours, theirs, opset)
    for key, weight in weights.items():
        assert_bit_equal(dense[key], ref_n_m(weight, n, m, dim), key)


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float16, np.float32]),
    opset=st.sampled_from([ct.target.iOS16, ct.target.iOS18]),
    groups=st.tuples(st.integers(2, 6), st.integers(2, 6)),
    block_size=st.integers(2, 4),
    dim=st.sampled_from([0, 1]),
    data=st.data(),
)
def test_block_parity_property(seed, dtype, opset, groups, block_size, dim, data):
    """Any whole-block shape (channels = block_size * g, g >= 2) and any integral target."""
    shape = [groups[0] * 2, groups[1] * 2, 3, 3]
    shape[dim] = block_size * groups[dim]
    rng = np.random.default_rng(seed)
    weights = {
        "linear": separated_blocks(rng, tuple(shape[:2]), block_size, dim, dtype),
        "conv": separated_blocks(rng, tuple(shape), block_size, dim, dtype),
    }
    # one target whose count is integral for both weights: k / gcd-compatible block counts
    counts = [w.size // block_size for w in weights.values()]
    step = np.gcd(*counts)
    k = data.draw(st.integers(0, step), label="k")
    target = k / step
    ours = run_pass(
        build(opset, weights),
        ms.PRUNE_BY_MAGNITUDE,
        ms.BlockConfig(target_sparsity=target, block_size=block_size, dim=dim, weight_threshold=0),
    )
    theirs = run_coremltools(
        build(opset, weights),
        cto.OpMagnitudePrunerConfig(
            target_sparsity=target, block_size=block_size, dim=dim, weight_threshold=0
        ),
    )
    dense = assert_same(ours, theirs, opset)
    for key, weight in weights.items():
        assert_bit_equal(dense[key], ref_block(weight, target, block_size, dim), key)


# ---------------------------------------------------------------------------------------------
# a coremltools OptimizationConfig given directly as our ``config`` option
def _block_weights(dtype: Any) -> dict:
    rng = np.random.default_rng(6)
    return {
        "linear": separated_blocks(rng, (16, 32), 4, 0, dtype),
        "conv": separated_blocks(rng, (8, 8, 3, 3), 4, 0, dtype),
    }


TRANSLATION_CASES = {
    "threshold": (
        ms.PRUNE_BY_THRESHOLD,
        cto.OptimizationConfig(
            global_config=cto.OpThresholdPrunerConfig(threshold=2.0, minimum_sparsity_percentile=0.35)
        ),
        ms.ThresholdConfig(threshold=2.0, minimum_sparsity_percentile=0.35),
        None,
    ),
    "magnitude": (
        ms.PRUNE_BY_MAGNITUDE,
        cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5)),
        ms.MagnitudeConfig(target_sparsity=0.5),
        None,
    ),
    "n_m_default_dim": (
        ms.PRUNE_BY_MAGNITUDE,
        cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(n_m_ratio=(2, 4))),
        ms.NMConfig(n=2, m=4, dim=1),
        None,
    ),
    "n_m_dim0": (
        ms.PRUNE_BY_MAGNITUDE,
        cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(n_m_ratio=(3, 4), dim=0)),
        ms.NMConfig(n=3, m=4, dim=0),
        None,
    ),
    "block_default_dim": (
        ms.PRUNE_BY_MAGNITUDE,
        cto.OptimizationConfig(
            global_config=cto.OpMagnitudePrunerConfig(
                target_sparsity=0.5, block_size=4, weight_threshold=256
            )
        ),
        ms.BlockConfig(target_sparsity=0.5, block_size=4, dim=0, weight_threshold=256),
        _block_weights,
    ),
    "op_type": (
        ms.PRUNE_BY_MAGNITUDE,
        cto.OptimizationConfig(
            op_type_configs={"linear": cto.OpMagnitudePrunerConfig(target_sparsity=0.75), "conv": None}
        ),
        ms.OpSelector(op_type_configs={"linear": ms.MagnitudeConfig(target_sparsity=0.75), "conv": None}),
        None,
    ),
    "op_name": (
        ms.PRUNE_BY_MAGNITUDE,
        cto.OptimizationConfig(
            global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.25),
            op_name_configs={"conv_weight": cto.OpMagnitudePrunerConfig(n_m_ratio=(1, 4))},
        ),
        ms.OpSelector(
            global_config=ms.MagnitudeConfig(target_sparsity=0.25),
            op_name_configs={"conv_weight": ms.NMConfig(n=1, m=4, dim=1)},
        ),
        None,
    ),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(TRANSLATION_CASES))
def test_coremltools_config_as_option(opset, dtype, case):
    pass_name, ct_config, native, make_weights = TRANSLATION_CASES[case]
    weights = make_weights(dtype) if make_weights else random_weights(7, dtype)

    graph_pass = private.pass_instance(pass_name)
    graph_pass.config = ct_config
    assert graph_pass.config == as_selector(native)

    with_ct_config = run_pass(build(opset, weights), pass_name, ct_config)
    with_native = run_pass(build(opset, weights), pass_name, native)
    by_coremltools = run_coremltools(build(opset, weights), ct_config)
    dense = assert_same(with_ct_config, with_native, opset)
    assert_same(with_ct_config, by_coremltools, opset)
    assert any(value is not None for value in dense.values()), "the case prunes something"
