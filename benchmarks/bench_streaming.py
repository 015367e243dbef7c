"""Streaming vs PyMIL vs coremltools on large saved packages (wall time and peak RSS).

Run ``python benchmarks/bench_streaming.py`` (``--json`` for machine-readable output;
``--params 100000000,1000000000`` by default). For each size a fp16 .mlpackage of 4096x4096
linear layers is generated and saved once; then, each in a fresh subprocess:

* ``streaming``: ``mil_sparsity.streaming.compress_package`` (one weight at a time);
* ``pymil``: ``mil_sparsity.apply_pipeline(..., streaming=False)`` (whole program in PyMIL);
* ``coremltools``: ``coremltools.optimize.coreml.prune_weights``;

all with magnitude pruning at 0.75. ``baseline`` is the interpreter with coremltools imported.
The memory target checked: streaming peak RSS <= baseline + 1.5 x the largest weight + 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_passes import machine, run_child, save_package  # noqa: E402

MODES = ("streaming", "pymil", "coremltools")


def measure(params: int, size: int, modes: tuple[str, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as workdir:
        src = os.path.join(workdir, "dense.mlpackage")
        save_package(params, size, src)
        row: dict[str, Any] = {"params": params, "largest_weight_mb": size * size * 2 / 2**20}
        row["baseline_rss_mb"] = run_child(src, os.path.join(workdir, "none"), "baseline")[1] / 2**20
        for mode in modes:
            wall, rss = run_child(src, os.path.join(workdir, f"{mode}.mlpackage"), mode)
            row[f"{mode}_wall_s"] = wall
            row[f"{mode}_rss_mb"] = rss / 2**20
            print(f"{params / 1e6:.0f}M {mode}: {wall:.1f} s, {rss / 2**20:.0f} MB", file=sys.stderr, flush=True)
    row["rss_budget_mb"] = row["baseline_rss_mb"] + 1.5 * row["largest_weight_mb"] + 300
    if "pymil_wall_s" in row:
        row["streaming_over_pymil_wall"] = row["streaming_wall_s"] / row["pymil_wall_s"]
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| params | mode | wall (s) | peak RSS (MB) |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        for mode in MODES:
            if f"{mode}_wall_s" in row:
                lines.append(
                    f"| {row['params'] / 1e6:.0f}M | {mode} | {row[f'{mode}_wall_s']:.1f} | {row[f'{mode}_rss_mb']:.0f} |"
                )
        lines.append(
            f"| {row['params'] / 1e6:.0f}M | (baseline: interpreter + coremltools) | - | {row['baseline_rss_mb']:.0f} |"
        )
    lines.append("")
    for row in rows:
        text = (
            f"- {row['params'] / 1e6:.0f}M: streaming peak {row['streaming_rss_mb']:.0f} MB vs budget "
            f"{row['rss_budget_mb']:.0f} MB (baseline + 1.5 x {row['largest_weight_mb']:.0f} MB + 300 MB)"
        )
        if "streaming_over_pymil_wall" in row:
            text += f"; wall time streaming / PyMIL = {row['streaming_over_pymil_wall']:.2f}"
        lines.append(text)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="100000000,1000000000", help="comma list of model sizes")
    parser.add_argument("--size", type=int, default=4096, help="layers are size x size (default 4096)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of " + ",".join(MODES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    rows = [measure(int(p), args.size, modes) for p in args.params.split(",")]
    result = {"machine": machine(), "rows": rows}
    print(json.dumps(result, indent=2) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
