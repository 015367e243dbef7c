"""Per-op checks of the reference evaluator against coremltools' own constant folding.

For every op in the evaluator's table whose MIL class implements ``value_inference``, a tiny
program applies the op to const inputs: building it makes coremltools fold the op (the output
var's ``.val``), and the evaluator then runs the same op. Shapes, broadcasting, axes, flags and
dtypes come from hypothesis; array values from a seeded generator.

Tolerances (documented here, used below):
- integer and bool results: exact;
- float32 results: rtol 1e-5, atol 1e-6 (transcendental ops 2e-5 / 1e-5: numpy's float32
  vs coremltools' float64 paths; erf 1e-6 absolute: our erf is a float32 rational approximation);
- fp16 inputs: coremltools folds in float16, the evaluator in float32 (fp16 values upcast
  exactly), so results agree to fp16 resolution: rtol 2e-3, atol 2e-3 (sums and norms scale
  atol by the sum of magnitudes).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mil_sparsity import reference

OPS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IOS17 = ct.target.iOS17
IOS18 = ct.target.iOS18

FP32_TOL = dict(rtol=1e-5, atol=1e-6)
TRANSCENDENTAL_TOL = dict(rtol=2e-5, atol=1e-5)
FP16_TOL = dict(rtol=2e-3, atol=2e-3)


def folded_and_evaluated(build: Callable[[], Any], target: Any = IOS17) -> tuple[list[Any], list[np.ndarray]]:
    """coremltools' folded values of ``build()``'s outputs, and the evaluator's."""
    expected: list[Any] = []

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=target)
    def prog(unused: Any) -> Any:
        out = build()
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        expected.extend(var.val for var in outs)
        return tuple(outs)

    got = reference.run(prog, {"unused": np.zeros(1, np.float32)})
    assert all(value is not None for value in expected), "coremltools did not fold the op"
    return expected, list(got.values())


def evaluated_on_inputs(build: Callable[..., Any], *arrays: np.ndarray, target: Any = IOS17) -> np.ndarray:
    """The evaluator's output of ``build(*placeholders)`` fed with ``arrays`` (no folding: for
    ops or options coremltools cannot fold)."""
    specs = [mb.TensorSpec(shape=a.shape, dtype=ct.converters.mil.mil.types.numpy_type_to_builtin_type(a.dtype)) for a in arrays]

    if len(arrays) == 1:

        @mb.program(input_specs=specs, opset_version=target)
        def prog(a: Any) -> Any:
            return build(a)

    else:

        @mb.program(input_specs=specs, opset_version=target)
        def prog(a: Any, b: Any) -> Any:
            return build(a, b)

    names = list(prog.functions["main"].inputs)
    (result,) = reference.run(prog, dict(zip(names, arrays))).values()
    return result


def assert_matches(build: Callable[[], Any], tol: dict[str, float] | None = None, target: Any = IOS17) -> None:
    expected, got = folded_and_evaluated(build, target)
    assert len(expected) == len(got)
    for want, have in zip(expected, got):
        want = np.asarray(want)
        assert have.shape == want.shape, (have.shape, want.shape)
        if want.dtype.kind in "biu":
            np.testing.assert_array_equal(have, want)
            assert have.dtype.kind == want.dtype.kind
        else:
            use = tol or (FP16_TOL if want.dtype == np.float16 else FP32_TOL)
            np.testing.assert_allclose(have, want.astype(np.float32), **use)


# ---- strategies --------------------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
seeds = st.integers(0, 2**31 - 1)
float_dtypes = st.sampled_from([np.float32, np.float16])


