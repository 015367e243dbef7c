"""Fixtures shared by the test modules.

* ``sources``: saved source packages (conv, mlp, lstm, classifier, cond, multifunction,
  shared, palettized / quantized), built once per session from torch-free MIL models; the
  tests never modify them (they copy a package before changing it).
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from _extras import is_missing_extra
from _packages import Sources


@pytest.fixture
def shared_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the shares the reference evaluator's threaded kernels hand to their pool (0:
    everything ran on the calling thread)."""
    from mil_sparsity.reference import threads

    handed: list[int] = []
    real = threads._executor

    class Counting:
        def __init__(self, size: int) -> None:
            self.pool = real(size)

        def submit(self, *args: Any) -> Any:
            handed.append(1)
            return self.pool.submit(*args)

    monkeypatch.setattr(threads, "_executor", Counting)
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
