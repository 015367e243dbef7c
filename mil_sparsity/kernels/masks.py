"""Prune masks: which elements of a weight become zero.

Every function returns a bool array of the weight's shape, True where the element is pruned.

Magnitudes are compared through *magnitude keys*: the float's bit pattern with the sign bit
cleared, read as an unsigned integer of the same width. For IEEE floats that integer order is
exactly the order of ``|w|``, with ``-0.0 == +0.0``, ``+inf`` above every finite value and NaN
above ``+inf``. Keys are exact (no rounding, no float64 temporary) and give one total order, so
"the k smallest" is always well defined. Ties are broken by position: among equal magnitudes
the element with the lower row-major index is pruned first.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.kernels.selection import lowest_k_mask, target_count

BoolArray = NDArray[np.bool_]

# float dtype -> (unsigned view dtype, mask that clears the sign bit)
_KEY_LAYOUT: Final[dict[np.dtype[Any], tuple[type[np.unsignedinteger[Any]], int]]] = {
    np.dtype(np.float16): (np.uint16, 0x7FFF),
    np.dtype(np.float32): (np.uint32, 0x7FFF_FFFF),
    np.dtype(np.float64): (np.uint64, 0x7FFF_FFFF_FFFF_FFFF),
}

def _key_layout(dtype: np.dtype[Any]) -> tuple[type[np.unsignedinteger[Any]], int]:
    try:
        return _KEY_LAYOUT[np.dtype(dtype)]
    except KeyError:
        raise InvalidTypeError(
            f"weight dtype must be float16, float32 or float64, got {np.dtype(dtype)}"
        ) from None


def magnitude_keys(weight: NDArray[Any]) -> NDArray[np.unsignedinteger[Any]]:
    """Unsigned integer keys whose order is the order of ``|weight|`` (NaN largest)."""
    unsigned, sign_clear = _key_layout(weight.dtype)
    return np.bitwise_and(weight.view(unsigned), unsigned(sign_clear))


def magnitude_keys_in_place(scratch: NDArray[Any]) -> NDArray[np.unsignedinteger[Any]]:
    """Turn a float array the caller owns into its magnitude keys without a new allocation."""
    unsigned, sign_clear = _key_layout(scratch.dtype)
    keys = scratch.view(unsigned)
    np.bitwise_and(keys, unsigned(sign_clear), out=keys)
    return keys


def normalize_dim(dim: int, rank: int, field: str = "dim") -> int:
    """Return ``dim`` as a non-negative axis of a rank-``rank`` tensor or raise ValueError."""
    if not -rank <= dim < rank:
        raise InvalidInputError(
            f"{field}={dim} is out of range for a rank-{rank} weight; "
            f"allowed range is [{-rank}, {rank - 1}]"
        )
    return dim % rank


def threshold_prune_mask(weight: NDArray[Any], threshold: float) -> BoolArray:
    """Prune every element with ``|w| <= threshold``, compared exactly (no dtype rounding).

    The threshold is lowered to the largest value of the weight's dtype that is <= threshold,
    then keys are compared as integers. NaN is never pruned.
    """
    if np.isnan(threshold):
        raise InvalidInputError("threshold must not be NaN")
    if threshold < 0:
        return np.zeros(weight.shape, dtype=np.bool_)
    float_type = np.dtype(weight.dtype).type
    with np.errstate(over="ignore"):
        limit = float_type(threshold)
    if float(limit) > threshold:
        limit = np.nextafter(limit, float_type(0))
    limit_key = magnitude_keys(np.asarray(limit, dtype=weight.dtype))
    result: BoolArray = magnitude_keys(weight) <= limit_key
    return result


def magnitude_prune_mask(weight: NDArray[Any], target_sparsity: float) -> BoolArray:
    """Prune exactly ``round(target_sparsity * weight.size)`` smallest-magnitude elements, ties
    by row-major position (the exact selection of :mod:`mil_sparsity.kernels.selection`)."""
    return lowest_k_mask(magnitude_keys(weight), target_count(target_sparsity, weight.size))


def split_at(shape: tuple[int, ...], dim: int) -> tuple[int, int, int]:
    pre = int(np.prod(shape[:dim], dtype=np.int64))
    post = int(np.prod(shape[dim + 1 :], dtype=np.int64))
    return pre, shape[dim], post


def _block_squares(weight: NDArray[Any]) -> NDArray[Any]:
    """Element squares in a dtype whose range holds every square of the weight's dtype.

    fp16 -> float32 (65504**2 and the smallest fp16 subnormal squared are both normal float32)
    and fp32 -> float64 (likewise), so no block score overflows to inf or flushes to zero and
    the order of the scores is the order of the true L2 norms. The temporary is twice the
    weight's size. float64 (not a Core ML weight dtype) is squared in float64, whose range is
    not wider: scores of |w| beyond 1e154 or below 1e-162 overflow or flush to zero.
    """
    wider = np.float32 if weight.dtype == np.float16 else np.float64
    squares: NDArray[Any] = np.square(weight, dtype=wider)
    return squares


def block_score_keys(array: NDArray[Any], block_size: int, axis: int) -> NDArray[np.unsignedinteger[Any]]:
    """Keys of the block scores along ``axis`` (non-negative), shape (pre, blocks, post).

    Blocks of ``block_size`` are cut from the start of ``axis``; a shorter last block is a block
    of its own. Score = sum of squares (see :func:`_block_squares` for the dtype); the keys are
    its magnitude keys (NaN above +inf, as for weights).
    """
    pre, length, post = split_at(array.shape, axis)
    full_blocks, tail = divmod(length, block_size)
    squares = _block_squares(array).reshape(pre, length, post)
    cut = full_blocks * block_size
    scores = squares[:, :cut].reshape(pre, full_blocks, block_size, post).sum(axis=2)
    if tail:
        tail_scores = squares[:, cut:].sum(axis=1, keepdims=True)
        scores = np.concatenate([scores, tail_scores], axis=1)
    del squares
    return magnitude_keys(scores)


def expand_blocks(pruned_blocks: BoolArray, length: int, block_size: int) -> BoolArray:
    """Per-block flags (pre, blocks, post) -> per-element flags (pre, length, post)."""
    repeats = np.full(pruned_blocks.shape[1], block_size, dtype=np.int64)
    tail = length % block_size
    if tail:
        repeats[-1] = tail
    expanded: BoolArray = np.repeat(pruned_blocks, repeats, axis=1)
    return expanded


def check_block_size(block_size: int) -> None:
    if block_size < 1:
        raise InvalidInputError(f"block_size must be >= 1, got {block_size}")


def block_prune_mask(
    weight: NDArray[Any], target_sparsity: float, block_size: int, dim: int
) -> BoolArray:
    """Zero whole blocks of ``block_size`` consecutive elements along ``dim``.

    Blocks are cut from the start of ``dim``; a shorter last block is kept as a block of its
    own. Score = sum of squares (the squared L2 norm, same order as the norm), computed in
    float32 for fp16 weights and float64 for fp32 weights. The
    ``round(target_sparsity * number_of_blocks)`` lowest-scoring blocks are pruned; ties go to
    the lower block in row-major block order; NaN scores are pruned last.
    """
    check_block_size(block_size)
    axis = normalize_dim(dim, weight.ndim)
    pre, length, post = split_at(weight.shape, axis)
    score_keys = block_score_keys(weight, block_size, axis)
    pruned_blocks = lowest_k_mask(score_keys, target_count(target_sparsity, score_keys.size))
    return expand_blocks(pruned_blocks, length, block_size).reshape(weight.shape)


# Up to this group length, n:m ranks come from pairwise compares of whole position slices
# (g*(g-1)/2 vectorised compares); longer groups use one np.partition along the group axis.
_PAIRWISE_MAX_GROUP: Final = 8


def _lowest_n_pairwise(group_weights: NDArray[Any], n: int, out: BoolArray) -> None:
    """Rank every element inside its group by pairwise compares; write rank < n into ``out``.

    Keys are laid out position-major, shape (g, ...), so each compare reads two contiguous
    vectors that span all groups. For positions i < j: ``less = key[j] < key[i]``; i's rank
    gains ``less`` and j's rank (started at j) loses it, so the lower position ranks first on
    ties. The loop runs over the g*(g-1)/2 position pairs, never over groups or elements.
    """
    group_len = group_weights.shape[2]
    # one position-major copy of the weights (always a copy: ascontiguousarray would return a
    # view when the layout already matches, and the keys are then computed in place)
    by_position = magnitude_keys_in_place(np.array(np.moveaxis(group_weights, 2, 0), order="C", copy=True))
    rank = np.empty(by_position.shape, dtype=np.uint8)
    rank[...] = np.arange(group_len, dtype=np.uint8).reshape((group_len,) + (1,) * (rank.ndim - 1))
    less = np.empty(by_position.shape[1:], dtype=np.bool_)
    for i in range(group_len):
        for j in range(i + 1, group_len):
            np.less(by_position[j], by_position[i], out=less)
            rank[i] += less
            rank[j] -= less
    del by_position, less
    np.less(rank, n, out=np.moveaxis(out, 2, 0))


def _lowest_n_partition(group_keys: NDArray[Any], n: int, out: BoolArray) -> None:
    """Select the n smallest along axis 2 with one ``np.partition`` (long groups).

    The partition gives each group's n-th smallest key ``v``; keys below ``v`` are selected,
    then the first ``n - count(< v)`` keys equal to ``v`` (a narrow cumulative count along the
    group axis ranks the ties).
    """
    group_len = group_keys.shape[2]
    kth = np.partition(group_keys, n - 1, axis=2)[:, :, n - 1 : n, :].copy()
    np.less(group_keys, kth, out=out)
    count_dtype = np.uint8 if group_len < 256 else np.uint32
    missing = np.subtract(n, out.sum(axis=2, keepdims=True, dtype=count_dtype), dtype=count_dtype)
    ties = group_keys == kth
    tie_rank = np.cumsum(ties, axis=2, dtype=count_dtype)
    out |= ties & (tie_rank <= missing)


def _select_lowest_n(group_weights: NDArray[Any], n: int, out: BoolArray) -> None:
    """For weights shaped (pre, groups, group_len, post), mark the n smallest magnitudes along
    axis 2 in ``out`` (same shape). Ties go to the lower position in the group."""
    group_len = group_weights.shape[2]
    if n <= 0 or n >= group_len:
        out[...] = n > 0
        return
    if group_len <= _PAIRWISE_MAX_GROUP:
        _lowest_n_pairwise(group_weights, n, out)
    else:
        _lowest_n_partition(magnitude_keys(group_weights), n, out)


def nm_prune_mask(weight: NDArray[Any], n: int, m: int, dim: int) -> BoolArray:
    """n:m pruning: in every group of m consecutive elements along ``dim``, prune the n smallest.

    Groups are cut from the start of ``dim``. A shorter tail group of t < m elements is treated
    as if padded with m - t zeros that count toward the n: it loses ``max(0, n - (m - t))`` of
    its smallest elements. So the padded tensor has exactly n zeros per group of m, which is
    what n:m hardware sees, and the rule matches coremltools' zero padding.
    """
    if not 0 <= n <= m or m < 1:
        raise InvalidInputError(f"n:m must satisfy 0 <= n <= m and m >= 1, got {n}:{m}")
    axis = normalize_dim(dim, weight.ndim)
    pre, length, post = split_at(weight.shape, axis)
    by_dim = weight.reshape(pre, length, post)
    full_groups, tail = divmod(length, m)
    cut = full_groups * m
    pruned = np.empty((pre, length, post), dtype=np.bool_)
    # splitting axis 1 of a slice is always a view, so the selections land in ``pruned``
    _select_lowest_n(
        by_dim[:, :cut].reshape(pre, full_groups, m, post),
        n,
        pruned[:, :cut].reshape(pre, full_groups, m, post),
    )
    if tail:
        _select_lowest_n(
            by_dim[:, cut:].reshape(pre, 1, tail, post),
            n - (m - tail),
            pruned[:, cut:].reshape(pre, 1, tail, post),
        )
    return pruned.reshape(weight.shape)
