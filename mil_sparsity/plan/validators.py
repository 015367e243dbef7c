"""Small named attrs validators. Every error names the class, the field, the value and the range."""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs

from mil_sparsity.errors import InvalidInputError, InvalidTypeError

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _where(instance: Any, attribute: "attrs.Attribute[Any]") -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def _require_number(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(
            f"{_where(instance, attribute)} must be a number, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value):
        raise InvalidInputError(f"{_where(instance, attribute)} must be finite, got {value!r}")
    return float(value)


def _require_int(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(
            f"{_where(instance, attribute)} must be an int, got {type(value).__name__} {value!r}"
        )
    return value


def fraction(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """A finite number in [0, 1]."""
    number = _require_number(instance, attribute, value)
    if not 0.0 <= number <= 1.0:
        raise InvalidInputError(f"{_where(instance, attribute)} must be in [0, 1], got {value!r}")


def optional_fraction(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """None or a finite number in [0, 1]."""
    if value is not None:
        fraction(instance, attribute, value)


def non_negative_number(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """A finite number >= 0."""
    if _require_number(instance, attribute, value) < 0:
        raise InvalidInputError(f"{_where(instance, attribute)} must be >= 0, got {value!r}")


def int_at_least(minimum: int) -> Validator:
    """An int >= minimum (bool is rejected)."""

    def check(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if _require_int(instance, attribute, value) < minimum:
            raise InvalidInputError(
                f"{_where(instance, attribute)} must be an int >= {minimum}, got {value!r}"
            )

    check.__name__ = f"int_at_least_{minimum}"
    return check


def any_int(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """An int (negative allowed; bool rejected)."""
    _require_int(instance, attribute, value)


def optional_int(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """None or an int (negative allowed; bool rejected)."""
    if value is not None:
        _require_int(instance, attribute, value)


def one_of(*allowed: str) -> Validator:
    """One of the strings ``allowed``."""

    def check(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if not isinstance(value, str) or value not in allowed:
            raise InvalidInputError(
                f"{_where(instance, attribute)} must be one of {list(allowed)}, got {value!r}"
            )

    check.__name__ = "one_of_" + "_".join(allowed)
    return check