def values(seed: int, shape: Sequence[int], low: float = -3.0, high: float = 3.0, dtype: Any = np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return rng.random(size=shape) < 0.5
    return rng.uniform(low, high, size=shape).astype(dtype)


# ---- elementwise unary -------------------------------------------------------------------------

UNARY_DOMAINS = {
    "abs": (-3, 3), "acos": (-0.95, 0.95), "asin": (-0.95, 0.95), "atan": (-3, 3),
    "atanh": (-0.9, 0.9), "ceil": (-3, 3), "cos": (-3, 3), "cosh": (-3, 3), "exp": (-3, 3),
    "exp2": (-3, 3), "floor": (-3, 3), "round": (-3, 3), "sign": (-3, 3), "sin": (-3, 3),
    "sinh": (-3, 3), "sqrt": (0.01, 4), "square": (-3, 3), "tan": (-1.2, 1.2), "tanh": (-3, 3),
    "relu": (-3, 3), "relu6": (-8, 8), "sigmoid": (-6, 6), "softplus": (-6, 6),
    "softsign": (-3, 3), "inverse": (0.1, 3), "log": (0.1, 3), "rsqrt": (0.1, 3),
}


@pytest.mark.parametrize("op_type", sorted(UNARY_DOMAINS))
@OPS
@given(shape=shapes, seed=seeds, dtype=float_dtypes)
def test_unary(op_type: str, shape: tuple[int, ...], seed: int, dtype: Any) -> None:
    low, high = UNARY_DOMAINS[op_type]
    x = values(seed, shape, low, high, dtype)
    tol = None if dtype == np.float16 else TRANSCENDENTAL_TOL
    assert_matches(lambda: getattr(mb, op_type)(x=x), tol)


@OPS
@given(shape=shapes, seed=seeds)
def test_erf(shape: tuple[int, ...], seed: int) -> None:
    x = values(seed, shape, -4, 4)
    assert_matches(lambda: mb.erf(x=x), dict(rtol=0, atol=1e-6))


@pytest.mark.parametrize("mode", ["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"])
@OPS
@given(shape=shapes, seed=seeds, dtype=float_dtypes)
def test_gelu(mode: str, shape: tuple[int, ...], seed: int, dtype: Any) -> None:
    x = values(seed, shape, -4, 4, dtype)
    tol = None if dtype == np.float16 else dict(rtol=1e-5, atol=2e-6)
    assert_matches(lambda: mb.gelu(x=x, mode=mode), tol)


@OPS
@given(shape=shapes, seed=seeds)
def test_abs_on_integers(shape: tuple[int, ...], seed: int) -> None:
    x = values(seed, shape, -50, 50, np.int32)
    assert_matches(lambda: mb.abs(x=x))


@OPS
@given(shape=shapes, seed=seeds, target=st.sampled_from(["fp32", "fp16", "int32", "bool"]), source=st.sampled_from([np.float32, np.int32]))
def test_cast(shape: tuple[int, ...], seed: int, target: str, source: Any) -> None:
    x = values(seed, shape, -40, 40, source)
    assert_matches(lambda: mb.cast(x=x, dtype=target))


# ---- activations with parameters ---------------------------------------------------------------

alphas = st.floats(0.0625, 2.0, width=32)


@OPS
@given(shape=shapes, seed=seeds, alpha=alphas, beta=st.floats(0.125, 3.0, width=32), dtype=float_dtypes)
def test_parametric_activations(shape: tuple[int, ...], seed: int, alpha: float, beta: float, dtype: Any) -> None:
    x = values(seed, shape, -4, 4, dtype)
    a, b = dtype(alpha), dtype(beta)
    for build in (
        lambda: mb.clamped_relu(x=x, alpha=a, beta=b),
        lambda: mb.elu(x=x, alpha=a),
        lambda: mb.leaky_relu(x=x, alpha=a),
        lambda: mb.linear_activation(x=x, alpha=a, beta=b),
        lambda: mb.scaled_tanh(x=x, alpha=a, beta=b),
        lambda: mb.sigmoid_hard(x=x, alpha=a, beta=b),
        lambda: mb.thresholded_relu(x=x, alpha=a),
        lambda: mb.threshold(x=x, alpha=a),
        lambda: mb.clip(x=x, alpha=dtype(-b), beta=b),
    ):
        assert_matches(build, None if dtype == np.float16 else TRANSCENDENTAL_TOL)


@OPS
@given(shape=hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=4), seed=seeds)
def test_per_channel_activations(shape: tuple[int, ...], seed: int) -> None:
    x = values(seed, shape, -4, 4)
    alpha = values(seed + 1, (shape[1],), 0.1, 2)
    beta = values(seed + 2, (shape[1],), 0.1, 2)
    assert_matches(lambda: mb.prelu(x=x, alpha=alpha))
    assert_matches(lambda: mb.softplus_parametric(x=x, alpha=alpha, beta=beta), TRANSCENDENTAL_TOL)


