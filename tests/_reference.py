"""The one reference implementation of the pruning rules, for every test.

Slow and obvious on purpose (loops and sorts, small arrays only) and independent of the
library's vectorised kernels, whose documented rules it restates:

* threshold: zero every element with |w| <= threshold, compared in float64 (NaN is kept);
* magnitude: zero the round(s * N) smallest |w| (float64); equal magnitudes: lower flat index
  first; NaN last;
* n:m: in every group of m consecutive elements along ``dim`` zero the n smallest |w| (ties:
  lower index first); a tail group of t < m elements counts as padded with m - t zeros that
  count toward the n, so it loses max(0, n - (m - t)) elements;
* block: blocks of ``block_size`` consecutive elements along ``dim``, cut from the start; a
  shorter last block is a block of its own. Score = sum of squares in float64; the
  round(s * blocks) lowest scores are zeroed; ties: lower block in row-major block order
  (before dim, block, after dim); NaN scores last.

* Wanda (activation scoring): score = |w| * scale[c] in float32, where c is the activation
  channel the element multiplies (:func:`ref_channel_and_row` spells it out per op); in every
  output row (the elements that add into one output index) zero the round(s * row_length)
  lowest scores (ties: lower position in the row, elements in row-major order; NaN last).
  Block and n:m on scores: the block / n:m rules above, ranking scores instead of |w|.

Each rule is a mask function over ranking keys (``ref_lowest_k``, ``ref_n_m_mask``,
``ref_block_mask``, ``ref_row_mask``: the kernels' tests check the kernels' masks with them)
and a function on weights that zeroes what the mask prunes (``ref_magnitude``, ``ref_n_m``,
``ref_block``, ``ref_wanda``: the passes' tests). Every result on weights has +0.0 where the
sparse form stores zeros (it has no signed zeros).
"""

from __future__ import annotations

import math
from typing import Callable, Hashable

import numpy as np


def positive_zeros(array: np.ndarray) -> np.ndarray:
    """``-0.0`` -> ``+0.0`` (the sparse form has no signed zeros)."""
    out = array.copy()
    out[out == 0] = 0
    return out


def ref_threshold(weight: np.ndarray, threshold: float) -> np.ndarray:
    pruned = np.abs(weight.astype(np.float64)) <= threshold
    return positive_zeros(np.where(pruned, np.zeros_like(weight), weight))


def _abs64(array: np.ndarray) -> np.ndarray:
    """|array| in float64, exactly (a signaling NaN may warn on the cast: silenced)."""
    with np.errstate(invalid="ignore"):
        return np.abs(array.astype(np.float64))


