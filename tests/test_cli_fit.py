"""``mil-sparsity fit`` in process: the plan table, --plan (which prune --config takes), --plot,
--json and the errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import mil_sparsity as ms

from _cli_support import Main, Packages, error_line, leftovers, packages, run_main  # noqa: F401
from mil_sparsity.inspect_model import stored_weight_bytes
from mil_sparsity.model.io import load_model, load_program
from mil_sparsity.inspect_model import weight_sources

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def weights_of(path: Path) -> dict[str, np.ndarray]:
    return {s.name: s.dense_value() for s in weight_sources(load_program(load_model(str(path))), 0)}


def test_fit_to_a_size_writes_the_model_the_plan_and_the_plot(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, plan, plot = tmp_path / "fit.mlpackage", tmp_path / "plan.json", tmp_path / "fit.png"
    code, text, err = run_main(
        "fit", packages.ios18, "-o", out, "--random-inputs", "3", "--max-size", "0.6",
        "--methods", "magnitude", "--plan", plan, "--plot", plot,
    )
    assert code == 0, err
    assert re.search(r"^budget max_size_ratio=0\.6: size \d+\.\d% of the input's weight bytes", text, re.M)
    assert re.search(r"^\S+\s+(dense|unstructured \d+%)\s", text, re.M)
    assert plot.read_bytes().startswith(b"\x89PNG")
    ratio = stored_weight_bytes(load_program(load_model(str(out)))) / stored_weight_bytes(
        load_program(load_model(str(packages.ios18))))
    assert ratio <= 0.6
    # the plan is a selector prune --config takes, and it reproduces the model bit for bit
    again = tmp_path / "again.mlpackage"
    code, _, err = run_main("prune", packages.ios18, "-o", again, "--config", plan)
    assert code == 0, err
    first, second = weights_of(out), weights_of(again)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert leftovers(tmp_path) == []


def test_fit_json(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    code, text, err = run_main(
        "fit", packages.ios18, "-o", tmp_path / "f.mlpackage", "--random-inputs", "2",
        "--min-cosine", "0.9", "--methods", "magnitude", "--compute-unit", "cpu", "--json",
    )
    assert code == 0, err
    data = json.loads(text)
    assert data["budget"] == "min_cosine=0.9"
    assert data["quality"]["worst"]["cosine"] >= 0.9
    assert {row["pattern"] for row in data["probes"]} <= {"8:16", "10:16", "12:16", "14:16"}


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--max-size", "1.5"], 2, ["max_size_ratio", "(0, 1]"]),
        (["--max-size", "0.01", "--methods", "magnitude"], 1, ["below what pruning can reach"]),
        (["--max-size", "0.5", "--methods", "nope"], 2, ["methods", "nope"]),
    ],
)
def test_fit_errors(run_main: Main, packages: Packages, tmp_path: Path, extra: list[str], code: int, words: list[str]) -> None:
    got, out, err = run_main("fit", packages.ios18, "-o", tmp_path / "f.mlpackage", "--random-inputs", "2", *extra)
    assert got == code, err
    line = error_line(err)
    for word in words:
        assert word in line
    assert out == "" and leftovers(tmp_path) == []


def test_fit_needs_exactly_one_budget(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    code, _, err = run_main("fit", packages.ios18, "-o", tmp_path / "f.mlpackage", "--random-inputs", "2")
    assert code == 2 and "--max-size" in error_line(err)
    code, _, err = run_main("fit", packages.ios18, "-o", tmp_path / "f.mlpackage", "--random-inputs", "2",
                            "--max-size", "0.5", "--min-cosine", "0.9")
    assert code == 2 and "not allowed with" in error_line(err)


def test_fit_palettize_nbits_stores_pruned_weights_jointly(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    out = tmp_path / "joint.mlpackage"
    code, text, err = run_main(
        "fit", packages.ios18, "-o", out, "--random-inputs", "2", "--max-size", "0.4",
        "--methods", "magnitude", "--palettize-nbits", "4",
    )
    assert code == 0, err
    assert "palettize_nbits=4" in text and "palettized to 4 bits" in text
    chains = [w.chain for w in ms.weights(str(out)) if w.chain]
    assert chains and all("constexpr_lut_to_sparse" in chain for chain in chains)
    ratio = stored_weight_bytes(load_program(load_model(str(out)))) / stored_weight_bytes(
        load_program(load_model(str(packages.ios18))))
    assert ratio <= 0.4
    code, _, err = run_main("fit", packages.ios18, "-o", tmp_path / "f.mlpackage", "--random-inputs", "2",
                            "--max-size", "0.4", "--palettize-nbits", "5")
    assert code == 2 and "--palettize-nbits" in error_line(err) and "5" in error_line(err)
