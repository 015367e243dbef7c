"""The ``mil-sparsity`` command line, on small packages built and saved here.

Subprocess runs (``python -m mil_sparsity.cli`` and the installed ``mil-sparsity`` script) start
coremltools, ~3-4 s each, so they are launched together by one module fixture and the tests
read their results; everything else calls ``main(argv)`` in process with capsys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import attrs
import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

import mil_sparsity as ms
from mil_sparsity import _atomic, cli
from mil_sparsity.inspect_model import inspect_model, materialize
from mil_sparsity.manifest import build_manifest
from mil_sparsity.posthoc import load_model, load_program

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parent.parent
ERROR_PREFIX = "mil-sparsity: error:"
# printed by coremltools itself while it is imported (before any mil_sparsity code runs) on
# machines without its native libraries or with an untested torch: not ours to silence
IMPORT_NOISE = re.compile(
    r"^(Failed to load _\w+: .*|Torch version .* has not been tested with coremltools.*)$"
)
SPARSE_OP = "constexpr_sparse_to_dense"


# ----- building the packages ------------------------------------------------------------------
def build_mlp(target: Any, seed: int = 0, zero_fraction: float = 0.0) -> Any:
    """conv 32x8x3x3 -> flatten -> slice -> linear 128x64 -> relu -> linear 64x128, fp16.

    With ``zero_fraction``, that fraction of every rank >= 2 weight is exactly zero (as after
    training-time pruning).
    """
    rng = np.random.default_rng(seed)

    def weight(shape: tuple[int, ...]) -> np.ndarray:
        value = rng.standard_normal(shape).astype(np.float16)
        if zero_fraction:
            value[rng.random(shape) < zero_fraction] = 0
        return value

    conv_w, fc1_w, fc2_w = weight((32, 8, 3, 3)), weight((128, 64)), weight((64, 128))
    fc1_b = rng.standard_normal(128).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 6, 6), dtype=types.fp16)], opset_version=target)
    def prog(x: Any) -> Any:
        y = mb.conv(x=x, weight=conv_w, name="conv1")
        y = mb.reshape(x=y, shape=[1, 32 * 16])
        y = mb.slice_by_size(x=y, begin=[0, 0], size=[1, 64])
        y = mb.linear(x=y, weight=fc1_w, bias=fc1_b, name="fc1")
        y = mb.relu(x=y)
        return mb.linear(x=y, weight=fc2_w, name="fc2")

    return ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16,
    )


def build_neuralnetwork() -> Any:
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    builder = NeuralNetworkBuilder([("x", datatypes.Array(64))], [("y", datatypes.Array(128))])
    builder.add_inner_product(
        "fc", W=np.ones((128, 64)), b=None, input_channels=64, output_channels=128,
        has_bias=False, input_name="x", output_name="y",
    )
    return ct.models.MLModel(builder.spec, skip_model_load=True)


@attrs.frozen
class Packages:
    root: Path
    ios18: Path
    ios16: Path
    ios15: Path
    trained: Path  # iOS18, 80% exact zeros in every rank >= 2 weight
    palettized: Path
    joint: Path
    multi: Path
    neuralnetwork: Path
    corrupt: Path  # model.mlmodel replaced by garbage
    truncated: Path  # weight.bin cut short

    def inputs(self) -> list[Path]:
        return [self.ios18, self.ios16, self.ios15, self.trained, self.palettized, self.joint,
                self.multi, self.neuralnetwork, self.corrupt, self.truncated]


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    from coremltools.optimize.coreml import (
        OpMagnitudePrunerConfig,
        OpPalettizerConfig,
        OptimizationConfig,
        palettize_weights,
        prune_weights,
    )

    root = tmp_path_factory.mktemp("models")
    paths = Packages(
        root=root,
        ios18=root / "mlp_ios18.mlpackage",
        ios16=root / "mlp_ios16.mlpackage",
        ios15=root / "mlp_ios15.mlpackage",
        trained=root / "trained.mlpackage",
        palettized=root / "palettized.mlpackage",
        joint=root / "joint.mlpackage",
        multi=root / "multi.mlpackage",
        neuralnetwork=root / "nn.mlmodel",
        corrupt=root / "corrupt.mlpackage",
        truncated=root / "truncated.mlpackage",
    )
    dense18 = build_mlp(ct.target.iOS18)
    dense18.save(str(paths.ios18))
    build_mlp(ct.target.iOS16, seed=1).save(str(paths.ios16))
    build_mlp(ct.target.iOS15, seed=2).save(str(paths.ios15))
    build_mlp(ct.target.iOS18, seed=3, zero_fraction=0.8).save(str(paths.trained))
    palettize = OptimizationConfig(
        global_config=OpPalettizerConfig(nbits=4, mode="uniform", weight_threshold=1024)
    )
    palettize_weights(dense18, palettize).save(str(paths.palettized))
    pruned = prune_weights(
        dense18,
        OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=1024)),
    )
    palettize_weights(pruned, palettize, joint_compression=True).save(str(paths.joint))
    descriptor = ct.utils.MultiFunctionDescriptor()
    descriptor.add_function(str(paths.ios18), src_function_name="main", target_function_name="dense")
    descriptor.add_function(str(paths.palettized), src_function_name="main", target_function_name="palettized")
    descriptor.default_function_name = "dense"
    ct.utils.save_multifunction(descriptor, str(paths.multi))
    build_neuralnetwork().save(str(paths.neuralnetwork))
    shutil.copytree(paths.ios18, paths.corrupt)
    (paths.corrupt / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\x00garbage\xff" * 20)
    shutil.copytree(paths.ios18, paths.truncated)
    with open(paths.truncated / "Data/com.apple.CoreML/weights/weight.bin", "r+b") as handle:
        handle.truncate(1000)
    return paths


def hash_tree(path: Path) -> dict[str, str]:
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


@pytest.fixture(scope="module")
def input_hashes(packages: Packages) -> dict[Path, dict[str, str]]:
    return {path: hash_tree(path) for path in packages.inputs()}


def assert_inputs_unchanged(packages: Packages, hashes: dict[Path, dict[str, str]]) -> None:
    for path in packages.inputs():
        assert hash_tree(path) == hashes[path], f"{path} was modified"


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".tmp-" in name)


def error_line(stderr: str) -> str:
    """The one error line; fails on a traceback or any other output."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not IMPORT_NOISE.match(line)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(ERROR_PREFIX), stderr
    return lines[0]


