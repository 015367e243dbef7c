"""The inputs a function accepts, and user arrays checked and converted against them.

The allowed shapes come from the model description when there is one (fixed shape, a range per
dimension, or an enumerated list of shapes, as ``ct.TensorType`` with ``RangeDim`` or
``EnumeratedShapes`` writes them); for a bare PyMIL program, from the placeholder's shape, where
a symbolic dimension accepts any size >= 1.

Dtypes are converted as Core ML does when it feeds a model: integer arrays (int64 token ids
included) to the input's integer type, with a ValueError when a value does not fit (float
arrays are accepted for an integer input when every value is a whole number, as Core ML's
predict takes them; others raise a ValueError naming the input); floating
point arrays to the input's float type (float64 -> float32, or -> float16 for an fp16 input,
which is then upcast to float32 for computation, exactly).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import attrs
import numpy as np

from mil_sparsity.errors import InvalidInputError, InvalidTypeError

DimRange = tuple[int, Optional[int]]  # (lower, upper); upper None = unbounded


def _fixed(shape: tuple[int, ...]) -> tuple[DimRange, ...]:
    return tuple((size, size) for size in shape)


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in values)


def _fixed_ranges(spec: "InputSpec") -> tuple[DimRange, ...]:
    return _fixed(spec.shape)


@attrs.frozen
class InputSpec:
    """One model or function input: its name, its default shape (what random samples use),
    its storage dtype, and the shapes it accepts (``ranges`` per dimension, or an
    ``enumerated`` list; by default exactly ``shape``). The one input description of the
    evaluator and of :mod:`mil_sparsity.samples`."""

    name: str
    shape: tuple[int, ...] = attrs.field(converter=_ints)
    dtype: np.dtype[Any] = attrs.field(converter=np.dtype)
    ranges: tuple[DimRange, ...] = attrs.field(default=attrs.Factory(_fixed_ranges, takes_self=True))
    enumerated: Optional[tuple[tuple[int, ...], ...]] = None

    @property
    def rank(self) -> int:
        return len(self.ranges)

    def allowed(self) -> str:
        """The allowed shapes, for error messages."""
        if self.enumerated is not None:
            return "one of " + ", ".join(str(shape) for shape in self.enumerated)
        dims = []
        for lower, upper in self.ranges:
            if upper is not None and lower == upper:
                dims.append(str(lower))
            else:
                dims.append(f"{lower}..{'inf' if upper is None else upper}")
        return "(" + ", ".join(dims) + ")"

    def accepts(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != self.rank:
            return False
        if self.enumerated is not None:
            return shape in self.enumerated
        return all(
            lower <= size and (upper is None or size <= upper)
            for size, (lower, upper) in zip(shape, self.ranges)
        )


def spec_from_placeholder(name: str, shape: Sequence[Any], dtype: np.dtype[Any]) -> InputSpec:
    """A PyMIL placeholder's shape: int dims are fixed, symbolic dims accept any size >= 1."""
    ranges = tuple((int(d), int(d)) if isinstance(d, (int, np.integer)) else (1, None) for d in shape)
    return InputSpec(name=name, shape=tuple(lower for lower, _ in ranges), dtype=dtype, ranges=ranges)


def spec_from_feature(feature: Any, dtype: np.dtype[Any]) -> Optional[InputSpec]:
    """A model description's multiArray input (None for other feature types)."""
    if feature.type.WhichOneof("Type") != "multiArrayType":
        return None
    array_type = feature.type.multiArrayType
    default = tuple(int(d) for d in array_type.shape)
    which = array_type.WhichOneof("ShapeFlexibility")
    if which == "enumeratedShapes":
        shapes = tuple(tuple(int(d) for d in s.shape) for s in array_type.enumeratedShapes.shapes)
        rank = len(shapes[0]) if shapes else len(default)
        return InputSpec(feature.name, default or (shapes[0] if shapes else ()), dtype, ((1, None),) * rank, shapes)
    if which == "shapeRange":
        ranges = tuple(
            (int(r.lowerBound), None if int(r.upperBound) < 0 else int(r.upperBound))
            for r in array_type.shapeRange.sizeRanges
        )
        return InputSpec(feature.name, default or tuple(lower for lower, _ in ranges), dtype, ranges)
    return InputSpec(feature.name, default, dtype)


