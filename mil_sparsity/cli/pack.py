"""``mil-sparsity pack``: store weights that already hold zeros in sparse form, values unchanged.

One global :class:`~mil_sparsity.PackConfig` for mil_sparsity::sparse_pack, then the shared
rewrite path (:mod:`mil_sparsity.cli._rewrite`).
"""

from __future__ import annotations

import argparse

import mil_sparsity as ms
from mil_sparsity.cli._common import Commands, add_weight_threshold, make_config, number
from mil_sparsity.cli._rewrite import add_model_output, add_target_option, add_write_options, rewrite


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "pack",
        help="store weights that already hold zeros in sparse form (values unchanged)",
        description="Run mil_sparsity::sparse_pack: pack weights whose zeros came from "
        "training-time pruning, without changing any value; write OUT.",
    )
    add_model_output(parser)
    parser.add_argument(
        "--min-sparsity",
        type=number,
        metavar="P",
        help="pack a weight only if at least this fraction is zero (default: whenever the "
        "sparse form is smaller)",
    )
    add_weight_threshold(parser)
    add_target_option(parser)
    add_write_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = make_config(
        ms.PackConfig,
        "--min-sparsity/--weight-threshold",
        minimum_sparsity_percentile=args.min_sparsity,
        weight_threshold=args.weight_threshold,
    )
    return rewrite(args, ms.SPARSE_PACK, ms.OpSelector(global_config=config))
