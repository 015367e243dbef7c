"""The one rewrite path of ``prune`` and ``pack``: check, run one pass, write OUT, report.

1. Check MODEL exists and OUT is a new (or, with --force, replaceable) .mlpackage elsewhere.
2. Read the model's deployment target per function: from the loaded program, or with
   ``--streaming`` from the spec alone (:func:`mil_sparsity.streaming.package_targets`, no
   weights read). ``--min-deployment-target`` may raise it (iOS18 gives the uint1 mask form),
   never lower it (:mod:`mil_sparsity.plan.targets`); without it, a model below iOS16 is raised to
   iOS16, as the library does.
3. Run a one-pass pipeline: in memory with :func:`mil_sparsity.apply_pipeline` and save through
   :func:`mil_sparsity.atomic_output`, or file by file with
   :func:`mil_sparsity.streaming.compress_package`, which writes OUT atomically itself.
4. Print the pass's per-weight report (with its notes, e.g. a raised target) and the package
   size before and after (or JSON).

On any error nothing is written and the input is untouched.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import coremltools as ct

import mil_sparsity as ms
from mil_sparsity.plan import targets as deployment
from mil_sparsity.cli._common import (
    TARGETS,
    CLIError,
    UsageError,
    check_output,
    emit,
    emit_json,
    load,
    one_line,
    progress,
    require_exists,
    target,
)
from mil_sparsity.inspect_model import function_opsets, package_size
from mil_sparsity.streaming import compress_package, package_targets

TARGET_OPTION = "--min-deployment-target"


def add_model_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="an ML Program .mlpackage (below iOS16, the result is raised to iOS16)",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the .mlpackage to write"
    )


def add_write_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="rewrite the package file by file, one weight in memory at a time "
        "(mil_sparsity.streaming.compress_package): for models larger than memory",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )


def add_target_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        TARGET_OPTION,
        type=target,
        metavar="TARGET",
        help=f"one of {', '.join(TARGETS)}: raise the result's deployment target to at least "
        "TARGET (iOS18 gives the compact uint1 mask form); it may not be below the model's "
        "own target. Default: the model's target, raised to iOS16 if it is below",
    )


def _requested_target(found: dict[str, str], path: str, wanted: Optional[str]) -> Any:
    """--min-deployment-target as a ct.target, or a UsageError if it would lower a function's
    target (the library's check, worded for the option)."""
    if wanted is None:
        return None
    requested = getattr(ct.target, wanted)
    versions = [getattr(ct.target, name).value for name in found.values() if hasattr(ct.target, name)]
    try:
        deployment.requested_version(requested, max(versions, default=0), TARGET_OPTION)
    except ValueError as error:
        raise UsageError(f"{path}: {one_line(error)}") from None
    return requested


def _read_targets(path: str, streaming: bool) -> tuple[dict[str, str], Any]:
    """(function -> target, the MLModel to rewrite in memory, or None when streaming)."""
    if streaming:
        try:
            return package_targets(path), None
        except (OSError, ValueError, TypeError) as error:
            raise CLIError(f"{path}: {one_line(error)}") from None
    mlmodel, prog = load(path)
    # apply_pipeline loads its own copy of the program from the MLModel: don't hold two
    return function_opsets(prog), mlmodel


def _run(
    args: argparse.Namespace, mlmodel: Any, pipeline: Any, report: ms.SparsityReport, requested: Any
) -> Any:
    """Run the pipeline: streamed into OUT, or in memory (returns the new MLModel to save)."""
    try:
        if mlmodel is None:
            compress_package(
                args.model,
                args.output,
                pipeline,
                report=report,
                overwrite=args.force,
                minimum_deployment_target=requested,
            )
            return None
        return ms.apply_pipeline(mlmodel, pipeline, report=report, minimum_deployment_target=requested)
    except (OSError, ValueError, TypeError) as error:  # the pass's or the package's
        raise CLIError(f"{args.model}: {one_line(error)}") from None


def _save(result: Any, output: str, force: bool) -> None:
    try:
        with ms.atomic_output(output, overwrite=force) as staging:
            result.save(staging)
    except Exception as error:
        raise CLIError(f"cannot write {output}: {one_line(error)}") from None


def rewrite(
    args: argparse.Namespace,
    pass_name: str,
    selector: ms.OpSelector,
    options: Optional[dict[str, Any]] = None,
) -> int:
    """Apply ``pass_name`` with ``selector`` (and its other ``options``, e.g. ``calibration``)
    to args.model, write args.output (module doc)."""
    require_exists(args.model)
    check_output(args.output, args.model, args.force)
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(pass_name)
    pipeline.set_options(pass_name, {"config": selector, **(options or {})})
    report = ms.SparsityReport()
    bar = progress(total=3, desc="loading", quiet=args.json or args.streaming)
    try:
        found, mlmodel = _read_targets(args.model, args.streaming)
        requested = _requested_target(found, args.model, args.min_deployment_target)
        bar.update()
        bar.set_description(pass_name.split("::")[-1])
        result = _run(args, mlmodel, pipeline, report, requested)
        bar.update()
        bar.set_description("saving")
        if result is not None:
            _save(result, args.output, args.force)
        bar.update()
    finally:
        bar.close()
    _print(args, pass_name, selector, report)
    return 0


def _print(
    args: argparse.Namespace, pass_name: str, selector: ms.OpSelector, report: ms.SparsityReport
) -> None:
    before, after = package_size(args.model), package_size(args.output)
    if args.json:
        emit_json(
            {
                "model": args.model,
                "output": args.output,
                "pass": pass_name,
                "config": selector.to_dict(),
                "report": report.to_dict(),
                "package_bytes": {"before": before, "after": after},
            }
        )
        return
    ratio = f" ({after / before:.1%})" if before else ""
    emit(
        f"{report.format_table()}\n\nwrote {args.output}; package size on disk "
        f"{before:,} -> {after:,} bytes{ratio}"
    )