# ----- subprocess runs, launched together -----------------------------------------------------
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
        pytest.skip("the mil-sparsity script is not installed next to this python")
    run = runs["script"]
    assert run.code == 0, run.stderr
    assert "function main (iOS16)" in run.stdout and "package size on disk" in run.stdout


# ----- in process -----------------------------------------------------------------------------
Main = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]) -> Main:
    def call(*argv: Any) -> tuple[int, str, str]:
        code = cli.main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_help_on_every_subcommand(run_main: Main) -> None:
    code, out, _ = run_main("--help")
    assert code == 0 and "usage: mil-sparsity" in out
    for command in ("passes", "report", "prune", "pack", "sweep"):
        code, out, err = run_main(command, "--help")
        assert code == 0 and f"usage: mil-sparsity {command}" in out, err


def test_passes_text(run_main: Main) -> None:
    code, out, err = run_main("passes")
    assert code == 0 and err == ""
    for name in (ms.PRUNE_BY_THRESHOLD, ms.PRUNE_BY_MAGNITUDE, ms.SPARSE_PACK):
        assert name in out
    assert re.search(r"NMConfig \(kind 'n_m'\)\n\s+field\s+type\s+default\n\s+n\s+int\s+required", out)
    assert re.search(r"threshold\s+float\s+1e-12", out)


