"""Linear algebra and normalization kernels: matmul/linear/einsum on BLAS, softmax, layer,
batch, instance, l2 and local-response norms, scaled dot-product attention."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from mil_sparsity.reference.threads import active_threads, run_shares, split_products
from mil_sparsity.reference._registry import (
    Args,
    array,
    axes_of,
    flag,
    floating,
    inplace,
    integer,
    kernel,
    optional_array,
    text,
    writable_out,
)


#: the largest m*n*k that OpenBLAS computes on one thread (its GEMM_MULTITHREAD_THRESHOLD of 4
#: times 65536); a larger product is split across its threads
SINGLE_THREAD_PRODUCT = 1 << 18


def _row_parts(m: int, n: int, k: int, products: int) -> int:
    """How many row blocks to cut each of a batch of ``products`` small m x k @ k x n products
    into so that each block is a one-thread BLAS call (1: leave them whole)."""
    if products < 2 or not SINGLE_THREAD_PRODUCT < m * n * k <= 16 * SINGLE_THREAD_PRODUCT:
        return 1
    for parts in range(2, m // 16 + 1):
        if m % parts == 0 and (m // parts) * n * k <= SINGLE_THREAD_PRODUCT:
            return parts
    return 1


def matmul(
    x: np.ndarray, y: np.ndarray, transpose_x: bool = False, transpose_y: bool = False,
    bias: Optional[np.ndarray] = None,
) -> np.ndarray:
    """numpy matmul (BLAS for float32; rank-1 operands as numpy treats them), with the last
    two axes of an operand swapped when its transpose flag is set (a view, no copy), plus
    ``bias`` (broadcast against the last axis) when given.

    Layout per shape: a batch of matrices against one matrix is one GEMM over all leading rows.
    During a threaded run (:mod:`.threads`) a large product is cut into one share per thread,
    each a one-thread BLAS call writing its part of one output: along the batch when there are
    at least as many products as threads, else along the longer of the rows and the columns
    (every share packs the whole of the other operand, so that one should be the smaller:
    an LSTM step, 32 rows against 4096 columns, runs 1.5x faster by columns than by rows). Out of
    one, a batch of small products (attention's scores and context) runs as one-thread BLAS
    calls, each product cut into row blocks: numpy calls BLAS once per product, and a small
    product split across the BLAS's threads spends more on handing the work over than on
    arithmetic."""
    if transpose_x and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if transpose_y and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    if x.ndim > 2 and y.ndim == 2 and x.flags.c_contiguous:
        # one GEMM over all leading rows instead of a loop of small ones
        flat = matmul(x.reshape(-1, x.shape[-1]), y, bias=bias)
        return flat.reshape(x.shape[:-1] + (y.shape[-1],))
    if x.ndim >= 2 and y.ndim >= 2 and x.dtype.kind == "f" and y.dtype.kind == "f":
        split = _split_product(x, y, bias)
        if split is not None:
            return split
    if x.ndim >= 2 and y.ndim >= 2 and max(x.ndim, y.ndim) > 2 and x.dtype.kind == "f":
        (m, k), n = x.shape[-2:], y.shape[-1]
        products = math.prod(np.broadcast_shapes(x.shape[:-2], y.shape[:-2]))
        parts = _row_parts(m, n, k, products)
        if parts > 1:
            blocks = x.reshape(x.shape[:-2] + (parts, m // parts, k))
            result = np.matmul(blocks, y[..., None, :, :])
            return _plus(result.reshape(result.shape[:-3] + (m, n)), bias)
    return _plus(np.asarray(np.matmul(x, y)), bias)


def _plus(result: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    if bias is not None:
        result += bias
    return result


#: multiply-adds below which a product is not worth splitting among threads (about 40 us)
SPLIT_PRODUCT = 1 << 21
#: fewest rows (or columns) a thread's share of a product is cut to
_SHARE_MINIMUM = 16


def _along(value: np.ndarray, axis: int, part: slice) -> np.ndarray:
    """``value`` sliced to ``part`` along ``axis`` (a view)."""
    index: list[slice] = [slice(None)] * value.ndim
    index[axis] = part
    return value[tuple(index)]


def _split_product(x: np.ndarray, y: np.ndarray, bias: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """x @ y (+ bias) by shares among threads (see :func:`matmul`); None when it runs whole.
    A share along the batch slices both operands, along the rows only x, along the columns
    only y (and the bias)."""
    threads = active_threads()
    (m, k), n = x.shape[-2:], y.shape[-1]
    batch = np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    if threads < 2 or not split_products() or math.prod(batch) * m * n * k < SPLIT_PRODUCT:
        return None
    rows, columns = len(batch), len(batch) + 1  # the output's last two axes
    by_rows, by_columns = m >= threads * _SHARE_MINIMUM, n >= threads * _SHARE_MINIMUM
    if batch and batch[0] >= threads:
        axis, count, minimum = 0, batch[0], 1
    elif by_rows and (m >= n or not by_columns):
        axis, count, minimum = rows, m, _SHARE_MINIMUM
    elif by_columns:
        axis, count, minimum = columns, n, _SHARE_MINIMUM
    else:
        return None
    out = np.empty(batch + (m, n), np.result_type(x, y))
    x_full = np.broadcast_to(x, batch + (m, k))
    y_full = np.broadcast_to(y, batch + (k, n))
    bias_columns = None if bias is None or axis != columns else np.broadcast_to(bias, (n,))

    def product_part(share: range) -> None:
        part = slice(share.start, share.stop)
        into = _along(out, axis, part)
        np.matmul(
            x_full if axis == columns else _along(x_full, axis, part),
            y_full if axis == rows else _along(y_full, axis, part),
            out=into,
        )
        _plus(into, bias if bias_columns is None else bias_columns[part])

    run_shares(product_part, count, minimum)
    return out


@kernel("matmul", fresh=True)
def _matmul(args: Args) -> np.ndarray:
    return matmul(
        array(args, "x"), array(args, "y"), flag(args, "transpose_x"), flag(args, "transpose_y")
    )


@kernel("linear", fresh=True)
def _linear(args: Args) -> np.ndarray:
    """x @ weight.T + bias, weight [out, in]."""
    x, weight = array(args, "x"), array(args, "weight")
    return matmul(np.ascontiguousarray(x), weight.T, bias=optional_array(args, "bias"))


@kernel("einsum")
def _einsum(args: Args) -> np.ndarray:
    values = [np.asarray(v) for v in args["values"]]
    return np.asarray(np.einsum(text(args, "equation"), *values, optimize=True))


#: elements below which a row-wise kernel is not worth splitting among threads
_SPLIT_SIZE = 1 << 17


def _by_leading_slices(
    x: np.ndarray, reduced: tuple[int, ...], out: Optional[np.ndarray],
    whole: Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray],
) -> Optional[np.ndarray]:
    """``whole(x, out)`` run on slices of ``x``'s first axis shared among threads (during a
    threaded run, for a large float ``x`` reduced only over other axes ``reduced``): each
    slice's rows are computed as in one call. None: not split (the caller runs it whole)."""
    if (
        active_threads() < 2 or x.dtype.kind != "f" or x.ndim < 2 or x.shape[0] < 2
        or 0 in {axis % x.ndim for axis in reduced} or x.size < _SPLIT_SIZE
    ):
        return None
    target = np.empty(x.shape, x.dtype) if out is None else out

    def slice_part(share: range) -> None:
        part = slice(share.start, share.stop)
        whole(x[part], target[part])

    run_shares(slice_part, x.shape[0])
    return target


