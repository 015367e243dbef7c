"""coremltools' own op tests as a conformance suite of the reference evaluator: a stable sample.

Each test runs coremltools' tests shipped in its wheel in a pytest subprocess with the plugin
tests/conformance/ct_conformance.py, which answers ``MLModel.predict`` with the evaluator (see
there, and scripts/conformance.py for whole suites and the table per test class). The sample:
one case per test function (chosen by a hash of the case id) of a hash-chosen share of the
functions, so CI pays about a minute per coremltools version; the op sample runs a second time
with two evaluator threads and the sharing thresholds lowered, so that the kernels' threaded
paths meet the suite's shapes.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "conformance"))
from runner import ROOT, SUITES, THREADED_OP_MODULES, pytest_command, read_report  # noqa: E402

OPS_SHARE = 0.1  # of coremltools' ~550 MIL op test functions: ~56 cases, ~24 compare values
TORCH_SHARE = 0.03  # of its ~400 torch frontend test functions: ~11 cases (each converts a torch model)
BAD = ("fail", "crash")


def run(target: str | tuple[str, ...], tmp_path: Path, **options: Any) -> list[dict[str, str]]:
    report = tmp_path / "report.jsonl"
    command, env = pytest_command(target, report, **options)
    completed = subprocess.run(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200
    )
    assert report.exists(), completed.stdout[-4000:]
    return read_report(report)


def failures(rows: list[dict[str, str]]) -> str:
    return "\n".join(f"[{row['outcome']}] {row['case']}\n    {row['detail'][:300]}" for row in rows if row["outcome"] in BAD)


def test_op_tests_sample_conforms(tmp_path: Path) -> None:
    rows = run(SUITES["ops"], tmp_path, sample=1, functions=OPS_SHARE)
    outcomes = Counter(row["outcome"] for row in rows)
    assert not (outcomes["fail"] or outcomes["crash"]), failures(rows)
    assert outcomes["pass"] >= 20, outcomes  # the sample compares values: not all skipped


def test_op_tests_sample_conforms_in_threaded_runs(tmp_path: Path) -> None:
    """One case of every test function of the op modules with threaded kernels, run with two
    evaluator threads and the sharing thresholds lowered (conformance/sharing.py): the
    kernels' split paths on the suite's shapes."""
    rows = run(THREADED_OP_MODULES, tmp_path, sample=1, threads=2)
    outcomes = Counter(row["outcome"] for row in rows)
    assert not (outcomes["fail"] or outcomes["crash"]), failures(rows)
    assert outcomes["pass"] >= 20, outcomes
    shared = [row["case"] for row in rows if int(row["shares"]) > 0]
    assert len(shared) >= 15, f"only {len(shared)} cases had their kernels cut into shares: {shared}"


def test_torch_frontend_sample_conforms(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    rows = run(SUITES["torch"], tmp_path, sample=1, functions=TORCH_SHARE)
    outcomes = Counter(row["outcome"] for row in rows)
    assert not (outcomes["fail"] or outcomes["crash"]), failures(rows)
    assert outcomes["pass"] >= 5, outcomes


def test_the_harness_bites(tmp_path: Path) -> None:
    """With every evaluator output perturbed, every case that compares values fails."""
    rows = run("coremltools.converters.mil.mil.ops.tests.iOS14.test_activation", tmp_path, sample=1, perturb=True)
    outcomes = Counter(row["outcome"] for row in rows)
    assert outcomes["pass"] == 0, [row["case"] for row in rows if row["outcome"] == "pass"]
    assert outcomes["fail"] >= 10, outcomes
