"""``mil-sparsity compare``, ``calibrate`` and ``sweep`` with input samples: numbers against the
library called directly, every option, every bad input; one subprocess run of compare and of
calibrate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from _cli_support import (  # noqa: F401  (fixtures)
    IMPORT_NOISE,
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
from mil_sparsity import cli
from mil_sparsity.calibration import ActivationStats, collect_activation_stats
from mil_sparsity.cli._common import finite
from mil_sparsity.posthoc import load_model
from mil_sparsity.quality import compare
from mil_sparsity.samples import input_specs, random_samples

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ON_MACOS = sys.platform == "darwin"


def as_json(data: Any) -> Any:
    """What ``--json`` prints for ``data``: strict JSON, infinities as null."""
    return json.loads(json.dumps(finite(data)))


def specs(path: Path, function: Any = None) -> Any:
    return input_specs(load_model(str(path)), function)


def build_embedding(seed: int) -> Any:
    """int32 token ids (1, 8) -> gather from a 100x16 table -> linear 32x16 -> (1, 8, 32)."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((100, 16)).astype(np.float32)
    weight = rng.standard_normal((32, 16)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8), dtype=types.int32)],
                opset_version=ct.target.iOS18)
    def prog(ids: Any) -> Any:
        return mb.linear(x=mb.gather(x=table, indices=ids, axis=0), weight=weight, name="out")

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                      compute_precision=ct.precision.FLOAT32)


