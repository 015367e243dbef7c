"""The cost of our pass inside a real ``ct.convert`` (issue 13, item 4).

Run ``python benchmarks/bench_convert.py`` (``--json`` for machine-readable output). A
transformers BertModel of BERT-base size (12 layers, hidden 768, 3072 intermediate, vocabulary
30522, random init from seed 0; ``tests/_zoo.py``) is traced once, then converted to an iOS18
ML Program ``--repeats`` times each way, alternating:

* ``dense``: ``ct.convert`` with the DEFAULT pass pipeline;
* ``pruned``: ``ct.convert`` with ``mil_sparsity::prune_by_magnitude`` (magnitude 0.5)
  appended to DEFAULT.

The pass's own time is measured twice: inside the pruned conversion (its ``apply`` wrapped in
a timer), and alone on each dense conversion's program (what the appended pass receives:
DEFAULT already ran). Reported: median wall times, the difference pruned - dense, the pass's
times and its share of the pruned conversion's total time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from typing import Any, Iterator

os.environ.setdefault("TQDM_DISABLE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the model zoo
sys.path.insert(0, HERE)

from bench_passes import machine  # noqa: E402

TARGET_SPARSITY = 0.5


def bert_base(sequence: int) -> Any:
    import torch

    import _zoo

    torch.manual_seed(0)
    return _zoo.bert(layers=12, hidden=768, heads=12, intermediate=3072, batch=1, sequence=sequence, vocab=30522)


def pruning_pipeline() -> Any:
    import coremltools as ct

    import mil_sparsity as ms

    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": ms.MagnitudeConfig(target_sparsity=TARGET_SPARSITY)})
    return pipeline


def pass_alone(prog: Any) -> float:
    """Seconds of the pass on a converted program (the program is modified)."""
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    import mil_sparsity as ms

    graph_pass = PASS_REGISTRY[ms.PRUNE_BY_MAGNITUDE]
    graph_pass.config = ms.MagnitudeConfig(target_sparsity=TARGET_SPARSITY)
    start = time.perf_counter()
    graph_pass.apply(prog)
    return time.perf_counter() - start


@contextlib.contextmanager
def timing_the_pass(times: list[float]) -> Iterator[None]:
    """Append the seconds of every ``prune_by_magnitude`` apply to ``times`` while active."""
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    import mil_sparsity as ms

    cls = type(PASS_REGISTRY[ms.PRUNE_BY_MAGNITUDE])
    own = cls.__dict__.get("apply")
    original = cls.apply

    def timed_apply(self: Any, prog: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, prog)
        finally:
            times.append(time.perf_counter() - start)

    cls.apply = timed_apply
    try:
        yield
    finally:
        if own is None:
            del cls.apply
        else:
            cls.apply = own


def measure(repeats: int, sequence: int) -> dict[str, Any]:
    import coremltools as ct

    zoo = bert_base(sequence)
    start = time.perf_counter()
    zoo.traced  # noqa: B018 (traced once, outside the timings)
    trace_s = time.perf_counter() - start
    dense: list[float] = []
    pruned: list[float] = []
    alone: list[float] = []
    inside: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        model = zoo.convert(ct.target.iOS18, ct.precision.FLOAT16)
        dense.append(time.perf_counter() - start)
        alone.append(pass_alone(model._mil_program))
        del model
        applied: list[float] = []
        with timing_the_pass(applied):
            start = time.perf_counter()
            model = zoo.convert(ct.target.iOS18, ct.precision.FLOAT16, pass_pipeline=pruning_pipeline())
            pruned.append(time.perf_counter() - start)
        inside.append(sum(applied))
        del model
        print(
            f"dense {dense[-1]:.1f} s, pruned {pruned[-1]:.1f} s, pass inside {inside[-1]:.2f} s, "
            f"alone {alone[-1]:.2f} s",
            file=sys.stderr,
        )
    row = {
        "model": f"BERT-base (seq {sequence})",
        "repeats": repeats,
        "trace_s": trace_s,
        "dense_convert_s": statistics.median(dense),
        "pruned_convert_s": statistics.median(pruned),
        "pass_inside_s": statistics.median(inside),
        "pass_alone_s": statistics.median(alone),
    }
    row["difference_s"] = row["pruned_convert_s"] - row["dense_convert_s"]
    row["pass_share_of_pruned_convert"] = row["pass_inside_s"] / row["pruned_convert_s"]
    return row


def markdown(row: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| model | ct.convert, DEFAULT (s) | ct.convert, DEFAULT + prune_by_magnitude 0.5 (s) | difference (s) "
            "| pass inside convert (s) | pass alone (s) | pass share of total |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| {row['model']} | {row['dense_convert_s']:.1f} | {row['pruned_convert_s']:.1f} | "
            f"{row['difference_s']:+.1f} | {row['pass_inside_s']:.2f} | {row['pass_alone_s']:.2f} | "
            f"{100 * row['pass_share_of_pruned_convert']:.1f}% |",
            "",
            f"(median of {row['repeats']} alternating runs; tracing, done once, took {row['trace_s']:.1f} s)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    row = measure(args.repeats, args.sequence)
    print(json.dumps({"machine": machine(), "row": row}, indent=2) if args.json else markdown(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
