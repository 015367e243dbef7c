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

Every result has +0.0 where the sparse form stores zeros (it has no signed zeros).
"""

from __future__ import annotations

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
