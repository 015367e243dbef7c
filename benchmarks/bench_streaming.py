"""Streaming vs PyMIL vs coremltools on large saved packages (wall time and peak RSS).

Run ``python benchmarks/bench_streaming.py`` (``--json`` for machine-readable output;
``--params 100000000,1000000000`` by default). For each size a fp16 .mlpackage of 4096x4096
linear layers is generated and saved once; then, each in a fresh subprocess:

* ``streaming``: ``mil_sparsity.streaming.compress_package`` (one weight at a time);
* ``pymil``: ``mil_sparsity.apply_pipeline(..., streaming=False)`` (whole program in PyMIL);
* ``coremltools``: ``coremltools.optimize.coreml.prune_weights``;

all with magnitude pruning at 0.75. ``baseline`` is the interpreter with coremltools imported.
The memory target checked: streaming peak RSS <= baseline + 1.5 x the largest weight + 300 MB.

``--llm`` instead measures an LLM-shaped package (magnitude 0.5, streaming only by default):
a 128256 x 4096 fp16 embedding (1 GB) read by a ``gather`` (``--llm-reader gather``) or as the
output layer by a ``linear`` (``--llm-reader linear``), plus two 4096 x 11008 MLP layers (86 MB
each); ``--llm-reader mlp`` leaves the embedding out (largest weight 86 MB, target 300 MB). Building it takes a few minutes and ~1.2 GB of disk (``BENCH_TMP`` chooses the temporary
directory; it is deleted afterwards). Target: streaming peak RSS over the baseline at most
0.5 x the largest weight.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_passes import machine, run_child, save_package  # noqa: E402

MODES = ("streaming", "pymil", "coremltools")
LLM_VOCAB, LLM_HIDDEN, LLM_FFN = 128256, 4096, 11008

_LLM_BUILD = """
import os, sys
os.environ["TQDM_DISABLE"] = "1"
import numpy as np
import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

vocab, hidden, ffn, reader, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rng = np.random.default_rng(3)

def normal(shape):
    out = np.empty(shape, np.float16)
    rows = max(1, (1 << 24) // shape[1])
    for start in range(0, shape[0], rows):
        out[start:start + rows] = rng.standard_normal((min(rows, shape[0] - start), shape[1]), dtype=np.float32)
    return out

up, down = normal((ffn, hidden)), normal((hidden, ffn))
embedding = normal((vocab, hidden)) if reader != "mlp" else None
if reader == "gather":
    specs = [mb.TensorSpec(shape=(1, 8), dtype=types.int32)]
else:
    specs = [mb.TensorSpec(shape=(1, hidden), dtype=types.fp16)]

@mb.program(input_specs=specs, opset_version=ct.target.iOS18)
def prog(x):
    h = mb.gather(x=embedding, indices=x, axis=0, name="embed") if reader == "gather" else x
    h = mb.linear(x=h, weight=up, name="up")
    h = mb.linear(x=h, weight=down, name="down")
    if reader == "linear":
        h = mb.linear(x=h, weight=embedding, name="lm_head")
    return h

del embedding, up, down
ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18).save(path)
"""


def save_llm_package(path: str, reader: str) -> None:
    """The LLM-shaped iOS18 package (see the module doc), built in a subprocess."""
    subprocess.run(
        [sys.executable, "-c", _LLM_BUILD, str(LLM_VOCAB), str(LLM_HIDDEN), str(LLM_FFN), reader, path],
        check=True,
        capture_output=True,
    )


def measure_llm(reader: str, modes: tuple[str, ...]) -> dict[str, Any]:
    """One row for the LLM-shaped package, magnitude 0.5."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as workdir:
        src = os.path.join(workdir, "llm.mlpackage")
        save_llm_package(src, reader)
        row: dict[str, Any] = {
            "params": (LLM_VOCAB * LLM_HIDDEN if reader != "mlp" else 0) + 2 * LLM_HIDDEN * LLM_FFN,
            "model": f"llm-{reader}",
            "largest_weight_mb": (LLM_VOCAB if reader != "mlp" else LLM_FFN) * LLM_HIDDEN * 2 / 2**20,
        }
        row["baseline_rss_mb"] = run_child(src, os.path.join(workdir, "none"), "baseline")[1] / 2**20
        for mode in modes:
            wall, rss = run_child(src, os.path.join(workdir, f"{mode}.mlpackage"), mode, "magnitude:0.5")
            row[f"{mode}_wall_s"] = wall
            row[f"{mode}_rss_mb"] = rss / 2**20
            print(f"llm-{reader} {mode}: {wall:.1f} s, {rss / 2**20:.0f} MB", file=sys.stderr, flush=True)
    # issue 13's targets: 0.5 x the largest weight over the baseline; 300 MB for the 86 MB case
    row["rss_budget_mb"] = row["baseline_rss_mb"] + (300 if reader == "mlp" else 0.5 * row["largest_weight_mb"])
    return row


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
        "| model | mode | wall (s) | peak RSS (MB, over baseline) |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        label = row.get("model", f"{row['params'] / 1e6:.0f}M")
        for mode in MODES:
            if f"{mode}_wall_s" in row:
                over = row[f"{mode}_rss_mb"] - row["baseline_rss_mb"]
                lines.append(
                    f"| {label} | {mode} | {row[f'{mode}_wall_s']:.1f} | {row[f'{mode}_rss_mb']:.0f} (+{over:.0f}) |"
                )
        lines.append(f"| {label} | (baseline: interpreter + coremltools) | - | {row['baseline_rss_mb']:.0f} |")
    lines.append("")
    for row in rows:
        label = row.get("model", f"{row['params'] / 1e6:.0f}M")
        text = (
            f"- {label}: streaming peak {row['streaming_rss_mb']:.0f} MB vs budget {row['rss_budget_mb']:.0f} MB "
            f"(largest weight {row['largest_weight_mb']:.0f} MB)"
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
    parser.add_argument("--llm", action="store_true", help="measure the LLM-shaped package instead (slow to build)")
    parser.add_argument("--llm-reader", default="gather", choices=("gather", "linear", "mlp"), help="op reading the embedding (mlp: no embedding, largest weight 86 MB)")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    if args.llm:
        rows = [measure_llm(args.llm_reader, modes if args.modes != ",".join(MODES) else ("streaming",))]
    else:
        rows = [measure(int(p), args.size, modes) for p in args.params.split(",")]
    result = {"machine": machine(), "rows": rows}
    print(json.dumps(result, indent=2) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