def test_report_storage_kinds_and_bytes(run_main: Main, packages: Packages) -> None:
    code, out, err = run_main("report", packages.joint, "--json")
    assert code == 0 and err == ""
    weights = {w["name"]: w for w in json.loads(out)["functions"][0]["weights"]}
    joint = [w for w in weights.values() if w["storage"] == "joint"]
    assert len(joint) == 3
    # bytes as stored: uint1 mask (1 bit/element) + uint4 indices of the nonzeros + fp16 LUT
    prog = load_program(load_model(str(packages.joint)))
    for op in prog.functions["main"].operations:
        if op.op_type == "constexpr_lut_to_sparse":
            size = op.indices_mask.val.size
            nonzeros = op.indices_nonzero_data.val.size
            lut = op.lut.val.size
            terminal = next(w for w in joint if op.name.startswith(w["name"]))
            assert terminal["stored_bytes"] == (size + 7) // 8 + (nonzeros * 4 + 7) // 8 + lut * 2
            assert terminal["chain"] == ["constexpr_sparse_to_dense", "constexpr_lut_to_sparse"]
            assert terminal["sparsity"] == pytest.approx(0.5, abs=0.01)
    code, out, _ = run_main("report", packages.palettized)
    assert code == 0
    assert re.search(r"fc1_weight_0_palettized\s+linear\s+128x64\s+float16\s+[\d.]+\s+palettized\s+4128", out)
    assert "package size on disk:" in out


