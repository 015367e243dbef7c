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

Every result has +0.0 where the sparse form stores zeros (it has no signed zeros).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def positive_zeros(array: np.ndarray) -> np.ndarray:
    """``-0.0`` -> ``+0.0`` (the sparse form has no signed zeros)."""
    out = array.copy()
    out[out == 0] = 0
    return out


def ref_threshold(weight: np.ndarray, threshold: float) -> np.ndarray:
    pruned = np.abs(weight.astype(np.float64)) <= threshold
    return positive_zeros(np.where(pruned, np.zeros_like(weight), weight))


def ref_magnitude(weight: np.ndarray, target_sparsity: float) -> np.ndarray:
    flat = weight.reshape(-1)
    k = round(target_sparsity * flat.size)
    order = np.argsort(np.abs(flat.astype(np.float64)), kind="stable")
    out = flat.copy()
    out[order[:k]] = 0
    return positive_zeros(out.reshape(weight.shape))


def ref_n_m(weight: np.ndarray, n: int, m: int, dim: int) -> np.ndarray:
    moved = np.moveaxis(weight, dim, -1).copy()
    rows = moved.reshape(-1, moved.shape[-1])
    for row in rows:
        for start in range(0, row.size, m):
            group = row[start : start + m]
            count = max(0, n - (m - group.size))
            order = np.argsort(np.abs(group.astype(np.float64)), kind="stable")
            group[order[:count]] = 0
    return positive_zeros(np.moveaxis(rows.reshape(moved.shape), -1, dim))


def ref_block(weight: np.ndarray, target_sparsity: float, block_size: int, dim: int) -> np.ndarray:
    dim = dim % weight.ndim
    pre = int(np.prod(weight.shape[:dim], dtype=np.int64))
    post = int(np.prod(weight.shape[dim + 1 :], dtype=np.int64))
    length = weight.shape[dim]
    out = weight.copy().reshape(pre, length, post)
    starts = list(range(0, length, block_size))
    scores = np.stack(
        [np.square(out[:, s : s + block_size].astype(np.float64)).sum(axis=1) for s in starts], axis=1
    )  # (pre, blocks, post), row-major block order
    k = round(target_sparsity * scores.size)
    for flat_index in np.argsort(scores.reshape(-1), kind="stable")[:k]:
        p, rest = divmod(int(flat_index), scores.shape[1] * post)
        b, q = divmod(rest, post)
        out[p, starts[b] : starts[b] + block_size, q] = 0
    return positive_zeros(out.reshape(weight.shape))


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
    rows: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for index in np.ndindex(*weight.shape):  # row-major: each row's elements in order
        _, row = ref_channel_and_row(index, weight.shape, op, groups, transposed)
        rows.setdefault(row, []).append(index)
    out = weight.copy()
    for members in rows.values():
        k = round(target_sparsity * len(members))
        row_scores = np.array([scores[index] for index in members], dtype=np.float32)
        for position in np.argsort(row_scores, kind="stable")[:k]:
            out[members[position]] = 0
    return positive_zeros(out)


def ref_scored(weight: np.ndarray, scores: np.ndarray, rule: "Callable[[np.ndarray], np.ndarray]") -> np.ndarray:
    """Apply a magnitude rule (``ref_block`` / ``ref_n_m`` with its arguments bound) to the
    scores and zero the weight where it zeroed a score. Scores must be nonzero (or NaN)."""
    if np.any(scores == 0):
        raise ValueError("ref_scored needs nonzero scores (a zero score reads as pruned)")
    pruned = rule(scores) == 0
    return positive_zeros(np.where(pruned, np.zeros_like(weight), weight))
