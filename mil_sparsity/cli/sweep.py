"""``mil-sparsity sweep``: model size against weight error (and, with input samples, output
error) for several patterns and levels.

The options become :class:`~mil_sparsity.sweep.SweepPoint` s
(:func:`mil_sparsity.sweep.sweep_points`) and, with ``--data`` or ``--random-inputs``, the
original model's outputs on those samples (:class:`mil_sparsity.quality.ReferenceOutputs`,
evaluated once); :func:`mil_sparsity.sweep` measures every point, and this module only prints
the :class:`~mil_sparsity.SweepResult` (table or JSON) and draws it (``--plot``, with
matplotlib: size against output error when measured, weight error otherwise).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Iterator, Optional

import mil_sparsity as ms
from mil_sparsity.cli._common import (
    CLIError,
    Commands,
    UsageError,
    add_json,
    add_weight_threshold,
    emit,
    emit_json,
    float_list,
    integer,
    load,
    name_list,
    one_line,
    progress,
)
from mil_sparsity.cli._plot import PLOT_INSTALL_HINT, check_plot_path, matplotlib_figure, save_figure
from mil_sparsity.configs import ACTIVATION_SCORING, METHODS, PRUNE_METHOD, SCORINGS
from mil_sparsity.cli._inputs import (
    add_sample_options,
    check_sample_options,
    describe_samples,
    function_of,
    has_samples,
    read_samples,
    samples_line,
)
from mil_sparsity.quality import ReferenceOutputs
from mil_sparsity.sweep import (
    DEFAULT_SPARSITIES,
    SweepArgumentError,
    SweepPoint,
    SweepRow,
    sweep_points,
)



def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "sweep",
        help="model size vs weight error for several patterns and sparsities (writes no model)",
        description="For each pattern and sparsity level, run mil_sparsity::prune_by_magnitude "
        "on a freshly loaded copy of the program (nothing is written) and report the size "
        "of all weights as they would be stored and the weight error: the relative Frobenius "
        "error sqrt(sum ||W - W_pruned||^2) / sqrt(sum ||W||^2) over the pruned weights "
        "(float64), and the worst single weight's. With --data or --random-inputs, also the "
        "pruned model's output error against the original's on those samples (relative L2, "
        "cosine, SNR dB, max abs, top-1; the original is evaluated once). n:m patterns fix "
        "their own sparsity n/m and run once.",
    )
    parser.add_argument("model", metavar="MODEL", help="an ML Program .mlpackage (iOS16+)")
    parser.add_argument(
        "--sparsities",
        type=float_list,
        default=list(DEFAULT_SPARSITIES),
        metavar="LIST",
        help="comma-separated target sparsities (default 0.5,0.75,0.9)",
    )
    parser.add_argument(
        "--patterns",
        type=name_list,
        default=["unstructured"],
        metavar="LIST",
        help="comma-separated: unstructured, block:B, n:m:N:M (default unstructured)",
    )
    parser.add_argument(
        "--dim",
        type=integer,
        metavar="D",
        help="axis for block and n:m patterns (default: the reduction axis of the op reading "
        "each weight)",
    )
    add_weight_threshold(parser)
    parser.add_argument(
        "--scoring",
        choices=SCORINGS,
        help="rank by |w| (magnitude, default) or |w| x input RMS (activation, Wanda; needs "
        "--calibration)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="prune (default), or sparsegpt / admm: update the kept weights (unstructured and "
        "n:m patterns; needs --calibration with Gram matrices, `calibrate --gram`)",
    )
    parser.add_argument(
        "--calibration",
        metavar="STATS.npz",
        help="activation statistics (`mil-sparsity calibrate`) for --scoring activation or "
        "--method sparsegpt/admm",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw size vs error, one curve per pattern: output relative L2 error with "
        f"--data/--random-inputs, weight error otherwise (needs matplotlib: {PLOT_INSTALL_HINT})",
    )
    add_sample_options(parser, required=False)
    add_json(parser)
    parser.set_defaults(run=run)


def points(args: argparse.Namespace) -> tuple[list[SweepPoint], list[str]]:
    """The sweep points of the options, in run order, and notes for the output."""
    try:
        found = sweep_points(
            args.patterns, args.sparsities, dim=args.dim, weight_threshold=args.weight_threshold,
            scoring=args.scoring, method=args.method,
        )
    except SweepArgumentError as error:
        if error.argument == "dim":
            raise UsageError("sweep: --dim goes with block:B or n:m:N:M patterns") from None
        raise UsageError(f"sweep: --{error.argument}: {one_line(error.detail)}") from None
    if (args.scoring == ACTIVATION_SCORING or args.method not in (None, PRUNE_METHOD)) and args.calibration is None:
        raise UsageError("sweep: --scoring activation and --method sparsegpt/admm need --calibration "
                         "STATS.npz (write one with `mil-sparsity calibrate`, --gram for the methods)")
    notes = [
        f"{point.pattern} fixes its sparsity at {point.config.n}/{point.config.m} = "
        f"{point.sparsity:.3f} and runs once (--sparsities does not apply to it)"
        for point in found
        if isinstance(point.config, ms.NMConfig)
    ]
    return found, notes


def _with_bar(found: list[SweepPoint], quiet: bool) -> Iterator[SweepPoint]:
    bar = progress(found, desc="sweep", quiet=quiet)
    try:
        for point in bar:
            bar.set_postfix_str(f"{point.pattern} {point.sparsity:.2f}")
            yield point
    finally:
        bar.close()


def _reference_outputs(args: argparse.Namespace, mlmodel: Any) -> Optional[ReferenceOutputs]:
    """The original's outputs on the samples of --data/--random-inputs (None without)."""
    if not has_samples(args):
        return None
    function = function_of(mlmodel, args.model, args, "sweep")
    samples = read_samples(args, mlmodel, args.model, function)
    bar = progress(samples, total=len(samples), desc="original outputs", quiet=args.json)
    try:
        return ReferenceOutputs.evaluate(
            args.model if args.backend == "coreml" else mlmodel,
            bar,
            backend=args.backend,
            function_name=function,
            progress=False,
        )
    except (NotImplementedError, ValueError, TypeError) as error:
        raise CLIError(f"{args.model}: {one_line(error)}") from None
    finally:
        bar.close()