def test_report_sparse_ios16_and_weight_threshold(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    out_path = tmp_path / "t.mlpackage"
    assert run_main("prune", packages.ios16, "-o", out_path, "--target-sparsity", "0.75")[0] == 0
    code, out, _ = run_main("report", out_path, "--json", "--weight-threshold", "200")
    assert code == 0
    weights = {w["name"]: w for w in json.loads(out)["functions"][0]["weights"]}
    assert set(weights) == {"conv1_weight_0_sparse", "fc1_weight_0_sparse", "fc2_weight_0_sparse"}
    fc1 = weights["fc1_weight_0_sparse"]
    # iOS16 form: fp16 nonzeros + uint8 packed mask bits + uint32 shape
    assert fc1["stored_bytes"] == 2048 * 2 + 8192 // 8 + 2 * 4
    assert fc1["storage"] == "sparse" and fc1["sparsity"] == 0.75 and fc1["dense_bytes"] == 16384


def test_report_ios15_is_readable(run_main: Main, packages: Packages) -> None:
    code, out, err = run_main("report", packages.ios15)
    assert code == 0 and err == ""
    assert "function main (iOS15)" in out


def test_prune_threshold_ios16_values(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    out_path = tmp_path / "th.mlpackage"
    code, out, err = run_main(
        "prune", packages.ios16, "-o", out_path, "--threshold", "0.5", "--min-sparsity", "0",
        "--weight-threshold", "100",
    )
    assert code == 0 and err == "", err
    assert "prune_by_threshold" in out
    before = load_program(load_model(str(packages.ios16))).functions["main"]
    after = load_program(load_model(str(out_path))).functions["main"]
    originals = {op.name: op.outputs[0].val for op in before.operations if op.op_type == "const"}
    sparse = [op for op in after.operations if op.op_type == SPARSE_OP]
    assert len(sparse) == 3
    for op in sparse:
        original = originals[op.name[: -len("_sparse")]]
        expected = np.where(np.abs(original.astype(np.float64)) <= 0.5, 0, original).astype(original.dtype)
        np.testing.assert_array_equal(materialize(op), expected)


def test_prune_block_and_json(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    out_path = tmp_path / "block.mlpackage"
    code, out, err = run_main(
        "prune", packages.ios18, "-o", out_path, "--target-sparsity", "0.5", "--block-size", "4",
        "--dim", "1", "--json", "--min-deployment-target", "ios18",
    )
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["pass"] == ms.PRUNE_BY_MAGNITUDE
    assert data["config"]["global_config"] == {
        "kind": "block", "target_sparsity": 0.5, "block_size": 4, "dim": 1, "weight_threshold": 2048,
    }
    assert data["report"]["totals"]["packed"] == 3
    assert data["package_bytes"]["after"] < data["package_bytes"]["before"]


@pytest.mark.parametrize(
    "suffix, text, expected_pass, packed",
    [
        (
            ".yaml",
            "global_config: {kind: magnitude, target_sparsity: 0.5}\n"
            "op_type_configs:\n  conv: {kind: n_m, n: 2, m: 4}\n"
            "op_name_configs:\n  fc2_weight_0: null\n",
            ms.PRUNE_BY_MAGNITUDE,
            2,
        ),
        (".json", json.dumps({"global_config": {"kind": "threshold", "threshold": 10.0}}), ms.PRUNE_BY_THRESHOLD, 3),
        (".yml", "global_config: {kind: pack}\n", ms.SPARSE_PACK, 0),
    ],
    ids=["yaml-magnitude", "json-threshold", "yaml-pack"],
)
def test_prune_config_file_picks_the_pass(
    run_main: Main, packages: Packages, tmp_path: Path, suffix: str, text: str, expected_pass: str, packed: int
) -> None:
    config = tmp_path / f"config{suffix}"
    config.write_text(text)
    out_path = tmp_path / "cfg.mlpackage"
    code, out, err = run_main("prune", packages.ios18, "-o", out_path, "--config", config, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["pass"] == expected_pass
    assert data["report"]["totals"]["packed"] == packed
    assert out_path.is_dir()


def test_force_overwrites_atomically(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    out_path = tmp_path / "o.mlpackage"
    assert run_main("prune", packages.ios18, "-o", out_path, "--target-sparsity", "0.5")[0] == 0
    first = hash_tree(out_path)
    code, _, err = run_main("prune", packages.ios18, "-o", out_path, "--target-sparsity", "0.9")
    assert code == 1 and "already exists" in error_line(err) and "--force" in err
    assert hash_tree(out_path) == first
    code, out, err = run_main("prune", packages.ios18, "-o", out_path, "--target-sparsity", "0.9", "--force")
    assert code == 0, err
    assert hash_tree(out_path) != first
    sparsities = [w.sparsity for w in inspect_model(out_path).weights if w.storage == "sparse"]
    assert len(sparsities) == 3 and sparsities == pytest.approx([0.9] * 3, abs=1e-3)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exception", [OSError("disk full (simulated)"), KeyboardInterrupt()])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "force"])
def test_failed_save_leaves_nothing(
    run_main: Main, packages: Packages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    exception: BaseException, existing: bool,
) -> None:
    out_path = tmp_path / "o.mlpackage"
    if existing:
        shutil.copytree(packages.ios16, out_path)
    before = hash_tree(out_path) if existing else None
    original_save = ct.models.MLModel.save

    def failing_save(self: Any, path: str) -> None:
        original_save(self, path)  # a complete package at the staging path, then the failure
        (Path(path) / "half-written").write_bytes(b"x")
        raise exception

    monkeypatch.setattr(ct.models.MLModel, "save", failing_save)
    argv = ["prune", packages.ios18, "-o", out_path, "--n-m", "2:4"] + (["--force"] if existing else [])
    code, out, err = run_main(*argv)
    line = error_line(err)
    if isinstance(exception, KeyboardInterrupt):
        assert code == 130 and "interrupted" in line
    else:
        assert code == 1 and "cannot write" in line and "disk full" in line
    assert out == ""
    assert leftovers(tmp_path) == []
    if existing:
        assert hash_tree(out_path) == before
    else:
        assert not out_path.exists()


def test_atomic_output_restores_the_old_destination_if_the_final_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = tmp_path / "d.mlpackage"
    destination.mkdir()
    (destination / "old").write_text("old")
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if os.path.basename(src) == "d.mlpackage" and dst == str(destination):  # the staged one
            raise OSError("rename failed (simulated)")
        real_rename(src, dst)

    monkeypatch.setattr(_atomic.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        with _atomic.atomic_output(destination, overwrite=True) as staging:
            os.mkdir(staging)
            Path(staging, "new").write_text("new")
    assert sorted(os.listdir(destination)) == ["old"]
    assert leftovers(tmp_path) == []


def test_atomic_output_refuses_existing_and_missing_parent(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep")
    with pytest.raises(FileExistsError):
        with _atomic.atomic_output(tmp_path / "x"):
            raise AssertionError("not reached")
    with pytest.raises(FileNotFoundError):
        with _atomic.atomic_output(tmp_path / "no" / "x"):
            raise AssertionError("not reached")
    with _atomic.atomic_output(tmp_path / "x", overwrite=True) as staging:
        Path(staging).write_text("new")
    assert (tmp_path / "x").read_text() == "new" and leftovers(tmp_path) == []


BAD_VALUES = [
    (["--target-sparsity", "1.5"], "must be in [0, 1]"),
    (["--target-sparsity", "-0.1"], "must be in [0, 1]"),
    (["--threshold", "-1"], "must be >= 0"),
    (["--threshold", "0.1", "--min-sparsity", "2"], "must be in [0, 1]"),
    (["--n-m", "5:4"], "n must be <= NMConfig.m"),
    (["--n-m", "3-4"], "expected N:M"),
    (["--n-m", "3:x"], "expected N:M"),
    (["--n-m", "0:4"], "NMConfig.n must be an int >= 1"),
    (["--target-sparsity", "0.5", "--block-size", "1"], "block_size must be an int >= 2"),
    (["--target-sparsity", "abc"], "expected a number"),
    (["--target-sparsity", "0.5", "--threshold", "0.1"], "not allowed with argument"),
    (["--target-sparsity", "0.5", "--min-sparsity", "0.5"], "--min-sparsity goes with --threshold"),
    (["--threshold", "0.5", "--dim", "1"], "--dim goes with"),
    ([], "one of the arguments"),
    (["--n-m", "3:4", "--min-deployment-target", "iOS16"], "targets iOS18"),
    (["--n-m", "3:4", "--min-deployment-target", "iOS15"], "expected one of iOS16, iOS17, iOS18"),
]


@pytest.mark.parametrize("options, message", BAD_VALUES, ids=[" ".join(o) or "none" for o, _ in BAD_VALUES])
def test_prune_bad_values(
    run_main: Main, packages: Packages, tmp_path: Path, options: list[str], message: str
) -> None:
    out_path = tmp_path / "o.mlpackage"
    code, out, err = run_main("prune", packages.ios18, "-o", out_path, *options)
    assert code == 2, err
    assert message in error_line(err)
    assert out == "" and not out_path.exists() and leftovers(tmp_path) == []


CONFIG_FILES = [
    ("bad.json", '{"global_config": {"kind": "magnitude", ', "invalid JSON"),
    ("bad.yaml", "global_config: [unclosed\n  - x: {", "invalid YAML"),
    ("list.yaml", "- kind: magnitude\n", "expected a mapping"),
    ("top.json", json.dumps({"global": {"kind": "magnitude", "target_sparsity": 0.5}}), "unknown key(s) ['global']"),
    ("field.json", json.dumps({"global_config": {"kind": "magnitude", "target_sparsity": 0.5, "sparsity": 1}}), "unknown key(s) ['sparsity']"),
    ("kind.yaml", "global_config: {kind: lowrank}\n", "kind must be one of"),
    ("range.yaml", "global_config: {kind: magnitude, target_sparsity: 2}\n", "must be in [0, 1]"),
    ("missing.yaml", "global_config: {kind: block, target_sparsity: 0.5}\n", "block_size"),
    ("mixed.yaml", "global_config: {kind: threshold}\nop_type_configs:\n  conv: {kind: n_m, n: 3, m: 4}\n", "mixes config kinds"),
    ("empty.yaml", "global_config: null\n", "no config set"),
]


@pytest.mark.parametrize("name, text, message", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_prune_bad_config_files(
    run_main: Main, packages: Packages, tmp_path: Path, name: str, text: str, message: str
) -> None:
    config = tmp_path / name
    config.write_text(text)
    out_path = tmp_path / "o.mlpackage"
    code, out, err = run_main("prune", packages.ios18, "-o", out_path, "--config", config)
    assert code == 1
    assert message in error_line(err)
    assert out == "" and not out_path.exists() and leftovers(tmp_path) == []


def test_bad_models_and_outputs(
    run_main: Main, packages: Packages, tmp_path: Path, input_hashes: dict[Path, dict[str, str]]
) -> None:
    out_path = tmp_path / "o.mlpackage"
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hi")  # parses as an empty spec: "not a Core ML model"
    cases: list[tuple[list[Any], int, str]] = [
        (["prune", packages.corrupt, "-o", out_path, "--n-m", "3:4"], 1, "cannot read model"),
        (["pack", packages.truncated, "-o", out_path], 1, "cannot read model"),
        (["report", packages.corrupt], 1, "cannot read model"),
        (["report", packages.neuralnetwork], 1, "'neuralNetwork' model"),
        (["report", text_file], 1, "cannot read model"),
        (["prune", packages.ios15, "-o", out_path, "--n-m", "3:4"], 1, "targets iOS15"),
        (["pack", packages.ios15, "-o", out_path], 1, "needs iOS16 or later"),
        (["sweep", packages.ios15], 1, "targets iOS15"),
        (["prune", tmp_path / "none.mlpackage", "-o", out_path, "--n-m", "3:4"], 1, "model not found"),
        (["prune", packages.ios18, "-o", tmp_path / "o.mlmodel", "--n-m", "3:4"], 2, "must end with .mlpackage"),
        (["prune", packages.ios18, "-o", tmp_path / "no" / "o.mlpackage", "--n-m", "3:4"], 1, "does not exist"),
        (["prune", packages.ios18, "-o", packages.ios18, "--n-m", "3:4", "--force"], 2, "must not be the input"),
        (["prune", packages.ios18, "-o", out_path, "--config", tmp_path / "nope.yaml"], 1, "cannot read config file"),
        (["prune", packages.ios18, "-o", out_path, "--config", tmp_path], 1, "cannot read config file"),
        (["report", packages.ios18, "--weight-threshold", "-3"], 2, "expected an integer >= 0"),
        (["sweep", packages.ios18, "--sparsities", "0.5,1.2"], 2, "must be in [0, 1]"),
        (["sweep", packages.ios18, "--patterns", "block:x"], 2, "unknown pattern"),
        (["sweep", packages.ios18, "--patterns", "n:m:5:4"], 2, "n must be <= NMConfig.m"),
        (["sweep", packages.ios18, "--dim", "1"], 2, "--dim goes with"),
        (["bogus"], 2, "invalid choice"),
    ]
    for argv, expected_code, message in cases:
        code, out, err = run_main(*argv)
        assert code == expected_code, (argv, err)
        assert message in error_line(err), (argv, err)
        assert out == ""
    assert not out_path.exists() and leftovers(tmp_path) == [] and leftovers(packages.root) == []
    assert_inputs_unchanged(packages, input_hashes)


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


def test_progress_bar_only_on_a_terminal_and_never_with_json(
    run_main: Main, packages: Packages, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_main("report", packages.ios18)
    assert code == 0 and err == ""  # stderr is not a terminal under pytest
    monkeypatch.setattr(cli, "_isatty", lambda stream: True)
    code, _, err = run_main("report", packages.ios18)
    assert code == 0 and "reading weights" in err
    code, out, err = run_main("report", packages.ios18, "--json")
    assert code == 0 and err == "" and json.loads(out)["totals"]["weights"] == 5


# ----- --streaming ---------------------------------------------------------------------------
def spec_ops(path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """Non-const ops per function, functions by name (the spec's function map has no order)."""
    prog = load_program(load_model(str(path)))
    return [(name, op.op_type, tuple(v.name for v in op.outputs))
            for name, f in sorted(prog.functions.items()) for op in f.operations if op.op_type != "const"]


@pytest.mark.parametrize(
    "argv",
    [["prune", "{ios18}", "--n-m", "3:4"], ["prune", "{ios16}", "--target-sparsity", "0.6", "--block-size", "4"],
     ["pack", "{trained}"], ["prune", "{multi}", "--target-sparsity", "0.5"]],
    ids=["n_m-iOS18", "block-iOS16", "pack", "multifunction"],
)
def test_streaming_writes_the_same_model(run_main: Main, packages: Packages, tmp_path: Path, argv: list[str]) -> None:
    args = [a.format(ios18=packages.ios18, ios16=packages.ios16, trained=packages.trained, multi=packages.multi) for a in argv]
    streamed, loaded = tmp_path / "streamed.mlpackage", tmp_path / "loaded.mlpackage"
    code, out, err = run_main(*args, "-o", streamed, "--streaming")
    assert code == 0 and err == "", err
    assert "packed" in out and "wrote" in out
    code, _, err = run_main(*args, "-o", loaded)
    assert code == 0, err
    assert spec_ops(streamed) == spec_ops(loaded)
    a = {op.outputs[0].name: materialize(op) for f in load_program(load_model(str(streamed))).functions.values()
         for op in f.operations if op.op_type == SPARSE_OP}
    b = {op.outputs[0].name: materialize(op) for f in load_program(load_model(str(loaded))).functions.values()
         for op in f.operations if op.op_type == SPARSE_OP}
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name].view(np.uint16), b[name].view(np.uint16))


def test_streaming_bad_inputs_write_nothing(
    run_main: Main, packages: Packages, tmp_path: Path, input_hashes: dict[Path, dict[str, str]]
) -> None:
    out_path = tmp_path / "o.mlpackage"
    cases: list[tuple[list[Any], int, str]] = [
        (["pack", packages.truncated, "-o", out_path, "--streaming"], 1, "truncated"),
        (["prune", packages.corrupt, "-o", out_path, "--n-m", "3:4", "--streaming"], 1, "not a readable Core ML model spec"),
        (["prune", packages.ios15, "-o", out_path, "--n-m", "3:4", "--streaming"], 1, "minimum_deployment_target"),
        (["prune", packages.ios18, "-o", out_path, "--n-m", "3:4", "--streaming", "--min-deployment-target", "iOS16"], 2, "targets iOS18"),
    ]
    for argv, expected_code, message in cases:
        code, out, err = run_main(*argv)
        assert code == expected_code, (argv, err)
        assert message in error_line(err), (argv, err)
        assert out == ""
    existing = tmp_path / "exists.mlpackage"
    existing.mkdir()
    code, _, err = run_main("pack", packages.trained, "-o", existing, "--streaming")
    assert code == 1 and "already exists" in error_line(err)
    assert not out_path.exists() and leftovers(tmp_path) == [] and leftovers(packages.root) == []
    assert_inputs_unchanged(packages, input_hashes)


def test_installed_script_error_is_one_line(tmp_path: Path) -> None:
    script = script_path()
    if script is None:
        pytest.skip("the mil-sparsity script is not installed next to this python")
    done = subprocess.run(
        [script, "prune", str(tmp_path / "none.mlpackage"), "-o", str(tmp_path / "o.mlpackage"), "--n-m", "3:4"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"mil-sparsity: error: model not found: {tmp_path / 'none.mlpackage'}"]
