"""``mil-sparsity`` in subprocesses: ``python -m mil_sparsity.cli`` and the installed script.

Each run starts coremltools (~3-4 s), so they are launched together by one module fixture and
the tests read their results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import attrs
import numpy as np
import pytest

from _cli_support import (  # noqa: F401  (fixtures)
    REPO,
    SPARSE_OP,
    Packages,
    assert_inputs_unchanged,
    error_line,
    input_hashes,
    leftovers,
    packages,
)
from _extras import skip_missing
from mil_sparsity.inspect_model import inspect_model, materialize
from mil_sparsity.manifest import build_manifest
from mil_sparsity.posthoc import load_model, load_program

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@attrs.frozen
class Run:
    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str


def script_path() -> Optional[str]:
    return shutil.which("mil-sparsity", path=os.path.dirname(sys.executable))


@pytest.fixture(scope="module")
def runs(packages: Packages, input_hashes: dict[Path, dict[str, str]]) -> dict[str, Run]:
    out = packages.root / "sub"
    out.mkdir()
    module = [sys.executable, "-m", "mil_sparsity.cli"]
    commands: dict[str, list[str]] = {
        "passes": module + ["passes", "--json"],
        "report": module + ["report", str(packages.multi), "--json"],
        "prune": module + ["prune", str(packages.ios18), "-o", str(out / "nm.mlpackage"), "--n-m", "3:4"],
        "pack": module + ["pack", str(packages.trained), "-o", str(out / "packed.mlpackage")],
        "sweep": module + [
            "sweep", str(packages.ios18), "--sparsities", "0.5,0.75",
            "--patterns", "unstructured,block:4,n:m:3:4", "--json",
        ],
        "neuralnetwork": module + ["prune", str(packages.neuralnetwork), "-o", str(out / "nn.mlpackage"), "--threshold", "0.1"],
        "missing": module + ["report", str(packages.root / "missing.mlpackage")],
    }
    script = script_path()
    if script is not None:
        commands["script"] = [script, "report", str(packages.ios16)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = {
        name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=out)
        for name, argv in commands.items()
    }
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = Run(tuple(commands[name]), proc.returncode, stdout, stderr)
    assert_inputs_unchanged(packages, input_hashes)
    return results


def test_subprocess_passes_json_is_the_manifest(runs: dict[str, Run]) -> None:
    run = runs["passes"]
    assert run.code == 0, run.stderr
    manifest = json.loads(run.stdout)
    assert manifest == json.loads(json.dumps(build_manifest()))
    assert manifest == json.loads((REPO / "passes_registry.json").read_text())


def test_subprocess_report_multifunction_json(runs: dict[str, Run]) -> None:
    run = runs["report"]
    assert run.code == 0, run.stderr
    data = json.loads(run.stdout)
    functions = {function["name"]: function for function in data["functions"]}
    assert set(functions) == {"dense", "palettized"}
    dense = {w["name"]: w for w in functions["dense"]["weights"]}
    assert {w["storage"] for w in dense.values()} == {"dense"}
    assert dense["fc1_weight_0"]["shape"] == [128, 64]
    assert dense["fc1_weight_0"]["op_types"] == ["linear"]
    assert dense["fc1_weight_0"]["stored_bytes"] == 128 * 64 * 2
    palettized = functions["palettized"]["weights"]
    storages = sorted(w["storage"] for w in palettized)
    assert storages == ["dense", "dense", "palettized", "palettized", "palettized"]
    assert data["package_bytes"] > 0
    assert data["totals"]["weights"] == len(dense) + len(palettized)


def test_subprocess_prune_n_m(runs: dict[str, Run], packages: Packages) -> None:
    run = runs["prune"]
    assert run.code == 0, run.stderr
    assert "prune_by_magnitude" in run.stdout and "total: 3/" in run.stdout
    assert re.search(r"package size on disk [\d,]+ -> [\d,]+ bytes", run.stdout)
    out = packages.root / "sub" / "nm.mlpackage"
    inspection = inspect_model(out)
    sparse = [w for w in inspection.weights if w.storage == "sparse"]
    assert len(sparse) == 3 and all(w.sparsity == 0.75 for w in sparse)
    assert leftovers(out.parent) == []


def test_subprocess_pack_keeps_values(runs: dict[str, Run], packages: Packages) -> None:
    run = runs["pack"]
    assert run.code == 0, run.stderr
    assert "sparse_pack" in run.stdout
    before = load_program(load_model(str(packages.trained))).functions["main"]
    after = load_program(load_model(str(packages.root / "sub" / "packed.mlpackage"))).functions["main"]
    originals = {op.name: op.outputs[0].val for op in before.operations if op.op_type == "const"}
    packed = [op for op in after.operations if op.op_type == SPARSE_OP]
    assert len(packed) == 3
    for op in packed:
        original = originals[op.name[: -len("_sparse")]]
        np.testing.assert_array_equal(materialize(op), original)


def test_subprocess_sweep_json(runs: dict[str, Run], packages: Packages) -> None:
    run = runs["sweep"]
    assert run.code == 0, run.stderr
    data = json.loads(run.stdout)
    points = [(r["pattern"], r["sparsity"]) for r in data["runs"]]
    assert points == [
        ("unstructured", 0.5), ("unstructured", 0.75), ("block:4", 0.5), ("block:4", 0.75),
        ("n:m:3:4", 0.75),
    ]
    assert any("n:m:3:4" in note and "once" in note for note in data["notes"])
    original = data["original"]["model_bytes"]
    by_point = {(r["pattern"], r["sparsity"]): r for r in data["runs"]}
    assert by_point[("unstructured", 0.75)]["model_bytes"] < by_point[("unstructured", 0.5)]["model_bytes"] < original
    for r in data["runs"]:
        assert r["packed"] == 3
        assert 0 < r["relative_error"] < 1
        assert r["worst"]["relative_error"] >= r["relative_error"]
    # the error, recomputed here in float64 from the original weights (ties: lower index first)
    prog = load_program(load_model(str(packages.ios18)))
    consts = [
        op.outputs[0].val
        for op in prog.functions["main"].operations
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)
        and op.outputs[0].val.dtype == np.float16
    ]
    weights = {index: value.astype(np.float64) for index, value in enumerate(consts) if value.ndim >= 2}
    bias_bytes = sum(value.nbytes for value in consts if value.ndim == 1)
    assert len(weights) == 3 and bias_bytes == (128 + 64) * 2
    error_sq = norm_sq = 0.0
    for weight in weights.values():
        flat = weight.reshape(-1)
        order = np.lexsort((np.arange(flat.size), np.abs(flat)))
        pruned = flat.copy()
        pruned[order[: round(0.5 * flat.size)]] = 0
        error_sq += float(np.sum((flat - pruned) ** 2))
        norm_sq += float(np.sum(flat**2))
    expected = np.sqrt(error_sq) / np.sqrt(norm_sq)
    assert by_point[("unstructured", 0.5)]["relative_error"] == pytest.approx(expected, rel=1e-9)
    # model bytes = the other weights as stored + the packed form of the pruned ones
    nm = by_point[("n:m:3:4", 0.75)]
    expected_nm = bias_bytes + sum(w.size // 4 * 2 + w.size // 8 for w in weights.values())
    assert nm["model_bytes"] == expected_nm


def test_subprocess_neuralnetwork_is_rejected(runs: dict[str, Run], packages: Packages) -> None:
    run = runs["neuralnetwork"]
    assert run.code == 1
    line = error_line(run.stderr)
    assert "neuralNetwork" in line and "mlprogram" in line
    assert not (packages.root / "sub" / "nn.mlpackage").exists()


def test_subprocess_missing_model(runs: dict[str, Run]) -> None:
    run = runs["missing"]
    assert run.code == 1
    assert "model not found" in error_line(run.stderr)
    assert run.stdout == ""


def test_installed_script(runs: dict[str, Run]) -> None:
    if "script" not in runs:
        skip_missing("the mil-sparsity script next to this python")
    run = runs["script"]
    assert run.code == 0, run.stderr
    assert "function main (iOS16)" in run.stdout and "package size on disk" in run.stdout


def test_installed_script_error_is_one_line(tmp_path: Path) -> None:
    script = script_path()
    if script is None:
        skip_missing("the mil-sparsity script next to this python")
    done = subprocess.run(
        [script, "prune", str(tmp_path / "none.mlpackage"), "-o", str(tmp_path / "o.mlpackage"), "--n-m", "3:4"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"mil-sparsity: error: model not found: {tmp_path / 'none.mlpackage'}"]
