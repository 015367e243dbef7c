"""Score-based prune masks: the magnitude patterns with an importance score in place of ``|w|``.

Contract for every function here: ``scores`` is a float array of the weight's shape (float32
from :func:`activation_scores`; float16/float64 accepted) with no negative value. NaN is
allowed and ranks above every other score (pruned last), as NaN weights do. Scores are ranked
through the same magnitude keys and the same exact selection as the weights, so with
``scores = |w|`` every mask equals the magnitude kernel's mask.

Activation-weighted scores (Wanda, Sun et al. 2023): ``score = |w| * scale`` where ``scale`` is
the root mean square of the input channel that multiplies ``w`` over calibration data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.kernels.masks import (
    block_prune_mask,
    magnitude_keys,
    nm_prune_mask,
    normalize_dim,
)
from mil_sparsity.kernels.selection import row_lowest_k_mask, target_count

BoolArray = NDArray[np.bool_]


def activation_scores(weight: NDArray[Any], channel_scale: NDArray[Any], input_axis: int) -> NDArray[np.float32]:
    """float32 ``|weight| * scale`` with the scale broadcast along ``input_axis``.

    ``channel_scale`` is either 1-D with ``weight.shape[input_axis]`` entries (one per input
    channel), or already of the weight's rank and broadcastable to its shape (grouped convs,
    whose input channels differ per output group). Scales must be finite and >= 0.
    """
    axis = normalize_dim(input_axis, weight.ndim, "input_axis")
    scale = np.asarray(channel_scale, dtype=np.float32)
    if scale.ndim == 1:
        if scale.shape[0] != weight.shape[axis]:
            raise InvalidInputError(
                f"channel_scale has {scale.shape[0]} entries; the weight's input axis {axis} has "
                f"{weight.shape[axis]} channels (shape {weight.shape})"
            )
        scale = scale.reshape([-1 if i == axis else 1 for i in range(weight.ndim)])
    elif scale.ndim != weight.ndim or np.broadcast_shapes(scale.shape, weight.shape) != weight.shape:
        raise InvalidInputError(
            f"channel_scale of shape {scale.shape} does not broadcast to the weight's shape {weight.shape}"
        )
    if not bool(np.all(np.isfinite(scale))) or bool(np.any(scale < 0)):
        raise InvalidInputError("channel_scale must be finite and >= 0 everywhere")
    magnitudes = np.abs(weight).astype(np.float32, copy=False)
    scores: NDArray[np.float32] = np.multiply(magnitudes, scale, dtype=np.float32)
    return scores


def check_scores(scores: NDArray[Any], field: str = "scores") -> None:
    """Raise TypeError for a non-float array and ValueError for a negative score."""
    if np.dtype(scores.dtype) not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
        raise InvalidTypeError(f"{field} must be float16, float32 or float64, got {scores.dtype}")
    if bool(np.any(scores < 0)):
        raise InvalidInputError(f"{field} must be >= 0 (NaN allowed); found a negative score")


def rows_view(array: NDArray[Any], output_axis: int) -> NDArray[Any]:
    """``array`` with ``output_axis`` moved first and the rest flattened: shape [out, -1].

    A row holds one output channel's elements in the row-major order of the remaining axes;
    that order breaks ties.
    """
    axis = normalize_dim(output_axis, array.ndim, "output_axis")
    moved = np.moveaxis(array, axis, 0)
    return np.ascontiguousarray(moved).reshape(moved.shape[0], -1)


def from_rows(rows: NDArray[Any], shape: tuple[int, ...], output_axis: int) -> NDArray[Any]:
    """Inverse of :func:`rows_view` for a weight of ``shape``."""
    axis = normalize_dim(output_axis, len(shape), "output_axis")
    moved_shape = (shape[axis],) + shape[:axis] + shape[axis + 1 :]
    return np.moveaxis(rows.reshape(moved_shape), 0, axis)


def score_row_prune_mask(scores: NDArray[Any], target_sparsity: float, output_axis: int = 0) -> BoolArray:
    """Prune exactly ``round(target_sparsity * row_length)`` lowest scores in every output row.

    Rows are :func:`rows_view` rows (output channel first; linear and conv weights:
    ``output_axis=0``; conv_transpose weights and a matmul const ``[in, out]``: 1). Ties go
    to the lower position in the row; NaN scores are pruned last.
    """
    check_scores(scores)
    if scores.size == 0:
        return np.zeros(scores.shape, dtype=np.bool_)
    rows = rows_view(scores, output_axis)
    k = target_count(target_sparsity, rows.shape[1])
    mask = row_lowest_k_mask(magnitude_keys(rows), k)
    result: BoolArray = np.ascontiguousarray(from_rows(mask, scores.shape, output_axis))
    return result


def score_block_prune_mask(
    scores: NDArray[Any], target_sparsity: float, block_size: int, dim: int
) -> BoolArray:
    """:func:`block_prune_mask` ranking blocks by the sum of squared scores."""
    check_scores(scores)
    return block_prune_mask(scores, target_sparsity, block_size, dim)


def score_nm_prune_mask(scores: NDArray[Any], n: int, m: int, dim: int) -> BoolArray:
    """:func:`nm_prune_mask` pruning the n lowest scores in every group of m along ``dim``."""
    check_scores(scores)
    return nm_prune_mask(scores, n, m, dim)
