"""The skips the MIL_SPARSITY_REQUIRE_EXTRAS guard (conftest.py) fails, and the ones it lets pass."""

from __future__ import annotations

import pytest

from _extras import is_missing_extra, skip_missing


def test_guard_catches_missing_modules_and_missing_scripts() -> None:
    with pytest.raises(pytest.skip.Exception) as module:
        pytest.importorskip("mil_sparsity_no_such_module")
    assert is_missing_extra(str(module.value))
    with pytest.raises(pytest.skip.Exception) as script:
        skip_missing("the mil-sparsity script")
    assert is_missing_extra(str(script.value))
    assert not is_missing_extra("the Core ML runtime exists on macOS")
