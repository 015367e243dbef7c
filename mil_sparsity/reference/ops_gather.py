"""Gather and scatter kernels (index arithmetic by numpy advanced indexing, no loops)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.reference._registry import IOS17, Args, array, flag, integer, kernel, text


def open_grid(shape: tuple[int, ...], trailing: int = 0) -> tuple[np.ndarray, ...]:
    """One int32 index array per axis of ``shape``, shaped to broadcast against each other
    (and against ``trailing`` more axes), like ``np.ix_``."""
    rank = len(shape)
    return tuple(
        np.arange(size, dtype=np.int32).reshape((1,) * axis + (size,) + (1,) * (rank - axis - 1 + trailing))
        for axis, size in enumerate(shape)
    )


def gather(x: np.ndarray, indices: np.ndarray, axis: int, batch_dims: int) -> np.ndarray:
    """MIL gather: result shape x.shape[:axis] + indices.shape[batch_dims:] + x.shape[axis+1:],
    the first ``batch_dims`` axes of x and indices walked together."""
    axis %= x.ndim
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    # move the gathered axis right after the batch axes, gather with a batch index grid
    moved = np.moveaxis(x, axis, batch_dims)
    batch_shape = x.shape[:batch_dims]
    index = open_grid(batch_shape, indices.ndim - batch_dims) + (indices,)
    gathered = moved[index]  # batch + indices.shape[batch_dims:] + x.shape without batch/axis
    between = axis - batch_dims
    if between == 0:
        return np.asarray(gathered)
    # x axes that sat between the batch axes and ``axis`` come before the index axes
    start = indices.ndim
    order = (
        list(range(batch_dims))
        + list(range(start, start + between))
        + list(range(batch_dims, start))
        + list(range(start + between, gathered.ndim))
    )
    return np.transpose(gathered, order)


@kernel("gather")
def _gather(args: Args) -> np.ndarray:
    indices = array(args, "indices")
    return gather(array(args, "x"), indices, integer(args, "axis", 0), integer(args, "batch_dims", 0))


@kernel("gather_along_axis")
def _gather_along_axis(args: Args) -> np.ndarray:
    x = array(args, "x")
    return np.take_along_axis(x, array(args, "indices"), axis=integer(args, "axis", 0) % x.ndim)


def _nd_index(indices: np.ndarray, batch_dims: int, batch_shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    batch = open_grid(batch_shape, indices.ndim - 1 - batch_dims)
    return batch + tuple(np.moveaxis(indices, -1, 0))


@kernel("gather_nd")
def _gather_nd(args: Args) -> np.ndarray:
    """result[b..., i...] = x[b..., *indices[b..., i..., :]]."""
    x = array(args, "x")
    indices = array(args, "indices")
    batch_dims = integer(args, "batch_dims", 0)
    return np.asarray(x[_nd_index(indices, batch_dims, x.shape[:batch_dims])])


_SCATTER_MODES = {
    "update": None,
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter_into(data: np.ndarray, index: tuple[Any, ...], updates: np.ndarray, mode: str) -> np.ndarray:
    result = data.copy()
    operation = _SCATTER_MODES[mode]
    if operation is None:
        result[index] = updates
    else:
        operation.at(result, index, updates)
    return result


def _checked(args: Args, op_type: str, indices: np.ndarray, valid: np.ndarray, allowed: str, ios17: bool) -> np.ndarray:
    """iOS17+ scatter ops take indices in [0, D) only: with ``validate_indices`` an index outside
    raises, as the runtime does; without, its update is dropped (the runtime's behaviour is
    undefined there). iOS15/16 scatter ops count negative indices from the end (every index is
    kept). Returns the mask of the indices to keep."""
    if not ios17:
        return np.ones_like(valid)
    if flag(args, "validate_indices") and not valid.all():
        raise InvalidInputError(
            f"{op_type}: indices: {indices[~valid][0].tolist()} is out of bounds, allowed "
            f"{allowed} (validate_indices=True)"
        )
    return valid


def _scatter(args: Args, ios17: bool) -> np.ndarray:
    """data[..., indices[i], ...] (on ``axis``) combined with updates[..., i, ...]."""
    data = array(args, "data")
    axis = integer(args, "axis", 0) % data.ndim
    indices = array(args, "indices").reshape(-1)
    updates = array(args, "updates")
    size = data.shape[axis]
    keep = _checked(args, "scatter", indices, (indices >= 0) & (indices < size), f"0..{size - 1}", ios17)
    if not keep.all():
        indices, updates = indices[keep], np.compress(keep, updates, axis=axis)
    index = (slice(None),) * axis + (indices,)
    # an index array after leading slices keeps the updated axis in place
    return _scatter_into(data, index, updates, text(args, "mode", "add"))


def _scatter_along_axis(args: Args, ios17: bool) -> np.ndarray:
    data = array(args, "data")
    axis = integer(args, "axis", 0) % data.ndim
    indices = array(args, "indices")
    updates = array(args, "updates")
    size = data.shape[axis]
    keep = _checked(args, "scatter_along_axis", indices, (indices >= 0) & (indices < size), f"0..{size - 1}", ios17)
    grid = list(open_grid(indices.shape))
    grid[axis] = indices
    if keep.all():
        return _scatter_into(data, tuple(grid), updates, text(args, "mode", "add"))
    full = np.broadcast_arrays(*grid)
    return _scatter_into(data, tuple(g[keep] for g in full), updates[keep], text(args, "mode", "add"))


def _scatter_nd(args: Args, ios17: bool) -> np.ndarray:
    data = array(args, "data")
    indices = array(args, "indices")
    updates = array(args, "updates")
    sizes = np.asarray(data.shape[: indices.shape[-1]])
    valid = np.asarray(((indices >= 0) & (indices < sizes)).all(axis=-1))
    keep = _checked(args, "scatter_nd", indices, valid, " x ".join(f"0..{d - 1}" for d in sizes), ios17)
    if not keep.all():
        indices, updates = indices[keep], updates[keep]
    index = tuple(np.moveaxis(indices, -1, 0))
    return _scatter_into(data, index, updates, text(args, "mode", "add"))


# the iOS15/16 and the iOS17+ semantics of each scatter op, keyed by opset (see _registry)
for _op_type, _implementation in (
    ("scatter", _scatter),
    ("scatter_along_axis", _scatter_along_axis),
    ("scatter_nd", _scatter_nd),
):
    kernel(_op_type)(functools.partial(_implementation, ios17=False))
    kernel(_op_type, since=IOS17)(functools.partial(_implementation, ios17=True))
