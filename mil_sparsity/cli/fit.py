"""``mil-sparsity fit MODEL --data SAMPLES.npz (--max-size R | --min-cosine C) -o OUT``:
prune each weight as far as a budget allows (:func:`mil_sparsity.fit`).

Prints the plan (one line per weight: the pattern and method chosen, its bytes, the quality
of the probe that measured it) and the size and quality reached; writes OUT atomically.
``--plan FILE.json`` writes the selector (``OpSelector.to_dict()``), which ``prune --config``
takes, with ``--calibration`` when the plan's methods need statistics. ``--plot FILE.png``
draws each weight's probe curve (probe cosine against sparsity) with the chosen point.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

import mil_sparsity as ms
from mil_sparsity.cli._common import (
    CLIError,
    Commands,
    UsageError,
    add_json,
    check_output,
    emit,
    emit_json,
    load_mlmodel,
    name_list,
    number,
    one_line,
)
from mil_sparsity.cli._inputs import add_sample_options, check_sample_options, function_of, read_samples
from mil_sparsity.cli._plot import PLOT_INSTALL_HINT, check_plot_path, matplotlib_figure, save_figure
from mil_sparsity.fit import COMPUTE_UNITS, METHODS
from mil_sparsity.kernels.palettize import PALETTE_NBITS


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "fit",
        help="prune each weight as far as a size or quality budget allows",
        description="Measure what pruning each weight alone does to the model's outputs on the "
        "samples (at several sparsities and patterns, with the reference evaluator), then choose "
        "each weight's setting to meet the budget: --max-size R (stored weight bytes over the "
        "input's) or --min-cosine C (the worst output's mean cosine against the input model, "
        "verified on the samples). Writes OUT atomically; the input is not modified.",
    )
    parser.add_argument("model", metavar="MODEL", help="an ML Program .mlpackage")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the .mlpackage to write")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-size", type=number, metavar="R", help="size budget in (0, 1]")
    budget.add_argument("--min-cosine", type=number, metavar="C", help="quality floor in (0, 1]")
    add_sample_options(parser, required=True, backend=False)
    parser.add_argument("--calibration", metavar="STATS.npz",
                        help="activation statistics (mil-sparsity calibrate --gram); default: "
                        "collected from the samples")
    parser.add_argument("--methods", type=name_list, metavar="M1,M2",
                        help=f"methods in order of preference, from {','.join(METHODS)} (default: all)")
    parser.add_argument("--compute-unit", choices=COMPUTE_UNITS, default="all",
                        help="all: size only; ane / cpu: only patterns that unit can skip")
    parser.add_argument("--palettize-nbits", type=int, metavar="N", choices=PALETTE_NBITS,
                        help="also palettize every pruned weight's kept values to 2**N entries "
                        "(joint sparse + palettized storage, iOS18+; --plan covers the pruning only)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="probe processes (joblib; -1: every core)")
    parser.add_argument("--plan", metavar="FILE.json", help="write the chosen selector (prune --config takes it)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help=f"draw each weight's probe curve and the chosen point ({PLOT_INSTALL_HINT})")
    parser.add_argument("--force", action="store_true", help="replace OUT (and --plan) if they exist")
    add_json(parser, "the plan and quality")
    parser.set_defaults(run=run)


def _check(args: argparse.Namespace) -> Optional[Any]:
    check_sample_options(args, "fit")
    check_output(args.output, args.model, args.force)
    if args.plan is not None:
        if not args.plan.endswith(".json"):
            raise UsageError(f"fit: --plan must end with .json, got {args.plan!r}")
        try:
            ms.check_destination(args.plan, overwrite=args.force)
        except FileExistsError as error:
            raise CLIError(f"{error} (use --force to replace it)") from None
        except (OSError, ValueError) as error:
            raise CLIError(f"--plan: {error}") from None
    if args.plot is None:
        return None
    figure_module = matplotlib_figure()
    check_plot_path(figure_module, args.plot, "fit")
    return figure_module


def run(args: argparse.Namespace) -> int:
    figure_module = _check(args)
    mlmodel = load_mlmodel(args.model)
    function = function_of(mlmodel, args.model, args, "fit")
    samples = read_samples(args, mlmodel, args.model, function)
    try:
        result = ms.fit(
            args.model, samples, max_size_ratio=args.max_size, min_cosine=args.min_cosine,
            calibration=args.calibration, methods=args.methods, compute_unit=args.compute_unit,
            n_jobs=args.jobs, progress=False if args.json else None, function_name=function,
            palettize_nbits=args.palettize_nbits,
        )
    except (NotImplementedError, ValueError, TypeError) as error:
        message = one_line(error)
        if " must be " in message:  # an option's value out of its range: a usage error
            raise UsageError(f"fit: {message}") from None
        raise CLIError(f"fit: {message}") from None
    try:
        with ms.atomic_output(args.output, overwrite=args.force) as staging:
            result.model.save(staging)
        if args.plan is not None:
            with ms.atomic_output(args.plan, overwrite=args.force) as staging:
                with open(staging, "w") as handle:
                    json.dump(result.selector.to_dict(), handle, indent=2)
    except Exception as error:
        raise CLIError(f"cannot write the result: {one_line(error)}") from None
    if figure_module is not None:
        _plot(figure_module, args.plot, result)
    _print(args, result)
    return 0


def _print(args: argparse.Namespace, result: ms.FitResult) -> None:
    if args.json:
        emit_json({
            "model": args.model,
            "output": args.output,
            "budget": result.budget,
            "size_ratio": result.size_ratio,
            "quality": result.quality.to_dict(),
            "plan": [item.to_dict() for item in result.plan],
            "probes": [row.to_dict() for row in result.probes],
            "notes": list(result.report.notes),
        })
        return
    lines = [result.format_plan(), *result.report.notes, f"wrote {args.output}"]
    if args.plan:
        lines.append(f"wrote {args.plan}")
    if args.plot:
        lines.append(f"wrote {args.plot}")
    emit("\n".join(lines))


def _plot(figure_module: Any, path: str, result: ms.FitResult) -> None:
    """Probe cosine against sparsity, one curve per weight, the chosen point circled."""
    figure = figure_module.Figure(figsize=(8, 5), layout="constrained")
    axes = figure.subplots()
    for item in result.plan:
        rows = sorted((r for r in result.probes if r.weight == item.weight), key=lambda r: r.sparsity)
        xs, ys = [0.0] + [r.sparsity for r in rows], [1.0] + [r.quality for r in rows]
        (line,) = axes.plot(xs, ys, marker=".", linewidth=1, label=item.weight)
        axes.plot([item.sparsity], [item.probe_quality], marker="o", markersize=10,
                  markerfacecolor="none", color=line.get_color())
    axes.set_xlabel("sparsity of the weight (pruned alone)")
    axes.set_ylabel("worst output mean cosine")
    axes.set_title(f"mil-sparsity fit ({result.budget}): circles = chosen")
    axes.grid(True, alpha=0.3)
    if len(result.plan) <= 12:
        axes.legend(fontsize=7)
    save_figure(figure, path)
