"""Skips for a missing optional part of the test setup, in the form the
``MIL_SPARSITY_REQUIRE_EXTRAS`` guard (conftest.py) turns into a failure.

* a module: ``pytest.importorskip("torch")`` (pytest's reason says "could not import");
* anything else the test command installs (the ``mil-sparsity`` script): :func:`skip_missing`.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

_IMPORTORSKIP_REASON = "could not import"
_MISSING_REASON = "optional part not installed"


def skip_missing(what: str) -> NoReturn:
    """Skip the test because ``what`` is not installed (a failure under the guard)."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    pytest.skip(f"{_MISSING_REASON}: {what}")


def is_missing_extra(skip_reason: str) -> bool:
    """Whether a skip's reason (or its report's longrepr, as text) is a missing optional part."""
    return _IMPORTORSKIP_REASON in skip_reason or _MISSING_REASON in skip_reason
