"""Activation-scored pruning (Wanda) as data a handler runs: the scale, the axes, the rows.

Pure numpy, no MIL. The selection (:mod:`mil_sparsity.model.weight_roles`) resolves, from the ops that
read a weight and the calibration statistics, a :class:`ScoreContext`; the handlers turn it into
scores with :func:`mil_sparsity.kernels.activation_scores` and rank them with the score kernels.

Wanda's comparison group is one output row: every element that contributes to one output
index. :class:`RowLayout` says which axes of the weight index a row (the output axis, plus a
matmul const's batch axes; a grouped conv_transpose weight ``[C_in, C_out/g, ...]`` is viewed as
``[g, C_in/g, C_out/g, ...]`` so that a row is one (group, output channel) pair);
:func:`row_prune_mask` moves those axes first, flattens the rest in row-major order (the order
that breaks ties) and prunes exactly ``round(s * row_length)`` lowest scores per row.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Optional, Union

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidTypeError
from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.kernels import score_row_prune_mask

CalibrationLike = Union[ActivationStats, str, "os.PathLike[str]"]


@attrs.frozen
class RowLayout:
    """The weight viewed as ``view_shape``; ``row_axes`` of that view index one output row."""

    view_shape: tuple[int, ...]
    row_axes: tuple[int, ...]


@attrs.frozen
class ScoreContext:
    """What a handler needs beyond the weight and its config, resolved by the selection.

    ``axis``: the block / n:m axis when the config's ``dim`` is None (the reduction axis).
    For activation scoring: ``scale`` (float32, 1-D along ``scale_axis``, or of the weight's rank
    for a grouped conv whose input channels differ per output group), ``rows`` (Wanda's
    comparison rows) and ``scale_digest`` (SHA-256 of the scale's shape and bytes, which stands
    for the scale in comparisons: equal contexts give equal results, so a blob shared by two
    consts is pruned and written once exactly when their statistics agree).

    For a reconstruction method (SparseGPT, ADMM): ``gram`` (float64 ``X^T X`` of the inputs
    along the reduction axis: ``[K, K]``, or ``[groups, K, K]`` for a grouped conv, one per
    group), ``gram_layout`` (how the weight becomes the kernels' ``[out, in]``) and
    ``gram_digest`` (as ``scale_digest``).
    """

    axis: Optional[int] = None
    scale: Optional[NDArray[np.float32]] = attrs.field(default=None, eq=False, repr=False)
    scale_axis: int = 0
    rows: Optional[RowLayout] = None
    scale_digest: str = ""
    gram: Optional[NDArray[np.float64]] = attrs.field(default=None, eq=False, repr=False)
    gram_layout: Optional["GramLayout"] = None
    gram_digest: str = ""


@attrs.frozen
class GramLayout:
    """How a weight becomes the reconstruction kernels' ``[out, in]`` matrices.

    ``transpose``: a 2-D weight stored ``[in, out]`` (a matmul ``y`` const like GPT-2's Conv1D)
    is transposed; otherwise the weight is ``weight.reshape(O, -1)`` (linear ``[O, I]``, a
    matmul const read along its last axis; conv ``[O, I/g, kH, kW]`` in C_in-major order, the
    order of the im2col Gram). ``groups``: the output rows split into this many equal groups,
    group ``k`` reconstructed with ``gram[k]``.
    """

    transpose: bool = False
    groups: int = 1


def to_rows(weight: NDArray[Any], layout: GramLayout) -> NDArray[Any]:
    """The weight as the kernels' ``[out, in]`` (a view where possible)."""
    if layout.transpose:
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def from_rows(rows: NDArray[Any], layout: GramLayout, shape: tuple[int, ...]) -> NDArray[Any]:
    """Inverse of :func:`to_rows`: ``[out, in]`` back to the weight's ``shape``, C-contiguous."""
    restored = rows.T if layout.transpose else rows.reshape(shape)
    result: NDArray[Any] = np.ascontiguousarray(restored)
    return result


def scale_digest(scale: NDArray[Any]) -> str:
    """What :class:`ScoreContext` compares instead of the scale (or Gram) array."""
    digest = hashlib.sha256(repr(scale.shape).encode())
    digest.update(np.ascontiguousarray(scale).tobytes())
    return digest.hexdigest()


def row_prune_mask(scores: NDArray[Any], layout: RowLayout, target_sparsity: float) -> NDArray[np.bool_]:
    """Prune exactly ``round(target_sparsity * row_length)`` lowest scores in every row of
    ``layout`` (ties: lower row-major position; NaN last). Returns a mask of ``scores.shape``."""
    view = scores.reshape(layout.view_shape)
    lead = list(range(len(layout.row_axes)))
    moved = np.moveaxis(view, list(layout.row_axes), lead)
    row_count = math.prod(moved.shape[: len(lead)])
    rows = np.ascontiguousarray(moved).reshape(row_count, -1)
    mask = score_row_prune_mask(rows, target_sparsity, 0)
    restored = np.moveaxis(mask.reshape(moved.shape), lead, list(layout.row_axes))
    result: NDArray[np.bool_] = np.ascontiguousarray(restored).reshape(scores.shape)
    return result


def row_layout(op_type: str, shape: tuple[int, ...], output_axis: int, groups: int) -> RowLayout:
    """The output rows of a weight of ``shape`` read by ``op_type`` (see the module doc)."""
    if op_type == "conv_transpose" and groups > 1:
        return RowLayout((groups, shape[0] // groups) + shape[1:], (0, 2))
    if op_type == "matmul":
        return RowLayout(shape, tuple(range(len(shape) - 2)) + (output_axis,))
    return RowLayout(shape, (output_axis,))


def grouped_conv_scale(scale: NDArray[np.float32], shape: tuple[int, ...], groups: int) -> NDArray[np.float32]:
    """Per-element scale of a grouped conv weight ``[C_out, C_in/g, ...]``: output channel ``o``
    meets input channels ``[k * C_in/g, (k+1) * C_in/g)`` of group ``k = o // (C_out/g)``.
    Shape ``[C_out, C_in/g, 1, ...]`` (broadcasts over the kernel axes)."""
    per_group = scale.reshape(groups, shape[1])
    per_output = np.repeat(per_group, shape[0] // groups, axis=0)
    result: NDArray[np.float32] = per_output.reshape(shape[:2] + (1,) * (len(shape) - 2))
    return result


def load_calibration(value: object, where: str) -> Optional[ActivationStats]:
    """``value`` as ActivationStats: itself, loaded from a path, or None; TypeError otherwise."""
    if value is None or isinstance(value, ActivationStats):
        return value
    if isinstance(value, (str, os.PathLike)):
        return ActivationStats.load(value)
    raise InvalidTypeError(
        f"{where} must be an ActivationStats or the path of a .npz written by "
        f"ActivationStats.save, got {type(value).__name__} {value!r}"
    )
