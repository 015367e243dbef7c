"""Sequential vs one-shot calibration for SparseGPT and ADMM on the transformers zoo.

For each family of ``tests/_zoo.py`` asked (default GPT-2, BERT and ViT: 2 layers, hidden 64,
random init; converted to iOS18 float32), the statistics are collected on ``--calibration``
random input samples once on the dense model (one-shot) and once sequentially per setting and
method (``collect_activation_stats(..., sequential=config)``); every weight the config selects
(``global_config``, default weight_threshold) is pruned with each, and the pruned model is
compared with the dense one on ``--eval`` other random samples: the worst output's mean cosine
and relative L2 (:mod:`mil_sparsity.quality`). Prints a Markdown table
``family | setting | method | calibration | cosine | rel L2`` and the seconds each calibration
took.

Usage: python benchmarks/bench_sequential.py [--families gpt2 bert vit] [--calibration 32]
       [--eval 32] [--settings 50% 2:4] [--methods sparsegpt admm] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Optional, Sequence

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the model zoo

SETTINGS = {
    "50%": lambda method: {"kind": "magnitude", "target_sparsity": 0.5, "method": method},
    "2:4": lambda method: {"kind": "n_m", "n": 2, "m": 4, "method": method},
}


def measure(family: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    import coremltools as ct

    import _zoo
    import mil_sparsity as ms

    zoo = _zoo.build(family)
    dense = zoo.convert(ct.target.iOS18, ct.precision.FLOAT32)
    calibration = [zoo.random_inputs(seed=1000 + i) for i in range(args.calibration)]
    evaluation = ms.ReferenceOutputs.evaluate(dense, [zoo.random_inputs(seed=i) for i in range(args.eval)])
    started = time.perf_counter()
    one_shot = ms.collect_activation_stats(dense, calibration, gram=True, progress=False)
    one_shot_seconds = time.perf_counter() - started
    rows = []
    for setting in args.settings:
        for method in args.methods:
            config = ms.OpSelector(global_config=ms.config_from_dict(SETTINGS[setting](method)))
            started = time.perf_counter()
            sequential = ms.collect_activation_stats(dense, calibration, gram=True, sequential=config, progress=False)
            seconds = time.perf_counter() - started
            for label, stats, took in (("one-shot", one_shot, one_shot_seconds), ("sequential", sequential, seconds)):
                report = ms.SparsityReport()
                pruned = ms.prune_weights(dense, config, calibration=stats, report=report)
                worst = evaluation.compare(pruned).worst()
                rows.append({
                    "family": family, "setting": setting, "method": method, "calibration": label,
                    "weights": len(report.packed), "cosine": worst["cosine"],
                    "relative_l2": worst["relative_l2"], "seconds": round(took, 2),
                })
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| family | setting | method | calibration | weights | cosine | rel L2 | calibration s |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['family']} | {row['setting']} | {row['method']} | {row['calibration']} | "
            f"{row['weights']} | {row['cosine']:.4f} | {row['relative_l2']:.4f} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--families", nargs="+", default=["gpt2", "bert", "vit"])
    parser.add_argument("--calibration", type=int, default=32, help="calibration samples")
    parser.add_argument("--eval", type=int, default=32, help="evaluation samples")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=["sparsegpt", "admm"], choices=["sparsegpt", "admm"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = [row for family in args.families for row in measure(family, args)]
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
