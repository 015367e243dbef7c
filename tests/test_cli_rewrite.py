"""``mil-sparsity prune`` / ``pack`` writing: --force, failures that leave nothing behind, the
atomic writer, and --streaming against the in-memory path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct
from _cli_support import (  # noqa: F401  (fixtures)
    SPARSE_OP,
    Main,
    Packages,
    assert_inputs_unchanged,
    error_line,
    hash_tree,
    input_hashes,
    leftovers,
    packages,
    run_main,
)
from mil_sparsity.format import atomic as _atomic
from mil_sparsity.inspect_model import inspect_model, materialize
from mil_sparsity.posthoc import load_model, load_program

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


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
        (["prune", packages.ios18, "-o", out_path, "--n-m", "3:4", "--streaming", "--min-deployment-target", "iOS16"], 2, "below the model's target iOS18"),
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