# ---- elementwise binary ------------------------------------------------------------------------

broadcast = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4)

ARITHMETIC = ["add", "sub", "mul", "maximum", "minimum"]
COMPARISONS = ["equal", "not_equal", "greater", "greater_equal", "less", "less_equal"]


@pytest.mark.parametrize("op_type", ARITHMETIC + COMPARISONS)
@OPS
@given(shapes=broadcast, seed=seeds, dtype=st.sampled_from([np.float32, np.float16, np.int32]))
def test_binary(op_type: str, shapes: Any, seed: int, dtype: Any) -> None:
    x_shape, y_shape = shapes.input_shapes
    x = values(seed, x_shape, -5, 5, dtype)
    y = values(seed + 1, y_shape, -5, 5, dtype)
    assert_matches(lambda: getattr(mb, op_type)(x=x, y=y))


@pytest.mark.parametrize("op_type", ["real_div", "floor_div", "mod"])
@OPS
@given(shapes=broadcast, seed=seeds, dtype=st.sampled_from([np.float32, np.int32]))
def test_division(op_type: str, shapes: Any, seed: int, dtype: Any) -> None:
    x_shape, y_shape = shapes.input_shapes
    x = values(seed, x_shape, -20, 20, dtype)
    y = values(seed + 1, y_shape, 1, 6, dtype) * np.where(values(seed + 2, y_shape, 0, 1, np.int32) > 0, 1, -1).astype(dtype)
    if op_type == "real_div" and dtype == np.int32:
        return  # coremltools types integer real_div as float; the evaluator follows the var type
    assert_matches(lambda: getattr(mb, op_type)(x=x, y=y), TRANSCENDENTAL_TOL if dtype == np.float32 else None)


@OPS
@given(shapes=broadcast, seed=seeds)
def test_pow(shapes: Any, seed: int) -> None:
    x_shape, y_shape = shapes.input_shapes
    assert_matches(lambda: mb.pow(x=values(seed, x_shape, 0.1, 3), y=values(seed + 1, y_shape, -2, 2)), TRANSCENDENTAL_TOL)


@pytest.mark.parametrize("op_type", ["logical_and", "logical_or", "logical_xor"])
@OPS
@given(shapes=broadcast, seed=seeds)
def test_logical(op_type: str, shapes: Any, seed: int) -> None:
    x_shape, y_shape = shapes.input_shapes
    x, y = values(seed, x_shape, dtype=bool), values(seed + 1, y_shape, dtype=bool)
    assert_matches(lambda: getattr(mb, op_type)(x=x, y=y))
    assert_matches(lambda: mb.logical_not(x=x))


@OPS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=1, max_dims=4, max_side=4), seed=seeds)
def test_select(shapes: Any, seed: int) -> None:
    cond_shape, a_shape, b_shape = shapes.input_shapes
    cond = values(seed, cond_shape, dtype=bool)
    assert_matches(lambda: mb.select(cond=cond, a=values(seed, a_shape), b=values(seed + 1, b_shape)))


# ---- reductions ---------------------------------------------------------------------------------

REDUCTIONS = [
    "reduce_sum", "reduce_mean", "reduce_prod", "reduce_max", "reduce_min", "reduce_sum_square",
    "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum", "reduce_log_sum_exp",
]


@st.composite
def shape_and_axes(draw: Any, min_dims: int = 1) -> tuple[tuple[int, ...], list[int] | None]:
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=1, max_side=4))
    if draw(st.booleans()):
        return shape, None
    axes = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True))
    negative = draw(st.booleans())
    return shape, [a - len(shape) if negative else a for a in axes]


@pytest.mark.parametrize("op_type", REDUCTIONS)
@OPS
@given(case=shape_and_axes(), keep_dims=st.booleans(), seed=seeds)
def test_reductions(op_type: str, case: Any, keep_dims: bool, seed: int) -> None:
    shape, axes = case
    low = 0.5 if op_type in ("reduce_log_sum", "reduce_prod") else -2
    x = values(seed, shape, low, 2)
    assert_matches(lambda: getattr(mb, op_type)(x=x, axes=axes, keep_dims=keep_dims), TRANSCENDENTAL_TOL)


