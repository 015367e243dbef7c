"""Shape and data-movement kernels: reshape, transpose, slicing, gather/scatter, concat/split,
padding, tiling, fills and ranges, sorting and selection."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mil_sparsity.reference._registry import (
    Args,
    array,
    axes_of,
    flag,
    floating,
    integer,
    integers,
    kernel,
    optional_array,
    text,
)


@kernel("identity")
def _identity(args: Args) -> np.ndarray:
    return array(args, "x")


@kernel("reshape")
def _reshape(args: Args) -> np.ndarray:
    """``-1`` is inferred; a ``0`` takes the input's size on the axis at the same place counted
    from the right, or 1 where the input has no such axis (iOS17's rule; iOS15/16 allow ``0``
    only when the ranks match, where both rules agree)."""
    x = array(args, "x")
    shape = integers(args, "shape")
    offset = x.ndim - len(shape)  # shape[i] sits over x.shape[i + offset]
    shape = [
        (x.shape[i + offset] if i + offset >= 0 else 1) if size == 0 else size
        for i, size in enumerate(shape)
    ]
    return x.reshape(shape)


@kernel("reshape_like")
def _reshape_like(args: Args) -> np.ndarray:
    """x reshaped to the concatenation of ``ref_tensors[i].shape[begin_i:end_i]`` (end_mask_i:
    to the end)."""
    x = array(args, "x")
    begins = integers(args, "begins")
    ends = integers(args, "ends")
    end_masks = [bool(m) for m in np.asarray(args["end_masks"]).reshape(-1)]
    shape: list[int] = []
    for ref, begin, end, end_mask in zip(args["ref_tensors"], begins, ends, end_masks):
        ref_shape = np.shape(ref)
        shape.extend(ref_shape[begin:] if end_mask else ref_shape[begin:end])
    return x.reshape(shape)


@kernel("transpose")
def _transpose(args: Args) -> np.ndarray:
    return np.transpose(array(args, "x"), integers(args, "perm"))


@kernel("expand_dims")
def _expand_dims(args: Args) -> np.ndarray:
    x = array(args, "x")
    rank = x.ndim + len(integers(args, "axes"))
    axes = sorted(a % rank for a in integers(args, "axes"))
    return np.expand_dims(x, tuple(axes))


@kernel("squeeze")
def _squeeze(args: Args) -> np.ndarray:
    x = array(args, "x")
    axes = axes_of(args, "axes", x.ndim)
    if axes is None:
        axes = tuple(i for i, size in enumerate(x.shape) if size == 1)
    return np.squeeze(x, axis=axes)


@kernel("flatten2d")
def _flatten2d(args: Args) -> np.ndarray:
    x = array(args, "x")
    axis = integer(args, "axis", 1)  # in [-rank, rank]; a negative axis counts from rank
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _slices(args: Args, shape: tuple[int, ...]) -> tuple[tuple[Any, ...], list[int]]:
    rank = len(shape)
    begin = integers(args, "begin")
    end = integers(args, "end")
    stride = integers(args, "stride", [1] * rank)

    def mask(name: str) -> list[bool]:
        value = args.get(name)
        if value is None:
            return [False] * rank
        return [bool(m) for m in np.asarray(value).reshape(-1)]

    begin_mask, end_mask, squeeze_mask = mask("begin_mask"), mask("end_mask"), mask("squeeze_mask")
    index: list[Any] = []
    squeezed: list[int] = []
    for axis in range(rank):
        if squeeze_mask[axis]:
            start = begin[axis] if not begin_mask[axis] else (0 if stride[axis] > 0 else -1)
            index.append(slice(start, None if start == -1 else start + 1, 1))
            squeezed.append(axis)
            continue
        index.append(
            slice(
                None if begin_mask[axis] else begin[axis],
                None if end_mask[axis] else end[axis],
                stride[axis],
            )
        )
    return tuple(index), squeezed


@kernel("slice_by_index")
def _slice_by_index(args: Args) -> np.ndarray:
    """numpy slicing per axis (masked begin/end -> open); squeeze_mask drops the axis after
    taking the element at ``begin``."""
    x = array(args, "x")
    index, squeezed = _slices(args, x.shape)
    result = x[index]
    return np.asarray(np.squeeze(result, axis=tuple(squeezed)) if squeezed else result)


@kernel("slice_update")
def _slice_update(args: Args) -> np.ndarray:
    x = array(args, "x")
    index, squeezed = _slices(args, x.shape)
    result = x.copy()
    update = array(args, "update")
    target_shape = result[index].shape
    result[index] = update.reshape(target_shape)
    return result


@kernel("slice_by_size")
def _slice_by_size(args: Args) -> np.ndarray:
    """``size[i] == -1`` takes everything from ``begin[i]`` to the end."""
    x = array(args, "x")
    begin = [b % x.shape[i] if x.shape[i] else 0 for i, b in enumerate(integers(args, "begin"))]
    size = integers(args, "size")
    index = tuple(
        slice(b, None if s == -1 else b + s) for b, s in zip(begin, size)
    )
    return x[index]


@kernel("concat")
def _concat(args: Args) -> np.ndarray:
    """``interleave``: the result takes one slice of each input in turn along ``axis``. Scalars
    count as shape (1,) (the torch frontend concatenates scalar sizes into a shape)."""
    values = [np.atleast_1d(np.asarray(v)) for v in args["values"]]
    rank = values[0].ndim
    axis = integer(args, "axis") % rank
    if not flag(args, "interleave"):
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] = -1
    return stacked.reshape(shape)


@kernel("split")
def _split(args: Args) -> tuple[np.ndarray, ...]:
    x = array(args, "x")
    axis = integer(args, "axis") % x.ndim
    sizes = optional_array(args, "split_sizes")
    if sizes is None:
        return tuple(np.split(x, integer(args, "num_splits"), axis=axis))
    boundaries = np.cumsum(sizes.reshape(-1))[:-1]
    return tuple(np.split(x, boundaries, axis=axis))


@kernel("stack")
def _stack(args: Args) -> np.ndarray:
    values = [np.asarray(v) for v in args["values"]]
    return np.stack(values, axis=integer(args, "axis") % (values[0].ndim + 1))


@kernel("tile")
def _tile(args: Args) -> np.ndarray:
    return np.tile(array(args, "x"), integers(args, "reps"))


@kernel("pad")
def _pad(args: Args) -> np.ndarray:
    """``pad`` lists (before, after) for the last len(pad)/2 axes; modes constant (with
    ``constant_val``), reflect (mirror without the edge), replicate (repeat the edge)."""
    x = array(args, "x")
    pad = integers(args, "pad")
    padded_axes = len(pad) // 2
    widths = [(0, 0)] * (x.ndim - padded_axes) + [
        (pad[2 * i], pad[2 * i + 1]) for i in range(padded_axes)
    ]
    mode = text(args, "mode", "constant")
    if mode == "constant":
        value = floating(args, "constant_val", 0.0)
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(value, x.dtype))
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    return np.pad(x, widths, mode="edge")  # replicate


@kernel("shape")
def _shape(args: Args) -> np.ndarray:
    return np.asarray(np.shape(args["x"]), dtype=np.int32)


@kernel("fill")
def _fill(args: Args) -> np.ndarray:
    value = array(args, "value") if args.get("value") is not None else np.float32(0.0)
    return np.full(integers(args, "shape"), value)


@kernel("fill_like")
def _fill_like(args: Args) -> np.ndarray:
    value = array(args, "value") if args.get("value") is not None else np.float32(0.0)
    return np.full(np.shape(args["ref_tensor"]), value)


@kernel("range_1d")
def _range_1d(args: Args) -> np.ndarray:
    start, end, step = array(args, "start"), array(args, "end"), array(args, "step")
    dtype = np.result_type(start, end, step)
    return np.arange(start.item(), end.item(), step.item(), dtype=dtype)


@kernel("select")
def _select(args: Args) -> np.ndarray:
    return np.where(array(args, "cond"), array(args, "a"), array(args, "b"))


@kernel("band_part")
def _band_part(args: Args) -> np.ndarray:
    """Keep element (i, j) of each matrix in the last two axes when (lower < 0 or i - j <=
    lower) and (upper < 0 or j - i <= upper)."""
    x = array(args, "x")
    lower, upper = integer(args, "lower", -1), integer(args, "upper", -1)
    rows = np.arange(x.shape[-2], dtype=np.int32)[:, None]
    cols = np.arange(x.shape[-1], dtype=np.int32)[None, :]
    keep = np.ones((x.shape[-2], x.shape[-1]), dtype=bool)
    if lower >= 0:
        keep &= rows - cols <= lower
    if upper >= 0:
        keep &= cols - rows <= upper
    return np.where(keep, x, np.zeros((), x.dtype))


@kernel("cumsum")
def _cumsum(args: Args) -> np.ndarray:
    x = array(args, "x")
    axis = integer(args, "axis", 0) % x.ndim
    reverse, exclusive = flag(args, "reverse"), flag(args, "exclusive")
    data = np.flip(x, axis) if reverse else x
    result = np.cumsum(data, axis=axis, dtype=x.dtype)
    if exclusive:
        result = result - data
    return np.flip(result, axis) if reverse else result


@kernel("reverse")
def _reverse(args: Args) -> np.ndarray:
    x = array(args, "x")
    axes = axes_of(args, "axes", x.ndim)
    return np.flip(x, axis=axes if axes is not None else None)


@kernel("reverse_sequence")
def _reverse_sequence(args: Args) -> np.ndarray:
    """Along ``seq_axis``, reverse the first lengths[b] elements of batch entry b."""
    x = array(args, "x")
    lengths = array(args, "lengths").astype(np.int32)
    seq_axis = integer(args, "seq_axis", 0) % x.ndim
    batch_axis = integer(args, "batch_axis", 0) % x.ndim
    positions = np.arange(x.shape[seq_axis], dtype=np.int32)
    shape = [1] * x.ndim
    shape[seq_axis] = -1
    position = positions.reshape(shape)
    length_shape = [1] * x.ndim
    length_shape[batch_axis] = -1
    length = lengths.reshape(length_shape)
    source = np.where(position < length, length - 1 - position, position)
    source = np.broadcast_to(source, np.broadcast_shapes(source.shape, x.shape))
    return np.take_along_axis(x, source, axis=seq_axis)


@kernel("one_hot")
def _one_hot(args: Args) -> np.ndarray:
    indices = array(args, "indices")
    depth = integer(args, "one_hot_vector_size")
    axis = integer(args, "axis", -1) % (indices.ndim + 1)
    on = array(args, "on_value") if args.get("on_value") is not None else np.float32(1)
    off = array(args, "off_value") if args.get("off_value") is not None else np.float32(0)
    hot = np.expand_dims(indices, axis) == np.arange(depth, dtype=np.int32).reshape(
        [-1 if i == axis else 1 for i in range(indices.ndim + 1)]
    )
    return np.where(hot, on, off)


@kernel("non_zero")
def _non_zero(args: Args) -> np.ndarray:
    return np.argwhere(array(args, "x")).astype(np.int32)


@kernel("argsort")
def _argsort(args: Args) -> np.ndarray:
    """Stable sort; descending by default (``ascending=False``), equal values in index order."""
    x = array(args, "x")
    axis = integer(args, "axis", -1)
    if flag(args, "ascending"):
        return np.argsort(x, axis=axis, kind="stable").astype(np.int32)
    return np.argsort(-x if x.dtype.kind != "b" else ~x, axis=axis, kind="stable").astype(np.int32)


@kernel("topk")
def _topk(args: Args) -> tuple[np.ndarray, np.ndarray]:
    """The k largest (or smallest with ``ascending``) values along ``axis`` and their
    indices, in sorted order."""
    x = array(args, "x")
    axis = integer(args, "axis", -1) % x.ndim
    k = integer(args, "k", 1)
    if k < 0:
        k = x.shape[axis]
    key = x if flag(args, "ascending") else -x
    order = np.argsort(key, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, indices, axis=axis), indices.astype(np.int32)


@kernel("sliding_windows")
def _sliding_windows(args: Args) -> np.ndarray:
    """Windows of ``size`` along ``axis`` every ``stride`` elements: shape [..., count, size,
    ...] with count = (d - size) // stride + 1 (a strided view, copied once)."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = array(args, "x")
    axis = integer(args, "axis") % x.ndim
    size, stride = integer(args, "size"), integer(args, "stride", 1)
    view = sliding_window_view(x, size, axis=axis)  # window axis appended last
    view = np.moveaxis(view, -1, axis + 1)
    index = (slice(None),) * axis + (slice(None, None, stride),)
    return np.ascontiguousarray(view[index])
