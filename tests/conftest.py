"""Fixtures shared by the test modules.

* ``sources``: saved source packages (conv, mlp, lstm, classifier, cond, multifunction,
  shared, palettized / quantized), built once per session from torch-free MIL models; the
  tests never modify them (they copy a package before changing it).
"""

from __future__ import annotations

from typing import Any

import pytest

from _packages import Sources


@pytest.fixture(scope="session")
def sources(tmp_path_factory: Any) -> Sources:
    return Sources(tmp_path_factory.mktemp("sources"))