def build_pooling() -> Any:
    """The shared packages' input (x: fp16 1x8x6x6) -> mean over H, W, an output named pooled."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 6, 6), dtype=types.fp16)],
                opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        return mb.reduce_mean(x=x, axes=[2, 3], name="pooled")

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)


@pytest.fixture(scope="module")
def work(packages: Packages) -> Path:
    """Pruned and embedding packages next to the shared ones, built once for this module."""
    root = packages.root / "quality"
    if not root.exists():
        root.mkdir()
        for name, config in (("half", ["--target-sparsity", "0.5"]), ("nm", ["--n-m", "2:4"])):
            code = cli.main(["prune", str(packages.ios18), "-o", str(root / f"{name}.mlpackage"),
                             *config, "--json"])
            assert code == 0
        build_embedding(0).save(str(root / "emb_a.mlpackage"))
        build_pooling().save(str(root / "pooled.mlpackage"))
        build_embedding(1).save(str(root / "emb_b.mlpackage"))
    return root


# ----- compare --------------------------------------------------------------------------------
def test_compare_random_inputs_equals_the_library(
    run_main: Main, packages: Packages, work: Path
) -> None:
    pruned = work / "half.mlpackage"
    samples = random_samples(specs(packages.ios18), 3, seed=5)
    expected = compare(str(packages.ios18), str(pruned), samples)
    assert 0 < expected.worst_relative_l2 < 1 and expected.outputs[0].top1_agreement is not None
    code, out, err = run_main("compare", packages.ios18, pruned, "--random-inputs", 3, "--seed", 5,
                              "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert {k: data[k] for k in ("samples", "outputs", "worst")} == as_json(expected.to_dict())
    assert data["reference"] == str(packages.ios18) and data["candidate"] == str(pruned)
    assert data["function"] == "main" and data["backend"] == "reference"
    assert data["inputs"] == {"random_inputs": 3, "seed": 5, "int_range": [0, 100]}
    code, out, err = run_main("compare", packages.ios18, pruned, "--random-inputs", 3, "--seed", 5)
    assert code == 0 and err == ""
    assert out.endswith(expected.format_table() + "\n")
    assert "3 random sample(s) (seed 5" in out
    # another seed draws other samples
    code, out, _ = run_main("compare", packages.ios18, pruned, "--random-inputs", 3, "--json")
    assert json.loads(out)["outputs"] != data["outputs"]


def test_compare_data_layouts_and_palettized(
    run_main: Main, packages: Packages, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    stacked = rng.standard_normal((4, 1, 8, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "stacked.npz", x=stacked)
    np.savez(tmp_path / "indexed.npz", x_0=stacked[0], x_1=stacked[1])
    np.savez(tmp_path / "single.npz", x=stacked[2])
    cases = [
        ("stacked.npz", [{"x": s} for s in stacked]),
        ("indexed.npz", [{"x": stacked[0]}, {"x": stacked[1]}]),
        ("single.npz", [{"x": stacked[2]}]),
    ]
    for name, samples in cases:
        expected = compare(str(packages.ios18), str(packages.palettized), samples)
        code, out, err = run_main("compare", packages.ios18, packages.palettized, "--data",
                                  tmp_path / name, "--json")
        assert code == 0 and err == "", (name, err)
        data = json.loads(out)
        assert data["samples"] == len(samples)
        assert {k: data[k] for k in ("samples", "outputs", "worst")} == as_json(expected.to_dict())
        assert data["inputs"] == {"data": str(tmp_path / name), "samples": len(samples)}


def test_compare_multifunction(run_main: Main, packages: Packages) -> None:
    samples = random_samples(specs(packages.multi, "palettized"), 2)
    for function in ("dense", "palettized"):
        code, out, err = run_main("compare", packages.multi, packages.multi, "--random-inputs", 2,
                                  "--json", "--function", function)
        assert code == 0, err
        data = json.loads(out)
        expected = compare(str(packages.multi), str(packages.multi), samples,
                           function_name=function)
        assert data["function"] == function and data["worst"]["relative_l2"] == 0.0
        assert data["outputs"] == as_json(expected.to_dict())["outputs"]
        # --function names a function of A; ios18 has only main
        code, out, err = run_main("compare", packages.ios18, packages.multi, "--random-inputs", 2,
                                  "--function", function)
        assert code == 2 and "has no such function; it has main" in error_line(err)
    code, out, err = run_main("compare", packages.multi, packages.multi, "--random-inputs", 2,
                              "--json")
    assert code == 0 and json.loads(out)["function"] == "dense"  # the default function
    code, out, err = run_main("compare", packages.ios18, packages.multi, "--random-inputs", 2)
    assert code == 1 and "has no function 'main'" in error_line(err)


def test_integer_inputs_and_int_range(run_main: Main, work: Path) -> None:
    a, b = work / "emb_a.mlpackage", work / "emb_b.mlpackage"
    for argv, int_range in (([], (0, 100)), (["--int-range", "3..7"], (3, 7)),
                            (["--int-range=-0..2"], (0, 2))):
        samples = random_samples(specs(a), 2, seed=1, int_range=int_range)
        expected = compare(str(a), str(b), samples)
        code, out, err = run_main("compare", a, b, "--random-inputs", 2, "--seed", 1, *argv,
                                  "--json")
        assert code == 0 and err == "", err
        data = json.loads(out)
        assert data["inputs"]["int_range"] == list(int_range)
        assert data["outputs"] == as_json(expected.to_dict())["outputs"]
    one = random_samples(specs(a), 1, int_range=(3, 4))[0]["ids"]
    assert one.dtype == np.int32 and np.all(one == 3)
    ids = np.arange(16, dtype=np.int64).reshape(2, 1, 8)  # int64 token ids are accepted
    np.savez(work / "ids.npz", ids=ids)
    code, out, err = run_main("compare", a, b, "--data", work / "ids.npz", "--json")
    expected = compare(str(a), str(b), [{"ids": i} for i in ids])
    assert code == 0 and json.loads(out)["outputs"] == as_json(expected.to_dict())["outputs"]


def bad_inputs(
    packages: Packages, work: Path, tmp: Path, out: Path
) -> list[tuple[list[Any], int, str]]:
    x = np.zeros((2, 1, 8, 6, 6), np.float32)
    files = {
        "other.npz": {"y": x},
        "extra.npz": {"x": x, "y": x},
        "rank.npz": {"x": np.zeros((2, 2, 1, 8, 6, 6), np.float32)},
        "shape.npz": {"x": np.zeros((2, 1, 8, 5, 5), np.float32)},
        "indexed_rank.npz": {"x_0": x},
        "indexed_extra.npz": {"x_0": x[0], "z_0": x[0]},
        "indexed_missing.npz": {"x_1": x[0], "x_2": x[0], "x_10": x[0]},
        "text.npz": {"x": np.full((1, 8, 6, 6), "a")},
    }
    for name, arrays in files.items():
        np.savez(tmp / name, **arrays)
    (tmp / "corrupt.npz").write_bytes(b"not a zip file")
    A, B = packages.ios18, work / "half.mlpackage"
    compare = ["compare", A, B]
    rand = ["--random-inputs", 2]
    return [
        ([*compare, "--data", tmp / "other.npz"], 1, "the model's inputs are ['x']"),
        ([*compare, "--data", tmp / "extra.npz"], 1, "array(s) ['y'] name no input"),
        ([*compare, "--data", tmp / "indexed_extra.npz"], 1, "array(s) ['z_0'] name no input"),
        ([*compare, "--data", tmp / "rank.npz"], 1, "has shape (2, 2, 1, 8, 6, 6), but the "
         "model's input has rank 4"),
        ([*compare, "--data", tmp / "indexed_rank.npz"], 1, "x_0 has shape (2, 1, 8, 6, 6), "
         "but the model's input 'x' has rank 4"),
        ([*compare, "--data", tmp / "shape.npz"], 1, "input 'x': wrong shape: got shape "
         "(1, 8, 5, 5), allowed (1, 8, 6, 6)"),
        ([*compare, "--data", tmp / "text.npz"], 1, "input 'x': expected numbers"),
        ([*compare, "--data", tmp / "corrupt.npz"], 1, "cannot read"),
        ([*compare, "--data", tmp / "none.npz"], 1, "data file not found"),
        ([*compare, "--data", tmp / "other.npz", *rand], 2, "not allowed with argument"),
        ([*compare], 2, "one of the arguments --data --random-inputs is required"),
        ([*compare, "--random-inputs", 0], 2, "expected an integer >= 1, got '0'"),
        ([*compare, "--random-inputs", "-3"], 2, "expected an integer >= 1, got '-3'"),
        ([*compare, "--random-inputs", "x"], 2, "expected an integer >= 1"),
        ([*compare, *rand, "--seed", "-1"], 2, "expected an integer >= 0, got '-1'"),
        ([*compare, *rand, "--int-range", "-5..5"], 2, "expected one argument"),
        ([*compare, "--data", tmp / "other.npz", "--seed", 1], 2, "--seed goes with --random"),
        ([*compare, "--data", tmp / "other.npz", "--int-range", "0..5"], 2,
         "--int-range goes with --random-inputs"),
        ([*compare, *rand, "--int-range", "5..5"], 2, "expected LOW < HIGH, got '5..5'"),
        ([*compare, *rand, "--int-range", "9..1"], 2, "expected LOW < HIGH"),
        ([*compare, *rand, "--int-range", "a..b"], 2, "expected LOW..HIGH"),
        ([*compare, *rand, "--int-range", "7"], 2, "expected LOW..HIGH"),
        (["compare", work / "emb_a.mlpackage", work / "emb_b.mlpackage", *rand, "--int-range",
          "0..3000000000"], 2, "int_range 0..3000000000 does not fit input 'ids' (int32"),
        ([*compare, *rand, "--backend", "tpu"], 2, "invalid choice: 'tpu'"),
        ([*compare, *rand, "--function", "nope"], 2, "--function nope: "),
        ([*compare, *rand, "--function", "nope"], 2, "has no such function; it has main"),
        (["compare", packages.root / "none.mlpackage", B, *rand], 1, "model not found"),
        (["compare", A, packages.root / "none.mlpackage", *rand], 1, "model not found"),
        (["compare", A, packages.neuralnetwork, *rand], 1, "mil-sparsity works on ML Program"),
        (["compare", A, packages.corrupt, *rand], 1, "cannot read model"),
        (["compare", A, work / "emb_a.mlpackage", *rand], 1, "emb_a.mlpackage: inputs: missing ['ids']; "
         "unknown ['x']"),
        (["compare", A, work / "pooled.mlpackage", *rand], 1, "the models' outputs differ: "
         "reference has ['fc2'], candidate has ['pooled']"),
        (["calibrate", A, "-o", out / "s.npz"], 2, "one of the arguments --data"),
        (["calibrate", A, "-o", out / "s.txt", *rand], 2, "-o/--output must end with .npz"),
        (["calibrate", A, "-o", out / "no" / "s.npz", *rand], 1, "output directory does not"),
        (["calibrate", A, "-o", out / "s.npz", *rand, "--backend", "coreml"], 2,
         "unrecognized arguments: --backend"),
        (["calibrate", A, "-o", out / "s.npz", "--data", tmp / "rank.npz"], 1, "rank 4"),
        (["sweep", A, "--seed", 3], 2, "--seed goes with --random-inputs"),
        (["sweep", A, "--function", "main"], 2, "--function goes with --data or --random"),
        (["sweep", A, "--backend", "coreml"], 2, "--backend goes with --data or --random"),
        (["sweep", A, "--data", tmp / "shape.npz"], 1, "wrong shape"),
        (["sweep", A, *rand, "--int-range", "1..1"], 2, "expected LOW < HIGH"),
    ] + ([] if ON_MACOS else [
        ([*compare, *rand, "--backend", "coreml"], 2, "compare: --backend coreml: backend='coreml' "
         "needs the Core ML runtime, which only exists on macOS"),
        (["sweep", A, *rand, "--backend", "coreml"], 2, "only exists on macOS"),
    ])


def test_bad_inputs_one_line_and_nothing_written(
    run_main: Main, packages: Packages, work: Path, tmp_path: Path,
    input_hashes: dict[Path, dict[str, str]],
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    for argv, expected_code, message in bad_inputs(packages, work, data, out):
        code, stdout, err = run_main(*argv)
        assert code == expected_code, (argv, err)
        assert message in error_line(err), (argv, err)
        assert stdout == "", argv
    assert os.listdir(out) == [] and leftovers(data) == []
    assert_inputs_unchanged(packages, input_hashes)


# ----- calibrate ------------------------------------------------------------------------------
def test_calibrate_equals_the_library_force_and_json(
    run_main: Main, packages: Packages, tmp_path: Path
) -> None:
    stats_path = tmp_path / "stats.npz"
    samples = random_samples(specs(packages.ios18), 3, seed=2)
    expected = collect_activation_stats(str(packages.ios18), samples)
    code, out, err = run_main("calibrate", packages.ios18, "-o", stats_path, "--random-inputs", 3,
                              "--seed", 2)
    assert code == 0 and err == ""
    saved = ActivationStats.load(stats_path)
    assert sorted(saved.entries) == sorted(expected.entries) and len(saved) == 3
    for key, entry in expected.entries.items():
        np.testing.assert_array_equal(saved.entries[key].sum_squares, entry.sum_squares)
        assert saved.entries[key].rows == entry.rows
    conv = expected.get("conv1_weight_0")
    assert conv is not None and conv.rows == 3 * 6 * 6 and conv.channels == 8
    assert "3 weight(s) of function main calibrated on 3 random sample(s)" in out
    assert f"wrote {stats_path}" in out
    assert any(line.split()[:3] == ["conv1_weight_0", "8", "108"]
               for line in out.splitlines())
    before = stats_path.read_bytes()
    code, out, err = run_main("calibrate", packages.ios18, "-o", stats_path, "--random-inputs", 1)
    assert code == 1 and "already exists (use --force to replace it)" in error_line(err)
    assert stats_path.read_bytes() == before
    code, out, err = run_main("calibrate", packages.ios18, "-o", stats_path, "--random-inputs", 1,
                              "--force", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["inputs"] == {"random_inputs": 1, "seed": 0, "int_range": [0, 100]}
    rows = {w["name"]: w["rows"] for w in data["weights"]}
    assert rows == {name: entry.rows for (_, name), entry in ActivationStats.load(stats_path).entries.items()}
    assert rows["conv1_weight_0"] == 36
    assert stats_path.read_bytes() != before and leftovers(tmp_path) == []


def test_calibrate_gram_equals_the_library(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    stats_path = tmp_path / "gram.npz"
    samples = random_samples(specs(packages.ios18), 2, seed=4)
    expected = collect_activation_stats(str(packages.ios18), samples, gram=True)
    code, out, err = run_main("calibrate", packages.ios18, "-o", stats_path, "--random-inputs", 2,
                              "--seed", 4, "--gram")
    assert code == 0 and err == ""
    saved = ActivationStats.load(stats_path)
    grams = {key: entry.gram for key, entry in expected.entries.items() if entry.gram is not None}
    assert grams and all(saved.entries[key].gram is not None for key in grams)
    for key, gram in grams.items():
        np.testing.assert_array_equal(saved.entries[key].gram, gram)
    # a conv weight: one Gram matrix per group over its C_in/groups x kH x kW patches (8 x 3 x 3)
    assert saved.get("conv1_weight_0").gram.shape == (1, 72, 72)


def test_calibrate_multifunction_and_data(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    code, out, err = run_main("calibrate", packages.multi, "-o", tmp_path / "p.npz", "--data",
                              tmp_path / "x.npz", "--function", "palettized", "--json")
    assert code == 0, err
    saved = ActivationStats.load(tmp_path / "p.npz")
    expected = collect_activation_stats(str(packages.multi), list({"x": s} for s in x),
                                        function_name="palettized")
    assert sorted(saved.entries) == sorted(expected.entries)
    assert {key[0] for key in saved.entries} == {"palettized"}
    for key, entry in expected.entries.items():
        np.testing.assert_array_equal(saved.entries[key].sum_squares, entry.sum_squares)


# ----- sweep with output quality --------------------------------------------------------------
def test_sweep_quality_rows_equal_compare_on_what_prune_writes(
    run_main: Main, packages: Packages, work: Path
) -> None:
    code, out, err = run_main("sweep", packages.ios18, "--sparsities", "0.5",
                              "--patterns", "unstructured,n:m:2:4", "--random-inputs", 2,
                              "--seed", 9, "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["output_quality"] == {
        "function": "main", "backend": "reference",
        "inputs": {"random_inputs": 2, "seed": 9, "int_range": [0, 100]},
    }
    samples = random_samples(specs(packages.ios18), 2, seed=9)
    runs = {(r["pattern"], r["sparsity"]): r for r in data["runs"]}
    for point, written in ((("unstructured", 0.5), "half"), (("n:m:2:4", 0.5), "nm")):
        expected = compare(str(packages.ios18), str(work / f"{written}.mlpackage"), samples)
        assert runs[point]["quality"] == as_json(expected.to_dict()), point
        assert runs[point]["relative_error"] > 0  # the weight-space column stays
    code, out, err = run_main("sweep", packages.ios18, "--sparsities", "0.5",
                              "--patterns", "unstructured", "--random-inputs", 2, "--seed", 9)
    assert code == 0 and err == ""
    expected = compare(str(packages.ios18), str(work / "half.mlpackage"), samples)
    header, original, row = out.splitlines()[:3]
    assert header.split()[8:] == ["out", "rel.L2", "out", "cosine", "out", "SNR", "dB", "out", "max",
                                  "abs", "out", "top-1", "worst", "weight", "(error)"]
    worst = expected.worst()
    assert row.split()[6:11] == [
        f"{worst['relative_l2']:.4f}", f"{worst['cosine']:.5f}", f"{worst['snr_db']:.2f}",
        f"{worst['max_abs_error']:.4g}", f"{worst['top1_agreement']:.4f}"]
    assert "outputs: function main, backend reference, 2 random sample(s) (seed 9" in out


def test_sweep_function_of_a_multifunction_package(
    run_main: Main, packages: Packages, work: Path
) -> None:
    """Both functions are pruned; --function picks whose outputs are compared."""
    samples = random_samples(specs(packages.multi), 2, seed=1)
    worst = {}
    for function in ("dense", "palettized"):
        code, out, err = run_main("sweep", packages.multi, "--sparsities", "0.5",
                                  "--random-inputs", 2, "--seed", 1, "--function", function,
                                  "--json")
        assert code == 0, err
        data = json.loads(out)
        assert data["output_quality"]["function"] == function
        worst[function] = data["runs"][0]["quality"]["worst"]["relative_l2"]
    # the dense function's weights are pruned at 50%; the palettized one's are not magnitude-pruned
    assert worst["dense"] == pytest.approx(
        compare(str(packages.ios18), str(work / "half.mlpackage"),
                samples).worst_relative_l2, rel=1e-6)
    assert worst["palettized"] < worst["dense"]


def test_sweep_data_and_plot_of_output_error(
    run_main: Main, packages: Packages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figure_module = pytest.importorskip("matplotlib.figure")
    drawn: list[Any] = []
    real_savefig = figure_module.Figure.savefig

    def savefig(self: Any, *args: Any, **kwargs: Any) -> Any:
        drawn.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(figure_module.Figure, "savefig", savefig)
    x = np.random.default_rng(5).standard_normal((2, 1, 8, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    plot = tmp_path / "s.png"
    code, out, err = run_main("sweep", packages.ios18, "--sparsities", "0.5,0.9", "--data",
                              tmp_path / "x.npz", "--plot", plot, "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    errors = [r["quality"]["worst"]["relative_l2"] for r in data["runs"]]
    assert data["output_quality"]["inputs"] == {"data": str(tmp_path / "x.npz"), "samples": 2}
    axes = drawn[-1].axes[0]
    assert axes.get_ylabel() == "output relative L2 error (worst output)"
    assert list(axes.lines[0].get_ydata()) == pytest.approx(errors[::-1])  # sorted by size
    assert plot.read_bytes().startswith(b"\x89PNG")
    code, out, err = run_main("sweep", packages.ios18, "--sparsities", "0.5", "--plot", plot)
    assert code == 0 and "out rel.L2" not in out
    axes = drawn[-1].axes[0]
    assert axes.get_ylabel() == "weight error (relative Frobenius norm)"


# ----- terminal -------------------------------------------------------------------------------
def test_progress_bars_on_a_terminal_only_never_with_json(
    run_main: Main, packages: Packages, work: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pruned = work / "half.mlpackage"
    monkeypatch.setattr(cli._common, "isatty", lambda stream: True)
    code, _, err = run_main("compare", packages.ios18, pruned, "--random-inputs", 2)
    assert code == 0 and "compare:" in err and "/2" in err
    code, _, err = run_main("calibrate", packages.ios18, "-o", tmp_path / "a.npz",
                            "--random-inputs", 2)
    assert code == 0 and "calibrate" in err
    code, _, err = run_main("sweep", packages.ios18, "--sparsities", "0.5", "--random-inputs", 2)
    assert code == 0 and "original outputs" in err
    for argv in (["compare", packages.ios18, pruned, "--random-inputs", 2, "--json"],
                 ["calibrate", packages.ios18, "-o", tmp_path / "b.npz", "--random-inputs", 2,
                  "--json"],
                 ["sweep", packages.ios18, "--sparsities", "0.5", "--random-inputs", 2, "--json"]):
        code, out, err = run_main(*argv)
        assert code == 0 and err == "" and json.loads(out)


def test_help(run_main: Main) -> None:
    for command, words in (("compare", ["--data", "--random-inputs", "--int-range", "--backend",
                                        "--function", "float32"]),
                           ("calibrate", ["--data", "--random-inputs", "--force", "-o"]),
                           ("sweep", ["--data", "--random-inputs", "--backend"])):
        code, out, _ = run_main(command, "--help")
        assert code == 0 and all(word in out for word in words), command


# ----- subprocesses ---------------------------------------------------------------------------
def test_subprocess_compare_and_calibrate(packages: Packages, work: Path, tmp_path: Path) -> None:
    module = [sys.executable, "-m", "mil_sparsity.cli"]
    stats = tmp_path / "stats.npz"
    commands = {
        "compare": module + ["compare", str(packages.ios18), str(work / "nm.mlpackage"),
                             "--random-inputs", "2", "--seed", "3", "--json"],
        "calibrate": module + ["calibrate", str(packages.ios18), "-o", str(stats),
                               "--random-inputs", "2", "--seed", "3"],
        "coreml": module + ["compare", str(packages.ios18), str(packages.ios18),
                            "--random-inputs", "1", "--backend", "coreml"],
    }
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = {name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env, cwd=tmp_path)
             for name, argv in commands.items()}
    done = {name: (proc.communicate(timeout=300), proc.returncode) for name, proc in procs.items()}
    samples = random_samples(specs(packages.ios18), 2, seed=3)
    (out, err), code = done["compare"]
    assert code == 0, err
    expected = compare(str(packages.ios18), str(work / "nm.mlpackage"), samples)
    assert {k: v for k, v in json.loads(out).items() if k in ("samples", "outputs", "worst")} \
        == as_json(expected.to_dict())
    (out, err), code = done["calibrate"]
    assert code == 0, err
    assert [line for line in err.splitlines() if not IMPORT_NOISE.match(line)] == []
    assert f"wrote {stats}" in out
    expected_stats = collect_activation_stats(str(packages.ios18), samples)
    saved = ActivationStats.load(stats)
    for key, entry in expected_stats.entries.items():
        np.testing.assert_array_equal(saved.entries[key].sum_squares, entry.sum_squares)
    if not ON_MACOS:
        (out, err), code = done["coreml"]
        assert code == 2 and out == ""
        assert "only exists on macOS" in error_line(err)
