"""The op table: one numpy kernel per MIL op type.

A kernel receives the op's inputs as an :class:`Args` mapping (input name -> numpy value: an
ndarray, a tuple of ndarrays for variadic inputs such as ``concat.values``, or a Python/numpy
scalar or string for parameters) and returns one ndarray or a tuple of them, one per output.
Kernels are pure numpy: no MIL objects, vectorised over the whole tensor. Floating point runs
in float32 (the evaluator upcasts fp16 before a kernel sees it), integers keep their dtype.

In place (only for a few hot kernels, and only where the plan proves it safe): a kernel
registered with ``fresh=True`` promises that its output is always a new array, never a view of
an input or a const; such a value is owned by its var alone. A kernel may also have an in-place
variant (:func:`inplace`), called as ``variant(args, writable)``: ``writable`` names the inputs
whose arrays it may overwrite (and return as its output). The plan grants a name only when its
value was made by a fresh kernel, dies at this op, is read once by it and was read by no op
that could have made a view of it (see :mod:`~mil_sparsity.reference.planning`); runs with a
``capture`` callback never use the variants (the callback is handed the inputs after the op ran).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

import attrs
import coremltools as ct
import numpy as np

from mil_sparsity.errors import InvalidInputError, InvalidTypeError

Args = Mapping[str, Any]
Outputs = Union[np.ndarray, tuple[np.ndarray, ...]]
Kernel = Callable[[Args], Outputs]
InplaceKernel = Callable[[Args, frozenset[str]], Outputs]

OP_TABLE: dict[str, Kernel] = {}
#: the opset version iOS17 (``ct.target.iOS17``): from it on, scatter ops validate indices
IOS17 = int(ct.target.iOS17)
#: op type -> {first opset version (an int, ``ct.target.iOS17`` say) -> kernel}: semantics that
#: changed between iOS versions; an op of opset v takes the entry with the largest key <= v,
#: and OP_TABLE's kernel when it has none.
OPSET_TABLE: dict[str, dict[int, Kernel]] = {}

#: what a user adds per evaluator: ``"op_type"`` (every opset) or ``("op_type", opset)`` (that
#: opset and later) -> kernel
KernelKey = Union[str, tuple[str, int]]

#: kernels whose (single) output is always a new array, owned by nobody else
FRESH_OUTPUTS: set[Kernel] = set()
#: kernel -> (the input names it can overwrite, its in-place variant)
INPLACE: dict[Kernel, tuple[frozenset[str], InplaceKernel]] = {}


def kernel(*op_types: str, since: Optional[int] = None, fresh: bool = False) -> Callable[[Kernel], Kernel]:
    """Register the decorated function as the kernel of every op type in ``op_types``; with
    ``since``, only for ops of that opset version and later. ``fresh``: its output is always a
    new array (never a view of an input or a const)."""

    def register(function: Kernel) -> Kernel:
        if fresh:
            FRESH_OUTPUTS.add(function)
        for op_type in op_types:
            if since is None:
                if op_type in OP_TABLE:
                    raise InvalidInputError(f"op type {op_type!r} registered twice")
                OP_TABLE[op_type] = function
            else:
                versions = OPSET_TABLE.setdefault(op_type, {})
                if int(since) in versions:
                    raise InvalidInputError(f"op type {op_type!r} registered twice for opset {since}")
                versions[int(since)] = function
        return function

    return register


_Variant = TypeVar("_Variant", bound=InplaceKernel)


def inplace(of: Kernel, *names: str) -> Callable[[_Variant], _Variant]:
    """Register the decorated function as the in-place variant of the fresh kernel ``of``: it
    computes what ``of`` computes, and may write into the inputs ``names`` that it is told are
    writable. It must produce the same values as ``of`` and a fresh output."""

    def register(function: _Variant) -> _Variant:
        if of not in FRESH_OUTPUTS:
            raise InvalidInputError(f"{of.__name__}: only a fresh kernel can have an in-place variant")
        INPLACE[of] = (frozenset(names), function)
        return function

    return register


def writable_out(
    args: Args, writable: frozenset[str], names: Sequence[str], shape: tuple[int, ...], dtype: np.dtype[Any]
) -> Optional[np.ndarray]:
    """The first input among ``names`` that may be overwritten and can hold a result of
    ``shape`` and ``dtype`` (a writable, C-contiguous ndarray), or None."""
    for name in names:
        if name in writable:
            value = args.get(name)
            if (
                type(value) is np.ndarray and value.shape == shape and value.dtype == dtype
                and value.flags.c_contiguous and value.flags.writeable
            ):
                return value
    return None


def _by_opset(table: Mapping[int, Kernel], opset: Optional[int]) -> Optional[Kernel]:
    usable = [version for version in table if opset is not None and version <= opset]
    return table[max(usable)] if usable else None


@attrs.frozen
class KernelTable:
    """The kernels one evaluator uses: the built-in tables plus its own ``extra`` kernels.

    Precedence for an op of type t and opset v: an extra kernel keyed ``(t, u)`` with the
    largest u <= v, then an extra keyed ``t``, then a built-in kernel for (t, opset), then the
    built-in kernel of t. The built-in tables are never modified.
    """

    extra_by_opset: Mapping[str, Mapping[int, Kernel]] = attrs.field(factory=dict)
    extra: Mapping[str, Kernel] = attrs.field(factory=dict)

    @classmethod
    def with_extra(cls, ops: Optional[Mapping[KernelKey, Kernel]]) -> "KernelTable":
        """Check ``ops`` (the ``ops=`` argument of an evaluator) and build the table."""
        if ops is None:
            return cls()
        if not isinstance(ops, Mapping):
            raise InvalidTypeError(f"ops must map op types to kernels, got {type(ops).__name__}")
        by_opset: dict[str, dict[int, Kernel]] = {}
        plain: dict[str, Kernel] = {}
        for key, function in ops.items():
            if not callable(function):
                raise InvalidTypeError(f"ops[{key!r}]: a kernel must be callable, got {type(function).__name__}")
            if isinstance(key, str) and key:
                plain[key] = function
            elif (
                isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str) and key[0]
                and isinstance(key[1], int)
            ):
                by_opset.setdefault(key[0], {})[int(key[1])] = function
            else:
                raise InvalidTypeError(
                    f"ops: a key must be an op type (str) or (op type, opset version), got {key!r}"
                )
        return cls(by_opset, plain)

    def op_types(self) -> frozenset[str]:
        """Every op type this table has a kernel for."""
        return frozenset(OP_TABLE) | frozenset(OPSET_TABLE) | frozenset(self.extra) | frozenset(self.extra_by_opset)

    def lookup(self, op_type: str, opset: Optional[int]) -> Optional[Kernel]:
        """The kernel for an op of ``op_type`` and ``opset`` (None: unknown opset), or None."""
        found = _by_opset(self.extra_by_opset.get(op_type, {}), opset)
        if found is None:
            found = self.extra.get(op_type)
        if found is None:
            found = _by_opset(OPSET_TABLE.get(op_type, {}), opset)
        return found if found is not None else OP_TABLE.get(op_type)


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
