"""Programs the Core ML runtime refuses to load, refused by the evaluator too (at plan time).

Kernels see values only; these rules need the ops' declared var shapes. The runtime fixes
every flexible input (``RangeDim``, ``EnumeratedShapes``, a bare program's symbolic dim) to its
default size when it loads a model and checks the ops' shapes then, whatever sizes are given
at prediction. :func:`check_program` binds each symbolic dim of the function's inputs to its
default size (:attr:`InputSpec.shape`; a bare PyMIL program's symbolic dims default to 1, as
``ct.convert`` writes them), follows the symbols through the declared shapes of every op
(nested blocks included), and raises where a rule fails. Dims that stay symbolic (sizes
computed by ops) are not compared.

Rules (each one found by coremltools' own tests, see tests/test_reference_runtime_rules.py):

- ``stack``: every input has the same shape (torch's ``TestStack::test_stack_dynamic_range_dim``:
  a ``RangeDim`` input whose default differs from the fixed inputs' size is refused).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from coremltools.converters.mil.mil.block import Block, Function
from coremltools.converters.mil.mil.operation import Operation

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.reference.inputs import InputSpec

Dim = Optional[int]  # None: a size the declared shapes leave open
Binding = Mapping[Any, int]  # symbol -> default size


def _walk(block: Block) -> Iterator[Operation]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk(inner)


def _binding(function: Function, specs: Sequence[InputSpec]) -> dict[Any, int]:
    defaults = {spec.name: spec.shape for spec in specs}
    binding: dict[Any, int] = {}
    for name, var in function.inputs.items():
        default = defaults.get(name)
        shape = getattr(var, "shape", None)
        if default is None or shape is None or len(shape) != len(default):
            continue
        for dim, size in zip(shape, default):
            if not isinstance(dim, int):
                binding.setdefault(dim, int(size))
        # a dim symbol bound twice (two inputs sharing a symbol) keeps the first default
    return binding


def _size(dim: Any, binding: Binding) -> Dim:
    """A declared dim's size with the inputs' defaults: int, bound symbol, or an expression
    of bound symbols (sympy); None when it stays open."""
    if isinstance(dim, int):
        return dim
    if dim in binding:
        return binding[dim]
    symbols = getattr(dim, "free_symbols", None)
    if symbols and all(symbol in binding for symbol in symbols):
        value = dim.subs({symbol: binding[symbol] for symbol in symbols})
        if getattr(value, "is_Integer", False):
            return int(value)
    return None


def _shape(var: Any, binding: Binding) -> Optional[tuple[Dim, ...]]:
    shape = getattr(var, "shape", None)
    if shape is None:
        return None
    return tuple(_size(dim, binding) for dim in shape)


def _differ(first: tuple[Dim, ...], other: tuple[Dim, ...]) -> bool:
    if len(first) != len(other):
        return True
    return any(a is not None and b is not None and a != b for a, b in zip(first, other))


def _shown(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join("?" if dim is None else str(dim) for dim in shape) + ")"


def _stack(op: Operation, binding: Binding) -> None:
    values = op.inputs.get("values")
    if not isinstance(values, (list, tuple)) or len(values) < 2:
        return
    shapes = [_shape(var, binding) for var in values]
    known = [(var, shape) for var, shape in zip(values, shapes) if shape is not None]
    if any(_differ(known[0][1], shape) for _, shape in known[1:]):
        listing = ", ".join(f"{var.name!r} {_shown(shape)}" for var, shape in known)
        raise InvalidInputError(
            f"stack {op.name!r}: values: the inputs' shapes differ with the model's default input "
            f"shapes: {listing}; the Core ML runtime refuses to load a stack of different shapes "
            "(make the flexible inputs' default sizes match the other inputs)"
        )


RULES: dict[str, Callable[[Operation, Binding], None]] = {"stack": _stack}


def check_program(function: Function, input_specs: Sequence[InputSpec]) -> None:
    """Raise :class:`InvalidInputError` (a ValueError) naming the first op of ``function`` the
    Core ML runtime would refuse, given the inputs' default shapes."""
    binding = _binding(function, input_specs)
    for op in _walk(function):
        rule = RULES.get(op.op_type)
        if rule is not None:
            rule(op, binding)
