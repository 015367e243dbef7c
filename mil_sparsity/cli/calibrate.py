"""``mil-sparsity calibrate MODEL -o STATS.npz``: activation statistics for calibration-aware
pruning.

:func:`mil_sparsity.calibration.collect_activation_stats` runs the reference evaluator on the
samples (``--data`` or ``--random-inputs``) and records, for every weight read by a linear,
conv, conv_transpose or matmul op, the per-input-channel sum of squares of the activation it
multiplies and the rows seen; :meth:`ActivationStats.save` writes them, atomically. This module
checks the options and prints the summary.

``--sequential CONFIG`` (the config file ``prune --config`` reads) collects the statistics
sequentially (``collect_activation_stats(..., sequential=config)``): each weight that config
reads statistics for gets them from the model with the weights before it already pruned as the
config prunes them; prune with the same ``--config`` file and ``--calibration OUT``.
"""

from __future__ import annotations

import argparse

import mil_sparsity as ms
from mil_sparsity.calibration import ActivationStats, collect_activation_stats
from mil_sparsity.cli._common import (
    CLIError,
    Commands,
    UsageError,
    add_json,
    emit,
    emit_json,
    load_mlmodel,
    one_line,
    progress,
)
from mil_sparsity.cli._inputs import (
    add_sample_options,
    check_sample_options,
    describe_samples,
    function_of,
    read_samples,
    samples_line,
)
from mil_sparsity.cli.prune import read_config_file
from mil_sparsity.inspect_model import format_rows
from mil_sparsity.samples import Sample


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "calibrate",
        help="activation statistics of a model's weights on input samples, saved as .npz",
        description="Run the model on the input samples with mil_sparsity's reference "
        "evaluator (numpy, float32) and record, for every weight a linear, conv, "
        "conv_transpose or matmul op multiplies with an activation, the sum of squares of that "
        "activation per input channel and the number of rows seen. Weights already behind a "
        "constexpr op are recorded under the const they come from. Writes OUT (an .npz read "
        "by ActivationStats.load) atomically; the model is not modified.",
    )
    parser.add_argument("model", metavar="MODEL", help="an ML Program .mlpackage")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the statistics file (.npz) to write"
    )
    add_sample_options(parser, required=True, backend=False)
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--gram",
        action="store_true",
        help="also record X^T X per linear / constant-matmul weight and of the im2col patches "
        "per conv weight and group (for --method sparsegpt/admm; "
        "channels^2 x 8 bytes each: 128 MB for a 4096-wide linear)",
    )
    parser.add_argument(
        "--sequential",
        metavar="CONFIG",
        help="the config file (JSON or YAML, as `prune --config` reads) the model will be "
        "pruned with: each weight it reads statistics for (method sparsegpt/admm, scoring "
        "activation) gets them from the model whose earlier weights are already pruned as it "
        "prunes them; prune with the same --config and --calibration OUT",
    )
    add_json(parser, "a summary")
    parser.set_defaults(run=run)


def _check_output(output: str, force: bool) -> None:
    if not output.endswith(".npz"):
        raise UsageError(f"calibrate: -o/--output must end with .npz, got {output!r}")
    try:
        ms.check_destination(output, overwrite=force)
    except FileExistsError as error:
        raise CLIError(f"{error} (use --force to replace it)") from None
    except (OSError, ValueError) as error:
        raise CLIError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    check_sample_options(args, "calibrate")
    _check_output(args.output, args.force)
    sequential = None if args.sequential is None else read_config_file(args.sequential)
    mlmodel = load_mlmodel(args.model)
    function = function_of(mlmodel, args.model, args, "calibrate")
    samples = read_samples(args, mlmodel, args.model, function)
    bar = progress(samples, total=len(samples), desc="calibrate", quiet=args.json)
    try:
        stats = collect_activation_stats(
            mlmodel, bar, function_name=function, progress=False, gram=args.gram, sequential=sequential
        )
    except (NotImplementedError, ValueError, TypeError) as error:
        raise CLIError(f"{args.model}: {one_line(error)}") from None
    finally:
        bar.close()
    try:
        with ms.atomic_output(args.output, overwrite=args.force) as staging:
            stats.save(staging)
    except Exception as error:
        raise CLIError(f"cannot write {args.output}: {one_line(error)}") from None
    _print(args, function, samples, stats)
    return 0


def _print(
    args: argparse.Namespace, function: str, samples: list[Sample], stats: ActivationStats
) -> None:
    entries = sorted(stats.entries.items())
    if args.json:
        emit_json(
            {
                "model": args.model,
                "output": args.output,
                "function": function,
                "sequential": args.sequential,
                "inputs": describe_samples(args, samples),
                "weights": [
                    {"function": key[0], "name": key[1], "channels": entry.channels,
                     "rows": entry.rows}
                    for key, entry in entries
                ],
            }
        )
        return
    rows = [("weight", "channels", "rows seen", "rms")]
    for (_, name), entry in entries:
        rms = float(entry.channel_scale().mean()) if entry.channels else 0.0
        rows.append((name, str(entry.channels), f"{entry.rows:,}", f"{rms:.4g}"))
    lines = format_rows(rows, right_align=(1, 2, 3)) if entries else []
    lines += [
        "",
        f"{len(entries)} weight(s) of function {function} calibrated on "
        f"{samples_line(args, samples)}"
        + ("" if args.sequential is None else f", sequentially for {args.sequential}")
        + "; rms: the mean over channels of sqrt(mean x^2)",
        f"wrote {args.output}",
    ]
    emit("\n".join(lines).lstrip("\n"))