def run(args: argparse.Namespace) -> int:
    check_sample_options(args, "sweep")
    found, notes = points(args)
    figure_module = matplotlib_figure() if args.plot else None
    if figure_module is not None:
        check_plot_path(figure_module, args.plot, "sweep")
    mlmodel, prog = load(args.model)
    calibration = None
    if args.calibration is not None:
        try:
            calibration = ms.ActivationStats.load(args.calibration)
        except ValueError as error:
            raise CLIError(f"--calibration: {one_line(error)}") from None
    reference = _reference_outputs(args, mlmodel)
    try:
        result = ms.sweep(
            mlmodel, _with_bar(found, quiet=args.json), samples=reference, program=prog,
            progress=False, calibration=calibration,
        )
    except (ValueError, TypeError) as error:  # the pass's, e.g. an opset older than iOS16
        raise CLIError(f"{args.model}: {one_line(error)}") from None
    if figure_module is not None:
        _plot(figure_module, args.plot, args.model, result)
    inputs = None if reference is None else describe_samples(args, reference.samples)
    if args.json:
        emit_json(
            {
                **result.to_dict(),
                "model": args.model,
                "output_quality": None if reference is None else {
                    "function": reference.function_name, "backend": reference.backend,
                    "inputs": inputs,
                },
                "notes": notes,
                "plot": args.plot,
            }
        )
        return 0
    lines = [result.format_table()]
    if reference is not None:
        lines.append(
            f"outputs: function {reference.function_name}, backend {reference.backend}, "
            f"{samples_line(args, reference.samples)}"
        )
    lines.extend(f"note: {note}" for note in notes)
    if args.plot:
        lines.append(f"wrote {args.plot}")
    emit("\n".join(lines))
    return 0


# ----- --plot ---------------------------------------------------------------------------------
def _plot(figure_module: Any, path: str, model: str, result: ms.SweepResult) -> None:
    """Weights as stored (KiB) against the worst output's relative L2 error when the rows have
    output quality, else against the weight error: one curve per pattern, the original as a
    black square at 0; written atomically."""
    figure = figure_module.Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    outputs = result.has_output_quality
    by_pattern: dict[str, list[Any]] = {}
    for row in result.rows:
        by_pattern.setdefault(row.pattern, []).append(row)
    for label, rows in by_pattern.items():
        rows = sorted(rows, key=lambda row: row.model_bytes)
        xs = [row.model_bytes / 1024 for row in rows]
        ys = [_plotted_error(row, outputs) for row in rows]
        axes.plot(xs, ys, marker="o", label=label)
        for row, x, y in zip(rows, xs, ys):
            axes.annotate(f"{row.sparsity:.2f}", (x, y), textcoords="offset points",
                          xytext=(4, 4), fontsize=8)
    axes.plot([result.original_bytes / 1024], [0.0], marker="s", color="black", linestyle="",
              label="original")
    axes.set_xlabel("weights as stored (KiB)")
    axes.set_ylabel(
        "output relative L2 error (worst output)" if outputs
        else "weight error (relative Frobenius norm)"
    )
    axes.set_title(f"mil-sparsity sweep: {os.path.basename(model.rstrip(os.sep))}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    save_figure(figure, path)


def _plotted_error(row: SweepRow, outputs: bool) -> float:
    report = row.output_quality
    if outputs and report is not None:
        return report.worst_relative_l2
    return row.relative_error