@pytest.mark.parametrize("op_type", ["reduce_argmax", "reduce_argmin"])
@OPS
@given(shape=shapes, keep_dims=st.booleans(), seed=seeds, data=st.data())
def test_arg_reductions(op_type: str, shape: tuple[int, ...], keep_dims: bool, seed: int, data: Any) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = values(seed, shape)
    assert_matches(lambda: getattr(mb, op_type)(x=x, axis=axis, keep_dims=keep_dims))


# ---- shape and data movement ---------------------------------------------------------------------


@OPS
@given(shape=shapes, seed=seeds, data=st.data())
def test_transpose_expand_squeeze_reshape(shape: tuple[int, ...], seed: int, data: Any) -> None:
    x = values(seed, shape)
    perm = data.draw(st.permutations(range(len(shape))))
    assert_matches(lambda: mb.transpose(x=x, perm=list(perm)))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    assert_matches(lambda: mb.expand_dims(x=x, axes=[axis]))
    if any(size > 1 for size in shape):  # coremltools cannot fold a squeeze to rank 0
        assert_matches(lambda: mb.squeeze(x=x.reshape((1,) + shape + (1,))))
    ones = [i for i, size in enumerate(shape) if size == 1]
    if ones:
        assert_matches(lambda: mb.squeeze(x=x, axes=ones[:1]))
    target = [0] * (len(shape) - 1) + [-1]  # 0 keeps the input's size on that axis
    assert_matches(lambda: mb.reshape(x=x, shape=target))
    if len(shape) > 1:  # coremltools cannot type flatten2d when one side is empty
        assert_matches(lambda: mb.flatten2d(x=x, axis=data.draw(st.integers(1, len(shape) - 1))))
    assert_matches(lambda: mb.identity(x=x))
    assert_matches(lambda: mb.shape(x=x))


@st.composite
def slicing(draw: Any) -> dict[str, Any]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    rank = len(shape)
    begin = [draw(st.integers(-size, size - 1)) for size in shape]
    end = [draw(st.integers(-size, size)) for size in shape]
    stride = [draw(st.sampled_from([1, 1, 2, 3, -1, -2])) for _ in shape]
    masks = {name: [draw(st.booleans()) for _ in range(rank)] for name in ("begin_mask", "end_mask")}
    return dict(shape=shape, begin=begin, end=end, stride=stride, **masks)


@OPS
@given(case=slicing(), seed=seeds, data=st.data())
def test_slice_by_index(case: dict[str, Any], seed: int, data: Any) -> None:
    x = values(seed, case["shape"])
    rank = len(case["shape"])
    params = {k: v for k, v in case.items() if k != "shape"}
    # python-slice semantics must leave a non-empty result for MIL
    index = tuple(
        slice(None if bm else b, None if em else e, s)
        for b, e, s, bm, em in zip(case["begin"], case["end"], case["stride"], case["begin_mask"], case["end_mask"])
    )
    if x[index].size == 0:
        return
    assert_matches(lambda: mb.slice_by_index(x=x, **params))
    squeeze = [data.draw(st.booleans()) and not case["begin_mask"][i] for i in range(rank)]
    if any(squeeze) and not all(squeeze):
        params = dict(params, squeeze_mask=squeeze)
        assert_matches(lambda: mb.slice_by_index(x=x, **params))


@OPS
@given(shape=shapes, seed=seeds, data=st.data())
def test_slice_by_size(shape: tuple[int, ...], seed: int, data: Any) -> None:
    begin = [data.draw(st.integers(0, size - 1)) for size in shape]
    size = [data.draw(st.sampled_from([-1, max(1, s - b)])) for b, s in zip(begin, shape)]
    assert_matches(lambda: mb.slice_by_size(x=values(seed, shape), begin=begin, size=size))


