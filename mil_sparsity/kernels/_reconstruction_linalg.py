"""Dense linear algebra behind :mod:`mil_sparsity.kernels.reconstruction` (numpy only).

* :func:`lower_triangular_inverse`: the inverse of a lower-triangular matrix by recursive 2x2
  blocking, so almost all of the ~n**3/3 flops are matrix products (``np.linalg.inv`` on the
  whole matrix would do a general LU inverse, ~2 n**3).
* :func:`upper_cholesky_of_inverse`: the upper factor ``U`` with ``U.T @ U == inv(h)`` without
  forming ``inv(h)``: with ``J`` the reversal permutation, ``J h J = L L.T`` gives
  ``h = R R.T`` for the upper-triangular ``R = J L J``, hence ``inv(h) = inv(R).T inv(R)`` and
  ``U = inv(R) = J inv(L) J``.
* :func:`spd_inverse`: ``inv(h)`` for a symmetric positive definite ``h`` via its Cholesky factor.
* :func:`masked_least_squares`: for every row ``r`` independently, the minimiser of
  ``(x - x0) h (x - x0).T`` over the row vectors ``x`` that are zero outside ``keep[r]``, by
  conjugate gradients run on all rows at once (one ``[rows, n] @ [n, n]`` product a step).

Everything here is float64 on ``[n, n]`` matrices, the caller's working dtype on ``[rows, n]``.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError

F64 = NDArray[np.float64]
Floats = NDArray[np.floating[Any]]

# below this size the triangular inverse is one LAPACK call
_TRIANGULAR_LEAF: Final = 128
# the CG residual is recomputed from scratch every this many steps (float32 drift)
_CG_RESTART: Final = 25


def lower_triangular_inverse(lower: F64) -> F64:
    """``inv(lower)`` for a lower-triangular ``lower`` with a nonzero diagonal."""
    size = lower.shape[0]
    if size <= _TRIANGULAR_LEAF:
        leaf: F64 = np.tril(np.linalg.inv(lower))
        return leaf
    half = size // 2
    top = lower_triangular_inverse(lower[:half, :half])
    bottom = lower_triangular_inverse(lower[half:, half:])
    out = np.zeros_like(lower)
    out[:half, :half] = top
    out[half:, half:] = bottom
    # [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]
    out[half:, :half] = -((bottom @ lower[half:, :half]) @ top)
    return out


def _cholesky(h: F64, what: str) -> F64:
    try:
        factor = np.asarray(np.linalg.cholesky(h), dtype=np.float64)
    except np.linalg.LinAlgError:
        raise InvalidInputError(
            f"gram is not positive definite after dampening ({what}); a Gram matrix X^T X is "
            "positive semi-definite, and damp > 0 makes it definite"
        ) from None
    return factor


def upper_cholesky_of_inverse(h: F64, dtype: type[np.floating[Any]] = np.float64) -> Floats:
    """Upper-triangular ``U`` with ``U.T @ U == inv(h)`` for a symmetric positive definite ``h``,
    computed in float64 and returned C-contiguous in ``dtype`` (one copy, no float64 one)."""
    lower = _cholesky(h[::-1, ::-1], "Cholesky of the reversed matrix")
    inverse = lower_triangular_inverse(lower)
    del lower
    upper: Floats = np.ascontiguousarray(inverse[::-1, ::-1], dtype=dtype)
    return upper


def spd_inverse(h: F64) -> F64:
    """``inv(h)`` for a symmetric positive definite ``h`` (exactly symmetric result)."""
    inverse_factor = lower_triangular_inverse(_cholesky(h, "Cholesky"))
    inverse: F64 = inverse_factor.T @ inverse_factor
    return inverse


def masked_least_squares(
    h: Floats,
    target: Floats,
    keep: NDArray[np.bool_],
    start: Floats,
    *,
    tolerance: float,
    max_steps: int,
) -> tuple[Floats, int]:
    """Solve ``(x @ h)[keep] == target[keep]`` with ``x == 0`` outside ``keep``, row by row.

    ``h`` [n, n] is symmetric positive definite, ``target``, ``keep`` and ``start`` are
    [rows, n]; ``target = x0 @ h`` makes the solution the minimiser of
    ``(x - x0) h (x - x0).T`` on each row's kept support. Conjugate gradients on all rows at
    once, started from ``start`` (masked), each row with its own step lengths; it stops when
    every row's residual norm is at most ``tolerance`` times the norm of its masked target
    (exact zero rows count as converged) or after ``max_steps`` steps. Returns the solution
    (dtype of ``target``) and the number of steps taken.
    """
    dtype = target.dtype
    x = np.where(keep, start, 0).astype(dtype, copy=False)
    goal = np.sqrt(np.einsum("ij,ij->i", np.where(keep, target, 0), target, dtype=np.float64))
    goal *= tolerance
    residual = np.where(keep, target - x @ h, 0).astype(dtype, copy=False)
    direction = residual.copy()
    squared = np.einsum("ij,ij->i", residual, residual, dtype=np.float64)
    steps = 0
    while steps < max_steps and bool(np.any(np.sqrt(squared) > goal)):
        product = direction @ h
        product *= keep
        curvature = np.einsum("ij,ij->i", direction, product, dtype=np.float64)
        alpha = np.divide(squared, curvature, out=np.zeros_like(squared), where=curvature > 0)
        step = alpha.astype(dtype)[:, None]
        x += step * direction
        steps += 1
        restart = steps % _CG_RESTART == 0
        if restart:  # a fresh residual and steepest descent direction (float32 drift)
            residual = np.where(keep, target - x @ h, 0).astype(dtype, copy=False)
        else:
            residual -= step * product
        new_squared = np.einsum("ij,ij->i", residual, residual, dtype=np.float64)
        if restart:
            direction = residual.copy()
        else:
            beta = np.divide(new_squared, squared, out=np.zeros_like(squared), where=squared > 0)
            direction *= beta.astype(dtype)[:, None]
            direction += residual
        squared = new_squared
    return x, steps
