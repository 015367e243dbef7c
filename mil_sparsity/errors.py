"""The errors mil_sparsity raises on purpose.

Every one derives from :class:`MilSparsityError` and from the builtin a caller would expect
(``ValueError`` or ``TypeError``), so code written as ``except ValueError`` keeps working::

    MilSparsityError
    ├── InvalidInputError (ValueError)      a value or file we were given is not acceptable
    │   └── UnsafePackageError              a package entry leads outside the package, or a
    │                                       declared size does not match what is stored
    └── InvalidTypeError (TypeError)        an argument of the wrong kind
"""

from __future__ import annotations


class MilSparsityError(Exception):
    """Base of every error mil_sparsity raises on purpose."""


class InvalidInputError(MilSparsityError, ValueError):
    """A value, file or model that mil_sparsity refuses; the message names it and why."""


class UnsafePackageError(InvalidInputError):
    """A model package that could make us read or write outside it, or spend memory it does
    not back with data: refused before anything is read from it or written for it."""


class InvalidTypeError(MilSparsityError, TypeError):
    """An argument of a kind mil_sparsity does not take."""


__all__ = ["InvalidInputError", "InvalidTypeError", "MilSparsityError", "UnsafePackageError"]