@OPS
@given(shape=shapes, seed=seeds, count=st.integers(1, 3), interleave=st.booleans(), data=st.data())
def test_concat_stack_split(shape: tuple[int, ...], seed: int, count: int, interleave: bool, data: Any) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    parts = [values(seed + i, shape) for i in range(count)]
    if count * int(np.prod(shape)) <= 10:  # coremltools folds concat up to 10 elements per input
        assert_matches(lambda: mb.concat(values=parts, axis=axis))
    assert_matches(lambda: mb.stack(values=parts, axis=data.draw(st.integers(0, len(shape)))))
    x = np.concatenate(parts, axis=axis)
    assert_matches(lambda: mb.split(x=x, num_splits=count, axis=axis))
    size = x.shape[axis]
    cut = data.draw(st.integers(1, size)) if size > 1 else 1
    sizes = [cut, size - cut] if cut < size else [size]
    assert_matches(lambda: mb.split(x=x, split_sizes=sizes, axis=axis))


@OPS
@given(shape=shapes, seed=seeds, data=st.data())
def test_tile_reverse_cumsum(shape: tuple[int, ...], seed: int, data: Any) -> None:
    x = values(seed, shape)
    reps = [data.draw(st.integers(1, 3)) for _ in shape]
    assert_matches(lambda: mb.tile(x=x, reps=reps))
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    assert_matches(lambda: mb.reverse(x=x, axes=axes))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    axis = data.draw(st.integers(-1, len(shape) - 1))  # the range coremltools accepts
    reverse = data.draw(st.booleans())
    assert_matches(lambda: mb.cumsum(x=x, axis=axis, reverse=reverse), TRANSCENDENTAL_TOL)
    # coremltools cannot fold exclusive=True; exclusive is the inclusive sum minus the element
    (inclusive,), _ = folded_and_evaluated(lambda: mb.cumsum(x=x, axis=axis, reverse=reverse))
    exclusive = evaluated_on_inputs(lambda v: mb.cumsum(x=v, axis=axis, reverse=reverse, exclusive=True), x)
    np.testing.assert_allclose(exclusive, inclusive - x, **TRANSCENDENTAL_TOL)


@OPS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=2, max_side=5), seed=seeds, mode=st.sampled_from(["constant", "reflect", "replicate"]), data=st.data())
def test_pad(shape: tuple[int, ...], seed: int, mode: str, data: Any) -> None:
    padded = data.draw(st.integers(1, len(shape)))
    limit = 1 if mode == "reflect" else 3
    pad = [data.draw(st.integers(0, limit)) for _ in range(2 * padded)]
    value = data.draw(st.floats(-2, 2, width=32))
    assert_matches(lambda: mb.pad(x=values(seed, shape), pad=pad, mode=mode, constant_val=np.float32(value)))


@OPS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4), seed=seeds, data=st.data())
def test_gather(shape: tuple[int, ...], seed: int, data: Any) -> None:
    x = values(seed, shape)
    batch_dims = data.draw(st.integers(0, len(shape) - 1))
    axis = data.draw(st.integers(batch_dims, len(shape) - 1))
    extra = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    index_shape = shape[:batch_dims] + extra
    indices = values(seed + 1, index_shape, -shape[axis], shape[axis] - 1, np.int32)
    assert_matches(lambda: mb.gather(x=x, indices=indices, axis=axis, batch_dims=batch_dims))


