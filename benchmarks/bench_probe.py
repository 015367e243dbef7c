"""What a probe costs: BERT-base re-evaluated after an override of a weight in its last encoder
layer, from activations cached once, against a full run with the same override.

The model is bench_reference.py's (random-init ``transformers`` BertModel, default 12 layers,
hidden 768, batch 8, sequence 128, float32; ``--package`` reuses a conversion saved by either
benchmark). The probed weight (default: the last layer's attention query weight, the first
weight that layer reads, so the probe re-runs the whole layer) is magnitude-pruned to half.

- ``cut = evaluator.cut_before([weight])``: the values the rest of the graph reads from before
  the weight's first reader (the last layer's input hidden state and the additive attention
  mask), cached once with ``evaluator.run(inputs, outputs=cut)``;
- probe: ``evaluator.run({}, start=cached, overrides={weight: pruned})`` (no function input is
  needed: the mask chain is in the cache);
- full: ``evaluator.run(inputs, overrides={weight: pruned})``.

Timed in one process, alternating, one warm-up each, then the median of ``--repeats`` each.
Prints both medians, their ratio (the goal: at most 0.1) and the ops each run evaluates, and
checks that the probe's outputs equal the full run's (``assert_allclose``).

Usage: python benchmarks/bench_probe.py [--layers 12] [--repeats 5] [--weight NAME] [--json]
       [--package PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the model zoo

from bench_reference import build_zoo, seconds  # noqa: E402


def op_counts(evaluator: Any, *args: Any, **kwargs: Any) -> Counter[str]:
    """The op types a run evaluates (consts not counted), from its capture callbacks."""
    counts: Counter[str] = Counter()

    def capture(op: Any, _inputs: Any, _outputs: Any) -> None:
        if op.op_type != "const":
            counts[op.op_type] += 1

    evaluator.run(*args, capture, **kwargs)
    return counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    import coremltools as ct

    from mil_sparsity.reference import ReferenceEvaluator

    zoo = build_zoo(args)
    if args.package and os.path.exists(args.package):
        mlmodel = ct.models.MLModel(args.package, skip_model_load=True)
    else:
        mlmodel = zoo.convert(ct.target.iOS16, ct.precision.FLOAT32)
        if args.package:
            mlmodel.save(args.package)
    evaluator = ReferenceEvaluator(mlmodel)
    inputs = zoo.random_inputs(1)
    weight = args.weight or f"model_encoder_layer_{args.layers - 1}_attention_self_query_weight"
    main = evaluator.program.functions["main"]
    (dense,) = [op.outputs[0].val for op in main.operations if str(op.outputs[0].name) == weight]
    pruned = np.where(np.abs(dense) >= np.median(np.abs(dense)), dense, 0).astype(dense.dtype)
    overrides = {weight: pruned}

    cut = evaluator.cut_before([weight])
    start = time.perf_counter()
    cached = evaluator.run(inputs, outputs=list(cut))
    cache_s = time.perf_counter() - start

    def probe() -> Any:
        return evaluator.run({}, start=cached, overrides=overrides)

    def full() -> Any:
        return evaluator.run(inputs, overrides=overrides)

    got, want = probe(), full()  # warm-up, and the check
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    deviation = {name: float(np.abs(got[name] - want[name]).max()) for name in want}
    probe_s, full_s = [], []
    for _ in range(args.repeats):
        probe_s.append(seconds(probe))
        full_s.append(seconds(full))
    probe_ops = op_counts(evaluator, {}, start=cached, overrides=overrides)
    full_ops = op_counts(evaluator, inputs, overrides=overrides)
    return {
        "model": {"layers": args.layers, "hidden": args.hidden, "batch": args.batch, "sequence": args.sequence},
        "weight": weight,
        "cached_values": {name: list(np.shape(value)) for name, value in cached.items()},
        "cache_seconds": round(cache_s, 4),
        "probe_seconds": round(statistics.median(probe_s), 4),
        "full_seconds": round(statistics.median(full_s), 4),
        "ratio": round(statistics.median(probe_s) / statistics.median(full_s), 3),
        "probe_runs": [round(s, 4) for s in probe_s],
        "full_runs": [round(s, 4) for s in full_s],
        "probe_ops": sum(probe_ops.values()),
        "full_ops": sum(full_ops.values()),
        "probe_op_types": dict(sorted(probe_ops.items())),
        "max_abs_probe_minus_full": deviation,
        "load_average": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weight", help="the const to override (default: last layer's query weight)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--package", help="where to keep the converted model between runs")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    model = result["model"]
    print(
        f"BERT {model['layers']} layers, hidden {model['hidden']}, batch {model['batch']}, sequence "
        f"{model['sequence']} (float32); override of {result['weight']}"
    )
    print(f"  cached once: {result['cached_values']} in {result['cache_seconds']:.3f} s")
    print(f"  probe from the cache  {result['probe_seconds']:.3f} s  ({result['probe_ops']} ops, median of {len(result['probe_runs'])})")
    print(f"  full run              {result['full_seconds']:.3f} s  ({result['full_ops']} ops)")
    print(f"  ratio                 {result['ratio']:.3f}  (goal: at most 0.1)")
    print(f"  probe == full run: max |difference| {result['max_abs_probe_minus_full']}")
    print(f"  load average {result['load_average']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
