"""Weight reconstruction: a prune mask plus new values for the kept weights (numpy only).

Both kernels take a linear weight ``W`` [rows=out, cols=in] and the Gram matrix
``H = X^T X`` [cols, cols] of the layer's calibration inputs ``X`` [samples, cols] (accumulated
by the caller, float64 preferred), and return a :class:`Reconstruction` whose values aim to
minimise the layer's output error ``||X W^T - X W'^T||_F`` under the sparsity pattern:

* :func:`sparsegpt` (Frantar & Alistarh, 2023): optimal-brain-surgeon updates column by
  column, in blocks of ``block_size`` columns, with the upper Cholesky factor ``U`` of
  ``inv(H + damp * mean(diag H) * I)``. Score of a weight: ``w**2 / U[j, j]**2`` (the OBS
  error of zeroing it given the columns still to come). Unstructured: the mask of a block is
  chosen when the block starts; n:m: a group's mask when the sweep reaches its first column.
* :func:`admm` (Boza, 2024): ADMM in the activation-normalised space (columns scaled by
  ``sqrt(diag H)``, so the normalised Gram matrix has a unit diagonal), alternating the
  projection onto the sparsity pattern (sparsity ramped up with a cubic schedule over the first
  ``ramp_iterations``) with the closed-form least-squares update; it ends with an exact
  least-squares solve on the final mask (conjugate gradients, :mod:`._reconstruction_linalg`).

Conventions shared by both:

* Conv weights: the caller reshapes ``[O, I/groups, kH, kW]`` to ``[O, I/groups*kH*kW]`` in
  C_in-major order (``weight.reshape(O, -1)``), matching an ``X^T X`` of im2col patches laid
  out the same way (channel, then kernel row, then kernel column); each group is a separate call.
* Dead input channels (``H[j, j] == 0``: the input never fires on the calibration data) get
  ``H[j, j] = 1`` and ``W[:, j] = 0`` before anything else, as the SparseGPT authors' code does:
  their weights cannot change the calibration output, so they are the first to be pruned.
* Patterns (``True`` in :attr:`Reconstruction.mask` = kept): unstructured prunes exactly
  ``round(target_sparsity * W.size)`` elements (round half to even). n:m prunes n of every m
  consecutive columns in each row, groups cut from column 0; a tail group of ``t < m`` columns
  counts as padded with ``m - t`` zeros that count toward the n, so it loses
  ``max(0, n - (m - t))`` elements (the rule of :func:`~mil_sparsity.kernels.masks.nm_prune_mask`).
  Ties between equal scores go to the lower position (row-major).
* Values: computed in float32 (float64 for float64 weights) with float64 factorisations, then
  clipped to the dtype's finite range and cast to the weight's dtype. Pruned elements are +0.0.
  A kept value that rounds to 0.0 or -0.0 becomes the dtype's smallest subnormal with the sign
  of the value before the cast (positive if it was exactly zero), so the mask's count holds.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.kernels._reconstruction_linalg import (
    masked_least_squares,
    spd_inverse,
    upper_cholesky_of_inverse,
)
from mil_sparsity.kernels.masks import magnitude_keys, nm_prune_mask
from mil_sparsity.kernels.selection import lowest_k_mask, target_count

BoolArray = NDArray[np.bool_]
Floats = NDArray[np.floating[Any]]

_WEIGHT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@attrs.frozen(eq=False)
class Reconstruction:
    """A pruned weight: ``mask`` (bool, True = kept) and ``values`` (the full new dense weight
    in the input weight's dtype: +0.0 exactly where ``mask`` is False, nonzero where True)."""

    mask: BoolArray
    values: Floats


@attrs.frozen
class _Pattern:
    """Exactly one of ``sparsity`` (unstructured) or ``n``/``m`` (prune n of every m)."""

    sparsity: float | None
    n: int
    m: int

    @property
    def is_nm(self) -> bool:
        return self.sparsity is None


# ---- validation -----------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _pattern(target_sparsity: float | None, n: int | None, m: int | None) -> _Pattern:
    if target_sparsity is None and n is None and m is None:
        raise InvalidInputError("give target_sparsity or n and m, got neither")
    if target_sparsity is not None:
        if n is not None or m is not None:
            raise InvalidInputError(
                f"give target_sparsity or n and m, not both: target_sparsity={target_sparsity!r}, n={n!r}, m={m!r}"
            )
        if not isinstance(target_sparsity, (int, float)) or not 0.0 <= float(target_sparsity) <= 1.0:
            raise InvalidInputError(f"target_sparsity={target_sparsity!r} is out of range; allowed range is [0, 1]")
        return _Pattern(float(target_sparsity), 0, 1)
    if not _is_int(n) or not _is_int(m):
        raise InvalidInputError(f"n and m must both be ints, got n={n!r}, m={m!r}")
    assert n is not None and m is not None
    if m < 1:
        raise InvalidInputError(f"m={m} is out of range; allowed range is m >= 1")
    if not 0 <= n <= m:
        raise InvalidInputError(f"n={n} is out of range for m={m}; allowed range is [0, {m}]")
    return _Pattern(None, int(n), int(m))


def _at_least(name: str, value: float, minimum: float, *, strict: bool = False) -> None:
    bad = not math.isfinite(value) or (value <= minimum if strict else value < minimum)
    if bad:
        relation = ">" if strict else ">="
        raise InvalidInputError(f"{name}={value!r} is out of range; allowed range is {name} {relation} {minimum}")


def _check_inputs(weight: NDArray[Any], gram: NDArray[Any]) -> None:
    if not isinstance(weight, np.ndarray) or not isinstance(gram, np.ndarray):
        raise InvalidTypeError(
            f"weight and gram must be numpy arrays, got {type(weight).__name__} and {type(gram).__name__}"
        )
    if weight.dtype not in _WEIGHT_DTYPES:
        raise InvalidTypeError(f"weight dtype must be float16, float32 or float64, got {weight.dtype}")
    if weight.ndim != 2:
        raise InvalidInputError(
            f"weight must have rank 2 [out, in] (reshape conv weights to [O, I/groups*kH*kW]), got shape {weight.shape}"
        )
    cols = weight.shape[1]
    if gram.shape != (cols, cols):
        raise InvalidInputError(
            f"gram shape {gram.shape} does not match weight shape {weight.shape}; allowed shape is ({cols}, {cols})"
        )
    if not np.issubdtype(gram.dtype, np.floating):
        raise InvalidTypeError(f"gram must be a float array, got {gram.dtype}")
    if not bool(np.all(np.isfinite(gram))):
        raise InvalidInputError("gram has non-finite entries (inf or NaN); allowed: finite values")
    if not bool(np.all(np.isfinite(weight))):
        raise InvalidInputError("weight has non-finite entries (inf or NaN); allowed: finite values")
    if bool(np.any(np.diagonal(gram) < 0)):
        raise InvalidInputError(
            f"gram has a negative diagonal entry (min {float(np.diagonal(gram).min())!r}); "
            "allowed range of diag(X^T X) is [0, inf)"
        )


# ---- shared steps ---------------------------------------------------------------------------


def _working_copies(weight: NDArray[Any], gram: NDArray[Any]) -> tuple[Floats, NDArray[np.float64]]:
    """float32 (float64) weight and float64 Gram copies with dead channels handled."""
    work = np.float64 if weight.dtype == np.float64 else np.float32
    w: Floats = np.array(weight, dtype=work, order="C", copy=True)
    h = np.array(gram, dtype=np.float64, order="C", copy=True)
    diagonal = np.diagonal(h).copy()
    dead = diagonal == 0
    if bool(dead.any()):
        index = np.flatnonzero(dead)
        h[index, index] = 1.0
        w[:, dead] = 0
    return w, h


def _add_to_diagonal(h: NDArray[np.float64], amount: float) -> None:
    np.fill_diagonal(h, np.diagonal(h) + amount)


def _finish(values: Floats, keep: BoolArray, dtype: np.dtype[Any]) -> Reconstruction:
    """Cast to ``dtype`` (clipped to its finite range), +0.0 where pruned, kept zeros nudged."""
    limit = float(np.finfo(dtype).max)
    out = np.clip(values, -limit, limit).astype(dtype)
    out[~keep] = 0
    lost = keep & (out == 0)
    if bool(lost.any()):
        tiny = np.finfo(dtype).smallest_subnormal
        out[lost] = np.where(values[lost] < 0, -tiny, tiny).astype(dtype)
    return Reconstruction(mask=keep, values=out)


def _empty(weight: NDArray[Any]) -> Reconstruction | None:
    if weight.size:
        return None
    return Reconstruction(np.ones(weight.shape, dtype=np.bool_), np.zeros(weight.shape, dtype=weight.dtype))


# ---- SparseGPT ------------------------------------------------------------------------------


def block_prune_counts(target: int, rows: int, block_ends: list[int], cols: int) -> list[int]:
    """How many elements each column block prunes so that they sum to exactly ``target``.

    Block b (columns up to ``block_ends[b]``) prunes ``floor(target * E_b / N) -
    floor(target * E_{b-1} / N)`` with ``E_b = rows * block_ends[b]`` and ``N = rows * cols``:
    its share of the target, rounded down cumulatively, so every block is within one of its
    exact share, never above its size, and the counts telescope to ``target``.
    """
    total = rows * cols
    marks = [0] + [target * rows * end // total for end in block_ends]
    return [after - before for before, after in zip(marks, marks[1:])]


def _lowest_scores(scores: Floats, count: int) -> BoolArray:
    return lowest_k_mask(magnitude_keys(scores), count)


def sparsegpt(
    weight: NDArray[Any],
    gram: NDArray[Any],
    *,
    target_sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    damp: float = 0.01,
    block_size: int = 128,
) -> Reconstruction:
    """SparseGPT: prune ``weight`` [out, in] and update the kept weights with OBS steps.

    Give ``target_sparsity`` (unstructured, exactly ``round(s * size)`` pruned) or ``n`` and
    ``m`` (n pruned in every m consecutive input columns). ``gram`` is ``X^T X`` [in, in];
    ``damp`` times its mean diagonal is added to the diagonal. Columns are swept in blocks of
    ``block_size``; for n:m the block is rounded down to a multiple of m (at least m) so no
    group straddles two blocks. Unstructured exact count: block b prunes
    :func:`block_prune_counts` elements (its share, rounded down cumulatively), the lowest
    ``w**2 / U[j, j]**2`` scores of the block when the sweep reaches it (ties: row-major).
    Memory: the float32 weight plus a few float64 [in, in] matrices.
    """
    _check_inputs(weight, gram)
    pattern = _pattern(target_sparsity, n, m)
    _at_least("damp", damp, 0.0)
    if not _is_int(block_size) or block_size < 1:
        raise InvalidInputError(f"block_size={block_size!r} is out of range; allowed range is block_size >= 1")
    empty = _empty(weight)
    if empty is not None:
        return empty
    w, h = _working_copies(weight, gram)
    rows, cols = w.shape
    _add_to_diagonal(h, damp * float(np.mean(np.diagonal(h))))
    factor = upper_cholesky_of_inverse(h, w.dtype.type)
    del h
    width = max(pattern.m, block_size // pattern.m * pattern.m) if pattern.is_nm else block_size
    starts = list(range(0, cols, width))
    ends = [min(start + width, cols) for start in starts]
    counts = (
        block_prune_counts(target_count(pattern.sparsity, w.size), rows, ends, cols)
        if pattern.sparsity is not None
        else [0] * len(starts)
    )
    pruned = np.zeros(w.shape, dtype=np.bool_)
    for start, end, count in zip(starts, ends, counts):
        _sparsegpt_block(w, factor, pruned, start, end, count, pattern)
    return _finish(w, ~pruned, weight.dtype)


def _sparsegpt_block(
    w: Floats, factor: Floats, pruned: BoolArray, start: int, end: int, count: int, pattern: _Pattern
) -> None:
    """Sweep columns [start, end): choose their mask, zero them with OBS updates of the columns
    to their right inside the block (at once) and beyond it (one product at the end)."""
    block = w[:, start:end].copy()
    local = factor[start:end, start:end]
    diagonal = np.diagonal(local).copy()
    block_pruned = pruned[:, start:end]
    if not pattern.is_nm:
        block_pruned[...] = _lowest_scores(np.square(block / diagonal), count)
    errors = np.zeros_like(block)
    for i in range(end - start):
        if pattern.is_nm and (start + i) % pattern.m == 0:
            stop = min(i + pattern.m, end - start)
            scores = np.square(block[:, i:stop] / diagonal[i:stop])
            block_pruned[:, i:stop] = nm_prune_mask(scores, pattern.n, pattern.m, 1)
        column_pruned = block_pruned[:, i]
        if not bool(column_pruned.any()):
            continue
        error = np.where(column_pruned, block[:, i], 0) / diagonal[i]
        block[:, i:] -= np.outer(error, local[i, i:])
        block[column_pruned, i] = 0
        errors[:, i] = error
    w[:, start:end] = block
    if end < w.shape[1]:
        w[:, end:] -= errors @ factor[start:end, end:]


# ---- ADMM -----------------------------------------------------------------------------------


def ramp_fraction(iteration: int, ramp_iterations: int) -> float:
    """Share of the final pruned count at ``iteration`` (0-based): ``1 - (1 - (t+1)/T)**3``
    for t < T = ramp_iterations, then 1 (the cubic schedule of gradual pruning)."""
    if iteration >= ramp_iterations - 1:
        return 1.0
    return 1.0 - (1.0 - (iteration + 1) / ramp_iterations) ** 3


def _admm_pruned(magnitudes: Floats, pattern: _Pattern, final_count: int, fraction: float) -> BoolArray:
    """The ``round(fraction * final_count)`` lowest magnitudes; for n:m only among the
    candidates (each group's n lowest), so at fraction 1 the pattern is exactly n:m."""
    count = final_count if fraction >= 1.0 else round(fraction * final_count)
    keys = magnitude_keys(magnitudes)
    if pattern.is_nm:
        candidates = nm_prune_mask(magnitudes, pattern.n, pattern.m, 1)
        keys[~candidates] = np.iinfo(keys.dtype).max
    return lowest_k_mask(keys, count)


def _final_count(weight_shape: tuple[int, ...], pattern: _Pattern) -> int:
    rows, cols = weight_shape
    if pattern.sparsity is not None:
        return target_count(pattern.sparsity, rows * cols)
    full, tail = divmod(cols, pattern.m)
    return rows * (full * pattern.n + max(0, pattern.n - (pattern.m - tail)) * (tail > 0))


def admm(
    weight: NDArray[Any],
    gram: NDArray[Any],
    *,
    target_sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    iterations: int = 20,
    ramp_iterations: int = 15,
    damp: float = 0.1,
    rho: float = 1.0,
    tolerance: float = 1e-5,
    max_solve_steps: int = 300,
) -> Reconstruction:
    """ADMM pruning: choose the mask and the least-squares values of the kept weights.

    Pattern arguments as for :func:`sparsegpt`. Works on ``Wn = W * s`` and
    ``Hn = H / (s s^T) + damp * I`` with ``s = sqrt(diag H)`` (``damp`` is relative to the mean
    diagonal, which is 1 there), i.e. minimises ``||X (W - W')^T||^2 + damp * sum_j H_jj
    ||W[:, j] - W'[:, j]||^2``. Each of the ``iterations``: choose the pruned set as the lowest
    ``|Wn + U|`` (global for unstructured; for n:m among each group's n lowest), ramped up over
    the first ``ramp_iterations`` (:func:`ramp_fraction`) and fixed after; ``Z = (Wn + U)`` on
    the mask, ``U += Wn - Z``, ``Wn = (Wn0 Hn + rho (Z - U)) inv(Hn + rho I)``. Finally the
    kept values are the exact minimiser on the final mask: conjugate gradients from ``Z`` until
    each row's residual is below ``tolerance`` times its target (at most ``max_solve_steps``).
    """
    _check_inputs(weight, gram)
    pattern = _pattern(target_sparsity, n, m)
    _at_least("damp", damp, 0.0)
    _at_least("rho", rho, 0.0, strict=True)
    _at_least("tolerance", tolerance, 0.0, strict=True)
    for name, value, low in (("iterations", iterations, 1), ("max_solve_steps", max_solve_steps, 0)):
        if not _is_int(value) or value < low:
            raise InvalidInputError(f"{name}={value!r} is out of range; allowed range is {name} >= {low}")
    if not _is_int(ramp_iterations) or not 1 <= ramp_iterations <= iterations:
        raise InvalidInputError(
            f"ramp_iterations={ramp_iterations!r} is out of range; allowed range is [1, iterations={iterations}]"
        )
    empty = _empty(weight)
    if empty is not None:
        return empty
    w, h = _working_copies(weight, gram)
    scale = np.sqrt(np.diagonal(h)).copy()
    h /= scale[:, None]
    h /= scale[None, :]
    _add_to_diagonal(h, damp)
    normalised = h.astype(w.dtype)
    h_rho = h
    _add_to_diagonal(h_rho, rho)
    update = spd_inverse(h_rho).astype(w.dtype)
    del h, h_rho
    w *= scale.astype(w.dtype)
    target = w @ normalised
    final_count = _final_count(w.shape, pattern)
    dual = np.zeros_like(w)
    current = w
    pruned = np.zeros(w.shape, dtype=np.bool_)
    for iteration in range(iterations):
        shifted = current + dual
        if iteration < ramp_iterations:
            pruned = _admm_pruned(np.abs(shifted), pattern, final_count, ramp_fraction(iteration, ramp_iterations))
        shifted[pruned] = 0  # now Z
        dual += current
        dual -= shifted
        shifted -= dual
        shifted *= rho
        shifted += target
        current = shifted @ update
    keep = ~pruned
    start = np.where(keep, current + dual, 0)
    solved, _ = masked_least_squares(normalised, target, keep, start, tolerance=tolerance, max_steps=max_solve_steps)
    solved /= scale.astype(w.dtype)
    return _finish(solved, keep, weight.dtype)