@OPS
@given(shape=shapes, seed=seeds, data=st.data())
def test_gather_and_scatter_along_axis(shape: tuple[int, ...], seed: int, data: Any) -> None:
    x = values(seed, shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    index_shape = list(shape)
    index_shape[axis] = data.draw(st.integers(1, 4))
    indices = values(seed + 1, index_shape, 0, shape[axis] - 1, np.int32)
    assert_matches(lambda: mb.gather_along_axis(x=x, indices=indices, axis=axis))
    if index_shape[axis] <= shape[axis]:
        # distinct targets per line so "update" has one winner, as on device
        order = np.argsort(values(seed + 2, shape), axis=axis).astype(np.int32)
        unique = np.take(order, np.arange(index_shape[axis]), axis=axis)
        updates = values(seed + 3, index_shape)
        assert_matches(lambda: mb.scatter_along_axis(data=x, indices=unique, updates=updates, axis=axis, mode="update"))
        # coremltools folds every mode as "update": the others against put/take along the axis
        mode = data.draw(st.sampled_from(["add", "sub", "mul", "max", "min"]))
        combine = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[mode]
        want = x.copy()
        np.put_along_axis(want, unique, combine(np.take_along_axis(x, unique, axis=axis), updates), axis=axis)
        got = evaluated_on_inputs(
            lambda d, u: mb.scatter_along_axis(data=d, indices=unique, updates=u, axis=axis, mode=mode), x, updates
        )
        np.testing.assert_allclose(got, want, **FP32_TOL)


@OPS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5), seed=seeds, data=st.data())
def test_sorting(shape: tuple[int, ...], seed: int, data: Any) -> None:
    x = np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(np.float32)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ascending = data.draw(st.booleans())
    assert_matches(lambda: mb.argsort(x=x, axis=axis, ascending=ascending))
    k = data.draw(st.integers(1, shape[axis]))
    assert_matches(lambda: mb.topk(x=x, k=k, axis=axis, ascending=ascending))


@OPS
@given(shape=hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5), seed=seeds, lower=st.integers(-1, 4), upper=st.integers(-1, 4))
def test_band_part(shape: tuple[int, ...], seed: int, lower: int, upper: int) -> None:
    assert_matches(lambda: mb.band_part(x=values(seed, shape), lower=lower, upper=upper))


@OPS
@given(start=st.integers(-10, 10), count=st.integers(1, 8), step=st.sampled_from([1, 2, 3, -1, -2]), floats=st.booleans())
def test_range_and_fill(start: int, count: int, step: int, floats: bool) -> None:
    end = start + count * step
    if floats:
        assert_matches(lambda: mb.range_1d(start=np.float32(start), end=np.float32(end), step=np.float32(step) / 2))
    else:
        assert_matches(lambda: mb.range_1d(start=np.int32(start), end=np.int32(end), step=np.int32(step)))
    assert_matches(lambda: mb.fill(shape=np.array([count, 2], np.int32), value=np.float32(step)))
    assert_matches(lambda: mb.fill_like(ref_tensor=np.zeros((count, 3), np.float32), value=np.float32(start)))


@OPS
@given(shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5), seed=seeds, data=st.data())
def test_non_zero(shape: tuple[int, ...], seed: int, data: Any) -> None:
    x = values(seed, shape)
    assert_matches(lambda: mb.non_zero(x=np.where(x > 0, x, 0).astype(np.float32)))


# ---- linear algebra and normalization ------------------------------------------------------------


@st.composite
def matmul_case(draw: Any) -> tuple[tuple[int, ...], tuple[int, ...], bool, bool]:
    m, k, n = (draw(st.integers(1, 5)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3))
    tx, ty = draw(st.booleans()), draw(st.booleans())
    x_shape = batch.input_shapes[0] + ((k, m) if tx else (m, k))
    y_shape = batch.input_shapes[1] + ((n, k) if ty else (k, n))
    return x_shape, y_shape, tx, ty


@OPS
@given(case=matmul_case(), seed=seeds, dtype=float_dtypes)
def test_matmul(case: Any, seed: int, dtype: Any) -> None:
    x_shape, y_shape, tx, ty = case
    x, y = values(seed, x_shape, dtype=dtype), values(seed + 1, y_shape, dtype=dtype)
    tol = dict(rtol=1e-2, atol=5e-2) if dtype == np.float16 else TRANSCENDENTAL_TOL
    assert_matches(lambda: mb.matmul(x=x, y=y, transpose_x=tx, transpose_y=ty), tol)


@OPS
@given(batch=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), n=st.integers(1, 6), k=st.integers(1, 6), bias=st.booleans(), seed=seeds)
def test_linear(batch: tuple[int, ...], n: int, k: int, bias: bool, seed: int) -> None:
    x, weight = values(seed, batch + (k,)), values(seed + 1, (n, k))
    b = values(seed + 2, (n,)) if bias else None
    assert_matches(lambda: mb.linear(x=x, weight=weight, bias=b), TRANSCENDENTAL_TOL)