def _zeroed(weight: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    return positive_zeros(np.where(pruned, np.zeros_like(weight), weight))


# ---- the rules as masks (True: pruned) over ranking keys: the smaller key is pruned first ------
# The magnitude rules rank |w| in float64; the kernels' tests pass the kernels' own key (the bit
# pattern without the sign bit, which also orders NaN payloads).


def ref_lowest_k(keys: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` smallest keys; ties: lower flat (row-major) index first."""
    order = np.argsort(keys.ravel(), kind="stable")
    out = np.zeros(keys.size, dtype=bool)
    out[order[:k]] = True
    return out.reshape(keys.shape)


def ref_n_m_mask(keys: np.ndarray, n: int, m: int, dim: int) -> np.ndarray:
    """In every group of m consecutive keys along ``dim``, the n smallest (a tail group of t < m
    keys: max(0, n - (m - t)))."""
    moved = np.moveaxis(keys, dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = np.zeros(rows.shape, dtype=bool)
    for row, pruned in zip(rows, out):
        for start in range(0, row.size, m):
            group = row[start : start + m]
            count = max(0, n - (m - group.size))
            pruned[start + np.argsort(group, kind="stable")[:count]] = True
    return np.moveaxis(out.reshape(moved.shape), -1, dim)


def _split_at(shape: tuple[int, ...], dim: int) -> tuple[int, int, int]:
    """(elements before ``dim``, length of ``dim``, elements after it): a row-major reshape."""
    dim = dim % len(shape)
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :])


def ref_block_scores(weight: np.ndarray, block_size: int, dim: int) -> np.ndarray:
    """Sum of squares (float64, added in element order) of each block along ``dim``: shape
    (before dim, blocks, after dim), i.e. row-major block order."""
    pre, length, post = _split_at(weight.shape, dim)
    with np.errstate(over="ignore", invalid="ignore"):
        squares = np.square(weight.astype(np.float64)).reshape(pre, length, post)
        scores = np.zeros((pre, -(-length // block_size), post))
        for i in range(length):
            scores[:, i // block_size] += squares[:, i]
    return scores


def ref_block_mask(weight: np.ndarray, target_sparsity: float, block_size: int, dim: int) -> np.ndarray:
    """The elements of the round(s * blocks) blocks of lowest score (NaN last; ties: lower
    block in row-major block order)."""
    scores = ref_block_scores(weight, block_size, dim)
    pruned_blocks = ref_lowest_k(scores, round(target_sparsity * scores.size))
    pre, length, post = _split_at(weight.shape, dim)
    out = np.zeros((pre, length, post), dtype=bool)
    for i in range(length):
        out[:, i] = pruned_blocks[:, i // block_size]
    return out.reshape(weight.shape)


def ref_row_mask(
    keys: np.ndarray, target_sparsity: float, row_of: Callable[[tuple[int, ...]], Hashable]
) -> np.ndarray:
    """In every row (the elements ``row_of`` maps to one id), the round(s * row_length) smallest
    keys; ties: lower position in the row, elements in row-major order."""
    rows: dict[Hashable, list[tuple[int, ...]]] = {}
    for index in np.ndindex(*keys.shape):  # row-major: each row's elements in order
        rows.setdefault(row_of(index), []).append(index)
    out = np.zeros(keys.shape, dtype=bool)
    for members in rows.values():
        k = round(target_sparsity * len(members))
        row_keys = np.array([keys[index] for index in members], dtype=keys.dtype)
        for position in np.argsort(row_keys, kind="stable")[:k]:
            out[members[position]] = True
    return out


# ---- the rules on weights: the pruned elements zeroed ------------------------------------------


def ref_magnitude(weight: np.ndarray, target_sparsity: float) -> np.ndarray:
    return _zeroed(weight, ref_lowest_k(_abs64(weight), round(target_sparsity * weight.size)))


def ref_n_m(weight: np.ndarray, n: int, m: int, dim: int) -> np.ndarray:
    return _zeroed(weight, ref_n_m_mask(_abs64(weight), n, m, dim))


def ref_block(weight: np.ndarray, target_sparsity: float, block_size: int, dim: int) -> np.ndarray:
    return _zeroed(weight, ref_block_mask(weight, target_sparsity, block_size, dim))


def ref_channel_and_row(
    index: tuple[int, ...], shape: tuple[int, ...], op: str, groups: int = 1, transposed: bool = False
) -> tuple[int, tuple[int, ...]]:
    """(activation channel, output row id) of the weight element at ``index``.

    ``op``: "linear" ([O, I]), "conv" ([O, I/g, k...]), "conv_transpose" ([I, O/g, k...]),
    "matmul_y" (const y [..., K, N]; ``transposed``: [..., N, K]) or "matmul_x" (const x
    [..., M, K]; ``transposed``: [..., K, M]). Leading axes of a matmul const are batch axes.
    """
    if op == "linear":
        return index[1], (index[0],)
    if op == "conv":
        out_per_group, in_per_group = shape[0] // groups, shape[1]
        return (index[0] // out_per_group) * in_per_group + index[1], (index[0],)
    if op == "conv_transpose":
        in_per_group = shape[0] // groups
        return index[0], (index[0] // in_per_group, index[1])
    batch = index[:-2]
    if op == "matmul_y":
        return (index[-1], batch + (index[-2],)) if transposed else (index[-2], batch + (index[-1],))
    if op == "matmul_x":
        return (index[-2], batch + (index[-1],)) if transposed else (index[-1], batch + (index[-2],))
    raise ValueError(f"unknown op {op!r}")


def ref_wanda_scores(
    weight: np.ndarray, scale: np.ndarray, op: str, groups: int = 1, transposed: bool = False
) -> np.ndarray:
    """float32 |w| * scale[channel], element by element."""
    scores = np.empty(weight.shape, dtype=np.float32)
    for index in np.ndindex(*weight.shape):
        channel, _ = ref_channel_and_row(index, weight.shape, op, groups, transposed)
        scores[index] = np.float32(abs(np.float32(weight[index]))) * np.float32(scale[channel])
    return scores


def ref_wanda(
    weight: np.ndarray,
    scale: np.ndarray,
    target_sparsity: float,
    op: str,
    groups: int = 1,
    transposed: bool = False,
) -> np.ndarray:
    """Wanda's unstructured rule (see the module doc): per output row, the lowest scores."""
    scores = ref_wanda_scores(weight, scale, op, groups, transposed)

    def row_of(index: tuple[int, ...]) -> Hashable:
        return ref_channel_and_row(index, weight.shape, op, groups, transposed)[1]

    return _zeroed(weight, ref_row_mask(scores, target_sparsity, row_of))


def ref_scored(weight: np.ndarray, scores: np.ndarray, rule: "Callable[[np.ndarray], np.ndarray]") -> np.ndarray:
    """Apply a magnitude rule (``ref_block`` / ``ref_n_m`` with its arguments bound) to the
    scores and zero the weight where it zeroed a score. Scores must be nonzero (or NaN)."""
    if np.any(scores == 0):
        raise ValueError("ref_scored needs nonzero scores (a zero score reads as pruned)")
    pruned = rule(scores) == 0
    return positive_zeros(np.where(pruned, np.zeros_like(weight), weight))
