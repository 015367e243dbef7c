"""The op table: one numpy kernel per MIL op type.

A kernel receives the op's inputs as an :class:`Args` mapping (input name -> numpy value: an
ndarray, a tuple of ndarrays for variadic inputs such as ``concat.values``, or a Python/numpy
scalar or string for parameters) and returns one ndarray or a tuple of them, one per output.
Kernels are pure numpy: no MIL objects, vectorised over the whole tensor. Floating point runs
in float32 (the evaluator upcasts fp16 before a kernel sees it), integers keep their dtype.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from mil_sparsity.errors import InvalidInputError

Args = Mapping[str, Any]
Outputs = Union[np.ndarray, tuple[np.ndarray, ...]]
Kernel = Callable[[Args], Outputs]

OP_TABLE: dict[str, Kernel] = {}


def kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    """Register the decorated function as the kernel of every op type in ``op_types``."""

    def register(function: Kernel) -> Kernel:
        for op_type in op_types:
            if op_type in OP_TABLE:
                raise InvalidInputError(f"op type {op_type!r} registered twice")
            OP_TABLE[op_type] = function
        return function

    return register


# -- argument readers shared by the kernel modules ---------------------------------------------


def array(args: Args, name: str) -> np.ndarray:
    return np.asarray(args[name])


def optional_array(args: Args, name: str) -> Optional[np.ndarray]:
    value = args.get(name)
    return None if value is None else np.asarray(value)


def integer(args: Args, name: str, default: Optional[int] = None) -> int:
    value = args.get(name)
    if value is None:
        if default is None:
            raise KeyError(name)
        return default
    return int(np.asarray(value).item())


def floating(args: Args, name: str, default: Optional[float] = None) -> float:
    value = args.get(name)
    if value is None:
        if default is None:
            raise KeyError(name)
        return default
    return float(np.asarray(value).item())


def flag(args: Args, name: str, default: bool = False) -> bool:
    value = args.get(name)
    return default if value is None else bool(np.asarray(value).item())


def text(args: Args, name: str, default: str = "") -> str:
    value = args.get(name)
    return default if value is None else str(np.asarray(value).item())


def integers(args: Args, name: str, default: Optional[Sequence[int]] = None) -> list[int]:
    value = args.get(name)
    if value is None:
        if default is None:
            raise KeyError(name)
        return list(default)
    return [int(v) for v in np.asarray(value).reshape(-1)]


def axes_of(args: Args, name: str, rank: int) -> Optional[tuple[int, ...]]:
    """Normalised (non-negative, sorted) axes, or None when the input is absent."""
    value = args.get(name)
    if value is None:
        return None
    return tuple(sorted(int(a) % rank if rank else 0 for a in np.asarray(value).reshape(-1)))


def float32(value: np.ndarray) -> np.ndarray:
    """``value`` as float32 without a copy when it already is."""
    return value if value.dtype == np.float32 else value.astype(np.float32)