@OPS
@given(seed=seeds, sizes=st.tuples(*(st.integers(1, 4) for _ in range(5))), batched=st.booleans(), broadcast=st.booleans())
def test_einsum(seed: int, sizes: tuple[int, ...], batched: bool, broadcast: bool) -> None:
    """The two equation forms MIL einsum has (coremltools emits no other), any letters, batch
    axes broadcast."""
    n, c, h, w, u = sizes
    if batched:
        equation, a, b = "abcd,adce->abce", values(seed, (1 if broadcast else n, c, h, w)), values(seed + 1, (n, w, h, u))
    else:
        equation, a, b = "chw,whr->chr", values(seed, (c, h, w)), values(seed + 1, (w, h, u))
    assert_matches(lambda: mb.einsum(values=(a, b), equation=equation), TRANSCENDENTAL_TOL)


@OPS
@given(shape=shapes, seed=seeds, data=st.data(), dtype=float_dtypes)
def test_softmax(shape: tuple[int, ...], seed: int, data: Any, dtype: Any) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    assert_matches(lambda: mb.softmax(x=values(seed, shape, -5, 5, dtype), axis=axis), None if dtype == np.float16 else TRANSCENDENTAL_TOL)


@OPS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=2, max_side=5), seed=seeds, data=st.data())
def test_layer_norm(shape: tuple[int, ...], seed: int, data: Any) -> None:
    rank = len(shape)
    count = data.draw(st.integers(1, rank))
    axes = list(range(rank - count, rank))
    if data.draw(st.booleans()):
        axes = [a - rank for a in axes]
    norm_shape = shape[rank - count :]
    gamma = values(seed + 1, norm_shape) if data.draw(st.booleans()) else None
    # coremltools' type inference reads gamma's shape to check beta: beta only with gamma
    beta = values(seed + 2, norm_shape) if gamma is not None and data.draw(st.booleans()) else None
    x = values(seed, shape)
    assert_matches(lambda: mb.layer_norm(x=x, axes=axes, gamma=gamma, beta=beta, epsilon=np.float32(1e-5)), dict(rtol=1e-4, atol=2e-5))


@OPS
@given(shape=hnp.array_shapes(min_dims=3, max_dims=5, min_side=1, max_side=4), seed=seeds)
def test_l2_norm(shape: tuple[int, ...], seed: int) -> None:
    assert_matches(lambda: mb.l2_norm(x=values(seed, shape), epsilon=np.float32(1e-6)), TRANSCENDENTAL_TOL)


@OPS
@given(seed=seeds, sizes=st.tuples(*(st.integers(1, 4) for _ in range(5))), mask=st.sampled_from([None, "bool", "float"]))
def test_scaled_dot_product_attention(seed: int, sizes: tuple[int, ...], mask: Any) -> None:
    b, l, s, e, v = sizes
    q, k, val = values(seed, (b, l, e)), values(seed + 1, (b, s, e)), values(seed + 2, (b, s, v))
    attn_mask = None
    if mask == "bool":
        attn_mask = np.ones((l, s), bool)
        attn_mask[:, 1:] = values(seed + 3, (l, s - 1), dtype=bool)
    elif mask == "float":
        attn_mask = values(seed + 3, (l, s))
    assert_matches(lambda: mb.scaled_dot_product_attention(query=q, key=k, value=val, attn_mask=attn_mask), TRANSCENDENTAL_TOL, IOS18)


@OPS
@given(case=slicing(), seed=seeds)
def test_slice_update(case: dict[str, Any], seed: int) -> None:
    x = values(seed, case["shape"])
    index = tuple(
        slice(None if bm else b, None if em else e, s)
        for b, e, s, bm, em in zip(case["begin"], case["end"], case["stride"], case["begin_mask"], case["end_mask"])
    )
    target = x[index].shape
    if 0 in target:
        return
    params = {k: v for k, v in case.items() if k != "shape"}
    update = values(seed + 1, target)
    assert_matches(lambda: mb.slice_update(x=x, update=update, **params), None, IOS18)


