"""``mil-sparsity passes``, ``report`` and ``prune`` in process (``main(argv)`` with capsys):
output, option checks, config files, and bad models and outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mil_sparsity as ms
from _cli_support import (  # noqa: F401  (fixtures)
    SPARSE_OP,
    Main,
    Packages,
    assert_inputs_unchanged,
    error_line,
    input_hashes,
    leftovers,
    packages,
    run_main,
)
from mil_sparsity import cli
from mil_sparsity.inspect_model import materialize
from mil_sparsity.posthoc import load_model, load_program

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


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
        "scoring": "magnitude",
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
    (["--n-m", "3:4", "--min-deployment-target", "iOS16"], "below the model's target iOS18"),
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


def test_progress_bar_only_on_a_terminal_and_never_with_json(
    run_main: Main, packages: Packages, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_main("report", packages.ios18)
    assert code == 0 and err == ""  # stderr is not a terminal under pytest
    monkeypatch.setattr(cli._common, "isatty", lambda stream: True)
    code, _, err = run_main("report", packages.ios18)
    assert code == 0 and "reading weights" in err
    code, out, err = run_main("report", packages.ios18, "--json")
    assert code == 0 and err == "" and json.loads(out)["totals"]["weights"] == 5
