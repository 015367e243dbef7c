"""List ops: ``make_list``, ``list_length``, ``list_read``, ``list_write``, ``list_gather``,
``list_scatter``.

A list value is a :class:`TensorList`: an immutable tuple of element arrays (writes return a new
list, so a list carried through a ``while_loop`` is never changed behind a reader's back), the
element shape when ``make_list`` fixed it and the element dtype. Elements never written are
zeros of the element shape (None while that shape is symbolic: reading one raises).
Writing past the end grows a dynamic-length list; on a fixed-length list, or reading past the
end, it raises a ValueError naming the index and the list's length.
"""

from __future__ import annotations

from typing import Any, Optional, cast

import attrs
import numpy as np

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.reference._registry import Args, Outputs, array, flag, integer, kernel, text

_DTYPES = {"fp16": np.float32, "fp32": np.float32, "int32": np.int32, "bool": np.bool_}


@attrs.frozen
class TensorList:
    items: tuple[Optional[np.ndarray], ...]
    elem_shape: Optional[tuple[int, ...]]
    dtype: np.dtype[Any]
    dynamic: bool

    def blank(self) -> Optional[np.ndarray]:
        return None if self.elem_shape is None else np.zeros(self.elem_shape, self.dtype)

    def read(self, op_type: str, index: int) -> np.ndarray:
        if not 0 <= index < len(self.items):
            raise InvalidInputError(f"{op_type}: index {index} is out of range, allowed 0..{len(self.items) - 1}")
        item = self.items[index]
        if item is None:
            raise InvalidInputError(f"{op_type}: element {index} was never written (its shape is symbolic)")
        return item

    def written(self, op_type: str, indices: np.ndarray, values: list[np.ndarray]) -> "TensorList":
        items = list(self.items)
        for index, value in zip(indices.tolist(), values):
            if index < 0 or (index >= len(items) and not self.dynamic):
                raise InvalidInputError(
                    f"{op_type}: index {index} is out of range, allowed 0..{len(items) - 1} "
                    "(the list's length is fixed)" if index >= 0 else f"{op_type}: index {index} is negative"
                )
            items.extend([self.blank()] * (index + 1 - len(items)))
            items[index] = np.asarray(value, self.dtype)
        return attrs.evolve(self, items=tuple(items))


def _list(args: Args) -> TensorList:
    value = args["ls"]
    if not isinstance(value, TensorList):
        raise InvalidInputError(f"ls: expected a list value, got {type(value).__name__}")
    return value


@kernel("make_list")
def _make_list(args: Args) -> Outputs:
    dims = args["elem_shape"]
    dims = dims if isinstance(dims, tuple) else (dims,)
    known = all(np.asarray(d).dtype.kind in "iu" for d in dims)
    shape = tuple(int(np.asarray(d).item()) for d in dims) if known else None
    dtype = np.dtype(_DTYPES.get(text(args, "dtype", "fp32"), np.float32))
    empty = TensorList((), shape, dtype, flag(args, "dynamic_length", True))
    result = attrs.evolve(empty, items=(empty.blank(),) * integer(args, "init_length", 1))
    return cast(Outputs, result)


@kernel("list_length")
def _list_length(args: Args) -> np.ndarray:
    return np.array(len(_list(args).items), np.int32)


@kernel("list_read")
def _list_read(args: Args) -> np.ndarray:
    return _list(args).read("list_read", integer(args, "index"))


@kernel("list_gather")
def _list_gather(args: Args) -> np.ndarray:
    ls = _list(args)
    indices = array(args, "indices").reshape(-1)
    items = [ls.read("list_gather", int(i)) for i in indices]
    if not items:
        return np.zeros((0,) + (ls.elem_shape or ()), ls.dtype)
    return np.stack(items)


@kernel("list_write")
def _list_write(args: Args) -> Outputs:
    index = np.array([integer(args, "index")])
    return cast(Outputs, _list(args).written("list_write", index, [array(args, "value")]))


@kernel("list_scatter")
def _list_scatter(args: Args) -> Outputs:
    indices = array(args, "indices").reshape(-1)
    values = array(args, "value")
    return cast(Outputs, _list(args).written("list_scatter", indices, list(values)))