def compute_dtype(storage: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype the evaluator computes in: float32 for every float type, else the same."""
    return np.dtype(np.float32) if storage.kind == "f" else storage


def _integral(spec: InputSpec, given: np.ndarray) -> np.ndarray:
    """Float values that are all whole numbers, as int64; a ValueError naming the input if not."""
    whole = np.isfinite(given) & (given == np.round(given))
    if not whole.all():
        bad = given[~whole].reshape(-1)[0]
        raise InvalidInputError(
            f"input {spec.name!r}: expected integers ({spec.dtype}); float values are accepted "
            f"only when they hold whole numbers, got {bad!r} (dtype {given.dtype})"
        )
    return given.astype(np.int64)


def convert_input(spec: InputSpec, value: Any) -> np.ndarray:
    """Check ``value`` against ``spec`` and return it in the evaluator's compute dtype."""
    given = np.asarray(value)
    shape = tuple(int(d) for d in given.shape)
    if not spec.accepts(shape):
        what = "rank" if len(shape) != spec.rank else "shape"
        raise InvalidInputError(
            f"input {spec.name!r}: wrong {what}: got shape {shape}, allowed {spec.allowed()}"
        )
    kind = spec.dtype.kind
    if kind == "b":
        if given.dtype.kind not in "bui":
            raise InvalidTypeError(f"input {spec.name!r}: expected bool values, got dtype {given.dtype}")
        return given.astype(np.bool_, copy=False)
    if kind in "iu":
        if given.dtype.kind == "f":  # Core ML's predict takes floats that hold integers
            given = _integral(spec, given)
        if given.dtype.kind not in "bui":
            raise InvalidTypeError(
                f"input {spec.name!r}: expected integers ({spec.dtype}), got dtype {given.dtype}"
            )
        info = np.iinfo(spec.dtype)
        if given.size and given.dtype.kind != "b" and (given.min() < info.min or given.max() > info.max):
            raise InvalidInputError(
                f"input {spec.name!r}: values {given.min()}..{given.max()} do not fit "
                f"{spec.dtype} ({info.min}..{info.max})"
            )
        return given.astype(spec.dtype, copy=False)
    if given.dtype.kind not in "buif":
        raise InvalidTypeError(f"input {spec.name!r}: expected numbers, got dtype {given.dtype}")
    stored = given.astype(spec.dtype, copy=False)  # float16 inputs are rounded as Core ML would
    return stored.astype(np.float32, copy=False)


def convert_inputs(
    specs: Sequence[InputSpec], inputs: Mapping[str, Any], required: Optional[Sequence[str]] = None
) -> dict[str, np.ndarray]:
    """All inputs checked (missing and unknown names first), then converted one by one.

    ``required``: the names that must be given (default: every input); a name outside the
    function is always an error, a name given but not required is checked and converted too."""
    if not isinstance(inputs, Mapping):
        raise InvalidTypeError(f"inputs must map input names to arrays, got {type(inputs).__name__}")
    expected = [spec.name for spec in specs]
    needed = expected if required is None else list(required)
    missing = [name for name in needed if name not in inputs]
    unknown = [str(name) for name in inputs if name not in expected]
    if missing or unknown:
        details = []
        if missing:
            details.append(f"missing {missing}")
        if unknown:
            details.append(f"unknown {unknown}")
        raise InvalidInputError(f"inputs: {'; '.join(details)}; the function takes {expected}")
    return {spec.name: convert_input(spec, inputs[spec.name]) for spec in specs if spec.name in inputs}