def test_every_folded_op_in_the_table_is_checked_here() -> None:
    """The op types above cover every op of the table whose MIL class folds constants."""
    from coremltools.converters.mil.mil.operation import Operation
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    checked = set(UNARY_DOMAINS) | set(ARITHMETIC) | set(COMPARISONS) | set(REDUCTIONS) | {
        "erf", "gelu", "cast", "clamped_relu", "elu", "leaky_relu", "linear_activation",
        "scaled_tanh", "sigmoid_hard", "thresholded_relu", "threshold", "clip", "prelu",
        "softplus_parametric", "real_div", "floor_div", "mod", "pow", "logical_and",
        "logical_or", "logical_xor", "logical_not", "select", "reduce_argmax", "reduce_argmin",
        "transpose", "expand_dims", "squeeze", "reshape", "flatten2d", "identity", "shape",
        "slice_by_index", "slice_by_size", "concat", "stack", "split", "tile", "reverse",
        "cumsum", "pad", "gather", "gather_along_axis", "scatter_along_axis", "argsort", "topk",
        "band_part", "range_1d", "fill", "fill_like", "reverse_sequence", "non_zero", "matmul",
        "linear", "einsum", "softmax", "layer_norm", "l2_norm", "scaled_dot_product_attention",
        "slice_update", "abs", "quantize",
    }
    folding: set[str] = set()
    for name, versions in SSAOpRegistry.core_ops.items():  # op type -> {opset: class}
        for cls in versions.values():
            if any("value_inference" in vars(k) for k in cls.__mro__ if k is not Operation):
                folding.add(name)
    assert {"add", "matmul", "gather"} <= folding  # the walk above reads the registry right
    in_table = folding & reference.supported_op_types() - {"const", "cond"}
    checked |= {"reverse_sequence"}  # a stub value_inference: tests/test_reference_ops_torch.py
    checked |= {"list_length"}  # lists are not consts: tests/test_reference_lists.py
    assert in_table - checked == set()


@OPS
@given(shape=shapes, seed=seeds, per_axis=st.booleans(), dtype=st.sampled_from(["int8", "uint8"]), data=st.data())
def test_quantize(shape: tuple[int, ...], seed: int, per_axis: bool, dtype: str, data: Any) -> None:
    x = values(seed, shape, -4, 4)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1)) if per_axis else None
    size = shape[axis] if axis is not None else None
    scale = values(seed + 1, (size,) if size else (), 0.02, 0.1)
    low, high = (-10, 10) if dtype == "int8" else (100, 150)
    zero_point = values(seed + 2, (size,) if size else (), low, high, np.int8 if dtype == "int8" else np.uint8)
    assert_matches(lambda: mb.quantize(input=x, scale=scale, zero_point=zero_point, axis=axis, output_dtype=dtype))
    # dequantize does not fold: it inverts quantize to within half a step
    (quantized,), _ = folded_and_evaluated(lambda: mb.quantize(input=x, scale=scale, zero_point=zero_point, axis=axis, output_dtype=dtype))
    restored = evaluated_on_inputs(lambda q: mb.dequantize(input=q, scale=scale, zero_point=zero_point, axis=axis), quantized)
    shaped_scale = scale if axis is None else scale.reshape([-1 if i == axis % len(shape) else 1 for i in range(len(shape))])
    inside = (quantized > np.iinfo(quantized.dtype).min) & (quantized < np.iinfo(quantized.dtype).max)
    assert np.all(np.abs(restored - x)[inside] <= (np.broadcast_to(shaped_scale, x.shape)[inside] * 0.5001))


@pytest.mark.parametrize("layout", ["float16", "reversed view", "transposed view"])
def test_erf_keeps_its_sign_on_inputs_it_copies_first(layout: str) -> None:
    """A float16 or non-contiguous input is first copied to float32 and computed in place; the
    sign must be read before the copy is overwritten (it once came back as erf(|x|))."""
    from mil_sparsity.reference.ops_elementwise import erf

    base = np.linspace(-3, 3, 601, dtype=np.float32).reshape(601, 1) * np.ones((1, 3), np.float32)
    x = {"float16": base.astype(np.float16), "reversed view": base[::-1], "transposed view": base.T}[layout]
    expected = np.vectorize(math.erf)(x.astype(np.float64))
    np.testing.assert_allclose(erf(x), expected, rtol=0, atol=1e-6)