def softmax(x: np.ndarray, axis: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """exp(x - max) / sum, along ``axis``, computed in place on one new array (or on ``out``,
    which may be ``x`` itself); large arrays by slices of the first axis in a threaded run."""
    split = _by_leading_slices(x, (axis,), out, lambda part, into: _softmax_whole(part, axis, into))
    return split if split is not None else _softmax_whole(x, axis, out)


def _softmax_whole(x: np.ndarray, axis: int, out: Optional[np.ndarray]) -> np.ndarray:
    peak = np.max(x, axis=axis, keepdims=True)
    result = np.subtract(x, peak, out=out)
    np.exp(result, out=result)
    result /= np.sum(result, axis=axis, keepdims=True)
    return np.asarray(result)


@kernel("softmax", fresh=True)
def _softmax(args: Args) -> np.ndarray:
    return _softmax_inplace(args, frozenset())


@inplace(_softmax, "x")
def _softmax_inplace(args: Args, writable: frozenset[str]) -> np.ndarray:
    x = array(args, "x")
    out = writable_out(args, writable, ("x",), x.shape, x.dtype) if x.dtype.kind == "f" else None
    return softmax(x, integer(args, "axis", -1) % x.ndim, out)


def _normalize(
    x: np.ndarray, axes: tuple[int, ...], epsilon: float, out: Optional[np.ndarray] = None,
    gamma: Optional[np.ndarray] = None, beta: Optional[np.ndarray] = None,
) -> np.ndarray:
    """(x - mean) / sqrt(biased variance + epsilon) over ``axes`` (then * gamma + beta, each
    optional and broadcastable against x), into a new array or ``out`` (which may be ``x``
    itself); large arrays by slices of the first axis in a threaded run."""
    split = _by_leading_slices(x, axes, out, lambda part, into: _normalize_whole(part, axes, epsilon, into, gamma, beta))
    return split if split is not None else _normalize_whole(x, axes, epsilon, out, gamma, beta)


def _normalize_whole(
    x: np.ndarray, axes: tuple[int, ...], epsilon: float, out: Optional[np.ndarray],
    gamma: Optional[np.ndarray], beta: Optional[np.ndarray],
) -> np.ndarray:
    centered = np.subtract(x, np.mean(x, axis=axes, keepdims=True), out=out)
    variance = np.mean(np.square(centered), axis=axes, keepdims=True)
    variance += np.float32(epsilon)
    centered *= 1.0 / np.sqrt(variance)
    if gamma is not None:
        centered *= gamma
    if beta is not None:
        centered += beta
    return np.asarray(centered)


def _broadcast_to_axes(value: np.ndarray, axes: tuple[int, ...], rank: int) -> np.ndarray:
    shape = [1] * rank
    sizes = iter(value.shape)
    if value.ndim == len(axes):
        for axis in axes:
            shape[axis] = next(sizes)
        return value.reshape(shape)
    return value


@kernel("layer_norm", fresh=True)
def _layer_norm(args: Args) -> np.ndarray:
    """Normalize over ``axes`` (all when absent), then * gamma + beta (each optional, shaped
    like x on those axes)."""
    return _layer_norm_inplace(args, frozenset())


@inplace(_layer_norm, "x")
def _layer_norm_inplace(args: Args, writable: frozenset[str]) -> np.ndarray:
    x = array(args, "x")
    axes = axes_of(args, "axes", x.ndim)
    if axes is None:
        axes = tuple(range(x.ndim))
    out = writable_out(args, writable, ("x",), x.shape, x.dtype) if x.dtype.kind == "f" else None
    gamma, beta = optional_array(args, "gamma"), optional_array(args, "beta")
    return _normalize(
        x, axes, floating(args, "epsilon", 1e-5), out,
        None if gamma is None else _broadcast_to_axes(gamma, axes, x.ndim),
        None if beta is None else _broadcast_to_axes(beta, axes, x.ndim),
    )


def _per_channel(value: Optional[np.ndarray], rank: int) -> Optional[np.ndarray]:
    if value is None:
        return None
    return value.reshape((1, -1) + (1,) * (rank - 2))


@kernel("batch_norm")
def _batch_norm(args: Args) -> np.ndarray:
    """(x - mean) / sqrt(variance + epsilon) * gamma + beta, per channel (axis 1)."""
    x = array(args, "x")
    rank = x.ndim
    channel_shape = (1, -1) + (1,) * (rank - 2)
    mean = array(args, "mean").reshape(channel_shape)
    variance = array(args, "variance").reshape(channel_shape)
    scale = 1.0 / np.sqrt(variance + np.float32(floating(args, "epsilon", 1e-5)))
    gamma = _per_channel(optional_array(args, "gamma"), rank)
    beta = _per_channel(optional_array(args, "beta"), rank)
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    result = x * scale
    result += shift
    return result


@kernel("instance_norm")
def _instance_norm(args: Args) -> np.ndarray:
    """Normalize each (batch, channel) over the spatial axes, then per-channel gamma, beta."""
    x = array(args, "x")
    result = _normalize(x, tuple(range(2, x.ndim)), floating(args, "epsilon", 1e-5))
    gamma = _per_channel(optional_array(args, "gamma"), x.ndim)
    beta = _per_channel(optional_array(args, "beta"), x.ndim)
    if gamma is not None:
        result *= gamma
    if beta is not None:
        result += beta
    return result


@kernel("l2_norm")
def _l2_norm(args: Args) -> np.ndarray:
    """x / sqrt(sum of squares + epsilon) over the last three axes (all but batch axes)."""
    x = array(args, "x")
    axes = tuple(range(max(x.ndim - 3, 0), x.ndim))
    total = np.sum(np.square(x), axis=axes, keepdims=True) + np.float32(floating(args, "epsilon", 1e-6))
    return np.asarray(x / np.sqrt(total))


@kernel("local_response_norm")
def _local_response_norm(args: Args) -> np.ndarray:
    """x / (k + alpha/size * sum of x^2 over a window of ``size`` channels) ** beta."""
    x = array(args, "x")
    size = integer(args, "size")
    alpha = floating(args, "alpha", 1e-4)
    beta = floating(args, "beta", 0.75)
    k = floating(args, "k", 1.0)
    square = np.square(x)
    before, after = (size - 1) // 2, size // 2
    padded = np.pad(square, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    window_sums = np.cumsum(padded, axis=1, dtype=x.dtype)
    window_sums = np.concatenate([np.zeros_like(window_sums[:, :1]), window_sums], axis=1)
    channels = x.shape[1]
    total = window_sums[:, size : size + channels] - window_sums[:, :channels]
    return np.asarray(x / np.power(np.float32(k) + np.float32(alpha / size) * total, np.float32(beta)))


@kernel("scaled_dot_product_attention")
def _scaled_dot_product_attention(args: Args) -> np.ndarray:
    """softmax(Q K^T / sqrt(d) + mask) V; a bool mask keeps True positions (others -inf)."""
    query, key, value = array(args, "query"), array(args, "key"), array(args, "value")
    scores = matmul(query, key, transpose_y=True)
    scores *= np.float32(1.0 / np.sqrt(query.shape[-1]))
    mask = optional_array(args, "attn_mask")
    if mask is not None:
        if mask.dtype == np.bool_:
            scores = np.where(mask, scores, np.float32(-np.inf))
        else:
            scores += mask
    return matmul(softmax(scores, scores.ndim - 1), value)
