"""``mil-sparsity report``: one row per weight, how it is stored, how sparse it is, its bytes."""

from __future__ import annotations

import argparse

from mil_sparsity.cli._common import (
    Commands,
    add_json,
    emit,
    emit_json,
    load,
    non_negative_int,
    progress,
)
from mil_sparsity.inspect_model import inspect_program, weight_sources


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "report",
        help="one row per weight: how it is stored, how sparse it is, its bytes",
        description="Describe every weight of every function: consuming op types, shape, "
        "dtype, sparsity (fraction of exact zeros of the dense or decompressed value), storage "
        "(dense, sparse, palettized, quantized, or joint for a constexpr chain combining "
        "several), and bytes as stored (sub-byte types at their bit width). Then totals and "
        "the package's size on disk. Read-only; works on any ML Program, compressed or not.",
    )
    parser.add_argument("model", metavar="MODEL", help="an ML Program .mlpackage")
    add_json(parser)
    parser.add_argument(
        "--weight-threshold",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="list only weights with more than N elements (default 0: every weight, biases "
        "included)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    _, prog = load(args.model)
    sources = weight_sources(prog, args.weight_threshold)
    bar = progress(sources, total=len(sources), desc="reading weights", quiet=args.json)
    try:
        inspection = inspect_program(prog, args.weight_threshold, path=args.model, sources=bar)
    finally:
        bar.close()
    if args.json:
        emit_json(inspection.to_dict())
    else:
        emit(f"model: {args.model}\n\n{inspection.format_table()}")
    return 0
