"""``mil-sparsity sweep`` in process: the table, --plot, and --plot without matplotlib."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from _cli_support import Main, Packages, error_line, leftovers, packages, run_main  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_sweep_table_and_plot(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "sweep.png"
    code, out, err = run_main(
        "sweep", packages.ios16, "--sparsities", "0.5,0.9", "--patterns", "unstructured,n:m:2:4",
        "--plot", plot,
    )
    assert code == 0 and err == "", err
    assert re.search(r"^original\s+-\s+-\s+[\d,]+\s+100\.0%\s+0\.0000", out, re.M)
    assert re.search(r"^unstructured\s+0\.900\s+3/5", out, re.M)
    assert re.search(r"^n:m:2:4\s+0\.500\s+3/5", out, re.M)
    assert "note: n:m:2:4 fixes its sparsity" in out
    assert plot.read_bytes().startswith(b"\x89PNG") and leftovers(tmp_path) == []
    code, _, err = run_main("sweep", packages.ios16, "--plot", tmp_path / "sweep.xyz")
    assert code == 2 and "cannot write .xyz" in error_line(err)


def test_sweep_plot_without_matplotlib(
    run_main: Main, packages: Packages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    plot = tmp_path / "sweep.png"
    code, out, err = run_main("sweep", packages.ios18, "--plot", plot)
    assert code == 1
    assert 'pip install "mil_sparsity[plot]"' in error_line(err)
    assert out == "" and os.listdir(tmp_path) == []
