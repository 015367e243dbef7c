"""Fixtures shared by the test modules.

* ``sources``: saved source packages (conv, mlp, lstm, classifier, cond, multifunction,
  shared, palettized / quantized), built once per session from torch-free MIL models; the
  tests never modify them (they copy a package before changing it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "conformance"))

from _extras import is_missing_extra  # noqa: E402
from _packages import Sources  # noqa: E402
from sharing import count_shares  # noqa: E402


@pytest.fixture
def shared_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the shares the reference evaluator's threaded kernels hand to their pool (0:
    everything ran on the calling thread)."""
    handed: list[int] = []
    count_shares(monkeypatch.setattr, lambda: handed.append(1))
    yield handed


@pytest.fixture(scope="session")
def sources(tmp_path_factory: Any) -> Sources:
    return Sources(tmp_path_factory.mktemp("sources"))


# ---- optional dependencies must be there when the test command asks for them -----------------
# Tests that need torch, transformers, matplotlib, the MiniLM package or the installed
# mil-sparsity script skip when it is missing (a library user may run the suite without the
# extras), through pytest.importorskip or _extras.skip_missing. scripts/test.sh installs every
# extra and sets MIL_SPARSITY_REQUIRE_EXTRAS=1: there, such a skip fails the run.
_MISSING_MODULE_SKIPS: list[str] = []


def _record_missing_module(report: Any) -> None:
    if report.skipped and is_missing_extra(str(report.longrepr)):
        _MISSING_MODULE_SKIPS.append(f"{report.nodeid}: {report.longrepr}")


def pytest_collectreport(report: Any) -> None:
    _record_missing_module(report)


def pytest_runtest_logreport(report: Any) -> None:
    _record_missing_module(report)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    import os

    if os.environ.get("MIL_SPARSITY_REQUIRE_EXTRAS") == "1" and _MISSING_MODULE_SKIPS:
        print("\nMIL_SPARSITY_REQUIRE_EXTRAS=1 but optional dependencies are missing:")
        for line in _MISSING_MODULE_SKIPS:
            print("  " + line)
        session.exitstatus = 1
