"""Elementwise kernels: unary math, binary arithmetic with numpy broadcasting, comparisons,
logical ops and activations. Floats arrive as float32 and stay float32."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mil_sparsity.format.sparse_format import DTYPES
from mil_sparsity.reference.threads import run_shares
from mil_sparsity.reference._registry import (
    Args,
    InplaceKernel,
    Kernel,
    array,
    floating,
    inplace,
    kernel,
    text,
    writable_out,
)

# -- erf -----------------------------------------------------------------------------------
# numpy has no erf. Abramowitz & Stegun 7.1.26: erfc(|z|) = t*P(t)*exp(-z^2) with
# t = 1 / (1 + p|z|), max absolute error 1.5e-7, below float32 resolution near 1.
_ERF_P = np.float32(0.3275911)
#: P's coefficients, highest power first (a5 .. a1)
_ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)
_SQRT_HALF = 1.0 / np.sqrt(2.0)
_COEFFICIENTS = {
    half: tuple(np.float32(c * (0.5 if half else 1.0)) for c in _ERF_A) for half in (False, True)
}
_FINITE = np.float32(1e18)  # its square is finite too
#: elements per block of the fused chains below: a block's scratch arrays stay in a core's
#: cache, so the chain's many passes do not each stream the whole tensor through memory
BLOCK = 1 << 17


_LOG2_E = 1.0 / np.log(2.0)
#: read-only float32 blocks of one value, by (value, size): numpy's maximum and minimum run
#: several times faster against an array than against a scalar
_FILLED: dict[tuple[float, int], np.ndarray] = {}


def _filled(value: float, size: int) -> np.ndarray:
    key = (value, size)
    block = _FILLED.get(key)
    if block is None:
        if len(_FILLED) > 64:
            _FILLED.clear()
        block = np.full(size, value, np.float32)
        block.flags.writeable = False
        _FILLED[key] = block
    return block


def _erfc_abs(a: np.ndarray, scale: float, half: bool, t: np.ndarray, e: np.ndarray, out: np.ndarray) -> None:
    """``out`` = erfc(scale * a) for a >= 0 (halved with ``half``); ``t``, ``e`` scratch.
    exp(-(scale a)^2) is computed as exp2(-(scale a)^2 log2 e): numpy's float32 exp2 is about
    twice as fast as its exp, and the rounding of the folded constant moves the result by
    less than 2e-6 of itself."""
    coefficients = _COEFFICIENTS[half]
    np.multiply(a, np.float32(_ERF_P * scale), out=t)
    t += np.float32(1.0)
    np.divide(np.float32(1.0), t, out=t)
    np.square(a, out=e)
    e *= np.float32(-scale * scale * _LOG2_E)
    np.exp2(e, out=e)
    np.multiply(t, coefficients[0], out=out)
    for coefficient in coefficients[1:]:
        out += coefficient
        out *= t
    out *= e


def _blockwise(
    x: np.ndarray, out: np.ndarray, chain: Callable[[np.ndarray, np.ndarray, list[np.ndarray]], None], scratch: int
) -> np.ndarray:
    """``chain(x_block, out_block, scratch_blocks)`` over flat blocks of the C-contiguous ``x``
    and ``out`` (which may be ``x`` itself: a chain reads its block before writing it); in a
    threaded run the blocks are shared among threads (:mod:`.threads`), each with its own
    scratch."""
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    size = flat_x.size
    step = max(min(BLOCK, size), 1)

    def blocks(share: range) -> None:
        buffers = [np.empty(step, np.float32) for _ in range(scratch)]
        for block in share:
            begin, end = block * step, min(block * step + step, size)
            chain(flat_x[begin:end], flat_out[begin:end], [b[: end - begin] for b in buffers])

    run_shares(blocks, -(-size // step), minimum_per_thread=2)
    return out


def _erf_chain(x: np.ndarray, out: np.ndarray, scratch: list[np.ndarray]) -> None:
    a, t, e = scratch
    np.abs(x, out=a)
    _erfc_abs(a, 1.0, False, t, e, a)
    np.subtract(np.float32(1.0), a, out=a)
    np.copysign(a, x, out=out)  # x is read here, so out may be x itself


def _gelu_chain(x: np.ndarray, out: np.ndarray, scratch: list[np.ndarray]) -> None:
    """gelu(x) = x Phi(x) = max(x, 0) - |x| erfc(|x| / sqrt 2) / 2 (no cancellation for x < 0)."""
    a, t, e, q = scratch
    np.abs(x, out=a)
    np.minimum(a, _filled(float(_FINITE), a.size), out=a)  # |x| = inf would make |x| erfc = inf * 0
    _erfc_abs(a, _SQRT_HALF, True, t, e, q)
    a *= q
    np.maximum(x, _filled(0.0, x.size), out=out)
    out -= a


def _unary_blockwise(
    x: np.ndarray, chain: Callable[[np.ndarray, np.ndarray, list[np.ndarray]], None], scratch: int,
    in_place: bool = False,
) -> np.ndarray:
    """A float32 chain over ``x``: into ``x`` itself when ``in_place`` (x is a writable,
    C-contiguous float32 array), else into a new array."""
    if in_place:
        return _blockwise(x, x, chain, scratch)
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)  # a new array: computed in place
        return _blockwise(x, x, chain, scratch)
    return _blockwise(x, np.empty_like(x), chain, scratch)


def erf(x: np.ndarray) -> np.ndarray:
    """Error function, float32, vectorised (absolute error < 6e-7 against float64 erf)."""
    return _unary_blockwise(np.asarray(x), _erf_chain, 3)


# -- unary ---------------------------------------------------------------------------------

_UNARY: dict[str, Callable[[np.ndarray], Any]] = {
    "abs": np.abs,
    "acos": np.arccos,
    "asin": np.arcsin,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "ceil": np.ceil,
    "cos": np.cos,
    "cosh": np.cosh,
    "exp": np.exp,
    "exp2": np.exp2,
    "floor": np.floor,
    "round": np.round,
    "sign": np.sign,
    "sin": np.sin,
    "sinh": np.sinh,
    "sqrt": np.sqrt,
    "square": np.square,
    "tan": np.tan,
    "tanh": np.tanh,
    "logical_not": np.logical_not,
}


def _unary(function: Callable[[np.ndarray], Any]) -> Kernel:
    return lambda args: np.asarray(function(array(args, "x")))


for _name, _function in _UNARY.items():
    kernel(_name)(_unary(_function))


@kernel("erf", fresh=True)
def _erf(args: Args) -> np.ndarray:
    return erf(array(args, "x"))


@kernel("inverse")
def _inverse(args: Args) -> np.ndarray:
    return np.reciprocal(array(args, "x") + np.float32(floating(args, "epsilon", 1e-4)))


@kernel("log")
def _log(args: Args) -> np.ndarray:
    return np.log(array(args, "x") + np.float32(floating(args, "epsilon", 0.0)))


@kernel("rsqrt")
def _rsqrt(args: Args) -> np.ndarray:
    return 1.0 / np.sqrt(array(args, "x") + np.float32(floating(args, "epsilon", 1e-12)))


@kernel("clip")
def _clip(args: Args) -> np.ndarray:
    return np.asarray(np.minimum(np.maximum(array(args, "x"), array(args, "alpha")), array(args, "beta")))


@kernel("threshold")
def _threshold(args: Args) -> np.ndarray:
    return np.asarray(np.maximum(array(args, "x"), array(args, "alpha")))


#: cast's dtype names -> numpy: the byte-sized types of the one dtype table, plus what the
#: evaluator computes in instead (bool; fp64 and int64 in 32 bits, as Core ML does)
_CAST_DTYPES: dict[str, Any] = {
    **{dtype.name: np.dtype(dtype.numpy).type for dtype in DTYPES if dtype.bits >= 8},
    "bool": np.bool_,
    "fp64": np.float32,
    "int64": np.int32,
}


@kernel("cast")
def _cast(args: Args) -> np.ndarray:
    """To the named dtype (float results are computed as float32: fp16 values are rounded to
    fp16 first, so a cast to fp16 changes the value as it would on device)."""
    x = array(args, "x")
    target = np.dtype(_CAST_DTYPES[text(args, "dtype")])
    if target.kind in "iu" and x.dtype.kind == "f":
        x = np.trunc(x)
    result = x.astype(target)
    return result.astype(np.float32) if target == np.float16 else result


# -- binary --------------------------------------------------------------------------------

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


#: binary ops that may write into an input that dies at the op
_BINARY_IN_PLACE = frozenset({"add", "sub", "mul"})


def _binary(function: Callable[[np.ndarray, np.ndarray], Any]) -> Kernel:
    return lambda args: np.asarray(function(array(args, "x"), array(args, "y")))


def _binary_inplace(function: Callable[..., Any]) -> InplaceKernel:
    def run(args: Args, writable: frozenset[str]) -> np.ndarray:
        x, y = array(args, "x"), array(args, "y")
        shape = np.broadcast_shapes(x.shape, y.shape)
        out = writable_out(args, writable, ("x", "y"), shape, np.result_type(x, y))
        return np.asarray(function(x, y) if out is None else function(x, y, out=out))

    return run


for _name, _binary_function in _BINARY.items():
    _binary_kernel = kernel(_name, fresh=True)(_binary(_binary_function))
    if _name in _BINARY_IN_PLACE:
        inplace(_binary_kernel, "x", "y")(_binary_inplace(_binary_function))


@kernel("real_div")
def _real_div(args: Args) -> np.ndarray:
    x, y = array(args, "x"), array(args, "y")
    if x.dtype.kind == "f" or y.dtype.kind == "f":
        return np.asarray(np.true_divide(x, y))
    return np.asarray(np.floor_divide(x, y))  # integer real_div keeps the integer type (floored)


# -- activations ---------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    result = np.negative(x)
    np.exp(result, out=result)
    result += 1.0
    return np.asarray(np.reciprocal(result, out=result))


@kernel("sigmoid")
def _sigmoid_kernel(args: Args) -> np.ndarray:
    return _sigmoid(array(args, "x"))


@kernel("silu")
def _silu(args: Args) -> np.ndarray:
    x = array(args, "x")
    return np.asarray(x * _sigmoid(x))


@kernel("relu6")
def _relu6(args: Args) -> np.ndarray:
    return np.asarray(np.clip(array(args, "x"), 0.0, 6.0))


def _gelu_approximate(x: np.ndarray, mode: str) -> np.ndarray:
    """TANH_APPROXIMATION: x/2 (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))); SIGMOID_APPROXIMATION:
    x sigmoid(1.702 x)."""
    if mode == "SIGMOID_APPROXIMATION":
        return np.asarray(x * _sigmoid(np.float32(1.702) * x))
    inner = x * x
    inner *= np.float32(0.044715)
    inner += 1.0
    inner *= x
    inner *= np.float32(np.sqrt(2.0 / np.pi))
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= 0.5
    inner *= x
    return np.asarray(inner)


def _relu_chain(x: np.ndarray, out: np.ndarray, scratch: list[np.ndarray]) -> None:
    np.maximum(x, _filled(0.0, x.size), out=out)


@kernel("relu", fresh=True)
def _relu(args: Args) -> np.ndarray:
    """max(x, 0) (NaN stays NaN); float32 over cache-sized blocks against a cached block of
    zeros (numpy's maximum against a scalar is slower), in place when x dies here."""
    return _relu_inplace(args, frozenset())


@inplace(_relu, "x")
def _relu_inplace(args: Args, writable: frozenset[str]) -> np.ndarray:
    x = array(args, "x")
    if x.dtype.kind != "f":
        return np.asarray(np.maximum(x, x.dtype.type(0)))
    in_place = writable_out(args, writable, ("x",), x.shape, np.dtype(np.float32)) is not None
    return _unary_blockwise(x, _relu_chain, 0, in_place)


@kernel("gelu", fresh=True)
def _gelu(args: Args) -> np.ndarray:
    """EXACT: x/2 (1 + erf(x / sqrt 2)); TANH_APPROXIMATION: x/2 (1 + tanh(sqrt(2/pi)(x +
    0.044715 x^3))); SIGMOID_APPROXIMATION: x sigmoid(1.702 x)."""
    return _gelu_inplace(args, frozenset())


@inplace(_gelu, "x")
def _gelu_inplace(args: Args, writable: frozenset[str]) -> np.ndarray:
    x = array(args, "x")
    mode = text(args, "mode", "EXACT")
    if mode != "EXACT":
        return _gelu_approximate(x, mode)
    in_place = writable_out(args, writable, ("x",), x.shape, np.dtype(np.float32)) is not None
    return _unary_blockwise(x, _gelu_chain, 4, in_place)


def _channel_param(args: Args, name: str, rank: int) -> np.ndarray:
    """A per-channel (axis 1) parameter shaped to broadcast against a rank-``rank`` x."""
    value = array(args, name)
    if value.ndim == 1 and rank >= 2:
        return value.reshape((1, -1) + (1,) * (rank - 2))
    return value


@kernel("leaky_relu")
def _leaky_relu(args: Args) -> np.ndarray:
    x = array(args, "x")
    return np.where(x < 0, x * array(args, "alpha"), x)


@kernel("prelu")
def _prelu(args: Args) -> np.ndarray:
    x = array(args, "x")
    return np.where(x < 0, x * _channel_param(args, "alpha", x.ndim), x)


@kernel("elu")
def _elu(args: Args) -> np.ndarray:
    x = array(args, "x")
    return np.where(x < 0, array(args, "alpha") * np.expm1(np.minimum(x, 0.0)), x)


@kernel("clamped_relu")
def _clamped_relu(args: Args) -> np.ndarray:
    x = array(args, "x")
    beta = array(args, "beta")
    return np.asarray(np.minimum(np.where(x < 0, x * array(args, "alpha"), x), beta))


@kernel("linear_activation")
def _linear_activation(args: Args) -> np.ndarray:
    return np.asarray(array(args, "alpha") * array(args, "x") + array(args, "beta"))


@kernel("scaled_tanh")
def _scaled_tanh(args: Args) -> np.ndarray:
    return np.asarray(array(args, "alpha") * np.tanh(array(args, "x") * array(args, "beta")))


@kernel("sigmoid_hard")
def _sigmoid_hard(args: Args) -> np.ndarray:
    linear = array(args, "alpha") * array(args, "x") + array(args, "beta")
    return np.asarray(np.clip(linear, 0.0, 1.0))


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) without overflow: log1p(e^-|x|) + max(x, 0)."""
    return np.asarray(np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0))


@kernel("softplus")
def _softplus_kernel(args: Args) -> np.ndarray:
    return _softplus(array(args, "x"))


@kernel("softplus_parametric")
def _softplus_parametric(args: Args) -> np.ndarray:
    x = array(args, "x")
    alpha = _channel_param(args, "alpha", x.ndim)
    beta = _channel_param(args, "beta", x.ndim)
    return np.asarray(alpha * _softplus(beta * x))


@kernel("softsign")
def _softsign(args: Args) -> np.ndarray:
    x = array(args, "x")
    return np.asarray(x / (1.0 + np.abs(x)))


@kernel("thresholded_relu")
def _thresholded_relu(args: Args) -> np.ndarray:
    x = array(args, "x")
    return np.where(x < array(args, "alpha"), np.zeros((), x.dtype), x)
