"""``mil-sparsity compare A B``: how far model B's outputs are from model A's on input samples.

Both models are evaluated on the same samples (``--data`` or ``--random-inputs``) with the
chosen backend, and :func:`mil_sparsity.quality.compare_evaluators` summarises each output
(relative L2 error, cosine, SNR, max abs error, top-1 agreement); this module prints the
:class:`~mil_sparsity.quality.QualityReport` as a table or, with ``--json``, its ``to_dict()``
plus where the models and samples came from.
"""

from __future__ import annotations

import argparse

from mil_sparsity.cli._common import (
    CLIError,
    Commands,
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
    make_evaluator,
    read_samples,
    samples_line,
)
from mil_sparsity.quality import compare_evaluators
from mil_sparsity.samples import function_names


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "compare",
        help="output-level quality of model B against model A on input samples",
        description="Evaluate both models on the same input samples and print, per output, "
        "B's relative L2 error against A (||B - A|| / ||A||), the mean cosine similarity of "
        "the vectors along the last axis, the SNR in dB, the largest absolute error and, for "
        "outputs whose last dimension is > 1 (class scores, logits), the top-1 agreement. "
        "The reference backend is a numpy evaluator computing in float32: a reference for "
        "checking, not a production runtime. Neither model is modified.",
    )
    parser.add_argument("reference", metavar="A", help="the reference .mlpackage (e.g. dense)")
    parser.add_argument("candidate", metavar="B", help="the .mlpackage to check (e.g. pruned)")
    add_sample_options(parser, required=True)
    add_json(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_sample_options(args, "compare")
    reference = load_mlmodel(args.reference)
    candidate = load_mlmodel(args.candidate)
    function = function_of(reference, args.reference, args, "compare")
    if function not in function_names(candidate):
        raise CLIError(
            f"{args.candidate} has no function {function!r} (the one evaluated in "
            f"{args.reference}); it has {', '.join(function_names(candidate))}"
        )
    samples = read_samples(args, reference, args.reference, function)
    run_reference = make_evaluator(reference, args.reference, args.backend, function)
    run_candidate = make_evaluator(candidate, args.candidate, args.backend, function)
    bar = progress(samples, total=len(samples), desc="compare", quiet=args.json)
    try:
        report = compare_evaluators(run_reference, run_candidate, bar, progress=False)
    except ValueError as error:  # the two models' outputs differ in names or shapes
        raise CLIError(f"{args.reference} vs {args.candidate}: {one_line(error)}") from None
    finally:
        bar.close()
    if args.json:
        emit_json(
            {
                "reference": args.reference,
                "candidate": args.candidate,
                "function": function,
                "backend": args.backend,
                "inputs": describe_samples(args, samples),
                **report.to_dict(),
            }
        )
        return 0
    emit(
        f"reference: {args.reference}\ncandidate: {args.candidate}\n"
        f"function {function}, backend {args.backend}, {samples_line(args, samples)}\n\n"
        f"{report.format_table()}"
    )
    return 0
