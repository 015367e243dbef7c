"""``mil-sparsity prune``: prune and pack a model's weights post hoc, write a new package.

The options pick one pass and one global config (``--threshold``: prune_by_threshold;
``--target-sparsity`` [``--block-size``], ``--n-m``: prune_by_magnitude), or a ``--config`` file
in ``OpSelector.to_dict()`` form whose config kinds pick the pass. ``--scoring activation`` with
``--calibration STATS.npz`` ranks by activation-weighted scores (Wanda); ``--calibration`` also
serves a config file's activation-scored configs. ``--method sparsegpt|admm`` (with
``--calibration`` of statistics collected with ``calibrate --gram``) updates the kept weights to
reconstruct each layer's output. The rest is the shared rewrite path
(:mod:`mil_sparsity.cli._rewrite`).
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any, Optional

import mil_sparsity as ms
from mil_sparsity.cli._common import (
    CLIError,
    Commands,
    UsageError,
    add_weight_threshold,
    integer,
    make_config,
    n_m,
    number,
    one_line,
)
from mil_sparsity.cli._rewrite import add_model_output, add_target_option, add_write_options, rewrite
from mil_sparsity.configs import ACTIVATION_SCORING, METHODS, PRUNE_METHOD, SCORINGS
from mil_sparsity.plan.catalog import pass_for_selector


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "prune",
        help="prune and pack the weights of a model, write a new package",
        description="Prune the model's weights post hoc with mil_sparsity::prune_by_threshold "
        "(--threshold) or mil_sparsity::prune_by_magnitude (--target-sparsity, --n-m), or "
        "the pass a --config file's kinds select; write the result to OUT and print the "
        "per-weight report and the package size before and after. The result keeps the "
        "model's target, raised to iOS16 if below or to --min-deployment-target (iOS16/17 "
        "get the packed-bit mask form, iOS18+ the uint1 form).",
    )
    add_model_output(parser)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--threshold", type=number, metavar="T", help="zero every |w| <= T")
    how.add_argument(
        "--target-sparsity",
        type=number,
        metavar="S",
        help="zero exactly round(S x N) smallest-magnitude elements (or blocks, with "
        "--block-size)",
    )
    how.add_argument(
        "--n-m", type=n_m, metavar="N:M", help="zero N of every M consecutive elements (3:4)"
    )
    how.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or YAML file in OpSelector.to_dict() form (global_config, op_type_configs, "
        "op_name_configs; each config with its 'kind'); the kinds pick the pass",
    )
    parser.add_argument(
        "--min-sparsity",
        type=number,
        metavar="P",
        help="with --threshold: leave a weight dense unless at least this fraction is zero "
        "(default 0.5)",
    )
    parser.add_argument(
        "--block-size", type=integer, metavar="B", help="with --target-sparsity: prune blocks of B"
    )
    parser.add_argument(
        "--dim",
        type=integer,
        metavar="D",
        help="with --block-size or --n-m: the axis of the blocks/groups (default: the "
        "reduction axis of the op reading the weight: 1 for linear and conv, 0 for "
        "conv_transpose, the contracted axis of a matmul const)",
    )
    parser.add_argument(
        "--scoring",
        choices=SCORINGS,
        help="with --target-sparsity or --n-m: rank by |w| (magnitude, default) or by "
        "|w| x the RMS of the input channel it multiplies (activation, Wanda; needs "
        "--calibration; unstructured then prunes per output row)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="with --target-sparsity (no --block-size) or --n-m: keep the kept weights as they "
        "are (prune, default) or update them to reconstruct each layer's output on the "
        "calibration data (sparsegpt, admm; need --calibration with Gram matrices, "
        "`mil-sparsity calibrate --gram`)",
    )
    parser.add_argument(
        "--calibration",
        metavar="STATS.npz",
        help="activation statistics (`mil-sparsity calibrate`) for --scoring activation, "
        "--method sparsegpt/admm, or a config file's configs that need them",
    )
    add_weight_threshold(parser)
    add_target_option(parser)
    add_write_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    pass_name, selector = selection(args)
    options: Optional[dict[str, Any]] = None
    if args.calibration is not None:
        try:
            options = {"calibration": ms.ActivationStats.load(args.calibration)}
        except ValueError as error:
            raise CLIError(f"--calibration: {one_line(error)}") from None
    return rewrite(args, pass_name, selector, options)


def read_config_file(path: str) -> ms.OpSelector:
    """An OpSelector from a JSON (``.json``) or YAML (anything else) file, or a CLIError."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read config file {path}: {one_line(error)}") from None
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CLIError(f"config file {path}: invalid JSON: {one_line(error)}") from None
    else:
        yaml = importlib.import_module("yaml")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CLIError(f"config file {path}: invalid YAML: {one_line(error)}") from None
    if not isinstance(data, dict):
        raise CLIError(
            f"config file {path}: expected a mapping with global_config / op_type_configs / "
            f"op_name_configs, got {type(data).__name__}"
        )
    try:
        return ms.OpSelector.from_dict(data)
    except (TypeError, ValueError) as error:
        raise CLIError(f"config file {path}: {one_line(error)}") from None


def selection(args: argparse.Namespace) -> tuple[str, ms.OpSelector]:
    """(pass name, OpSelector) for the prune options; option conflicts are usage errors."""
    if args.min_sparsity is not None and args.threshold is None:
        raise UsageError("prune: --min-sparsity goes with --threshold")
    if args.block_size is not None and args.target_sparsity is None:
        raise UsageError("prune: --block-size goes with --target-sparsity")
    if args.dim is not None and args.block_size is None and args.n_m is None:
        raise UsageError("prune: --dim goes with --block-size or --n-m")
    if args.scoring is not None and args.target_sparsity is None and args.n_m is None:
        raise UsageError("prune: --scoring goes with --target-sparsity or --n-m (a --config "
                         "file sets scoring in its configs)")
    if args.scoring == ACTIVATION_SCORING and args.calibration is None:
        raise UsageError("prune: --scoring activation needs --calibration STATS.npz (write one "
                         "with `mil-sparsity calibrate`)")
    if args.method is not None and args.target_sparsity is None and args.n_m is None:
        raise UsageError("prune: --method goes with --target-sparsity or --n-m (a --config "
                         "file sets method in its configs)")
    if args.method is not None and args.block_size is not None:
        raise UsageError("prune: --method cannot be combined with --block-size (the "
                         "reconstruction methods prune unstructured or n:m patterns only)")
    if args.method not in (None, PRUNE_METHOD) and args.calibration is None:
        raise UsageError(f"prune: --method {args.method} needs --calibration STATS.npz with Gram "
                         "matrices (write one with `mil-sparsity calibrate --gram`)")
    if args.calibration is not None and args.threshold is not None:
        raise UsageError("prune: --calibration goes with --scoring activation, --method or --config")
    if args.config is not None:
        if args.weight_threshold is not None:
            raise UsageError("prune: --weight-threshold cannot be combined with --config (set "
                             "weight_threshold in the file's configs)")
        selector = read_config_file(args.config)
        try:
            return pass_for_selector(selector, f"config file {args.config}").name, selector
        except ValueError as error:
            raise CLIError(one_line(error)) from None
    common = {"weight_threshold": args.weight_threshold}
    scored = {"scoring": args.scoring}
    reconstructed = {"method": args.method}
    config: ms.SparsityConfig
    if args.threshold is not None:
        config = make_config(
            ms.ThresholdConfig,
            "--threshold/--min-sparsity",
            threshold=args.threshold,
            minimum_sparsity_percentile=args.min_sparsity,
            **common,
        )
        return ms.PRUNE_BY_THRESHOLD, ms.OpSelector(global_config=config)
    if args.n_m is not None:
        n, m = args.n_m
        config = make_config(
            ms.NMConfig, f"--n-m {n}:{m}", n=n, m=m, dim=args.dim, **common, **scored, **reconstructed
        )
    elif args.block_size is not None:
        config = make_config(
            ms.BlockConfig,
            "--target-sparsity/--block-size",
            target_sparsity=args.target_sparsity,
            block_size=args.block_size,
            dim=args.dim,
            **common,
            **scored,
        )
    else:
        config = make_config(
            ms.MagnitudeConfig,
            "--target-sparsity",
            target_sparsity=args.target_sparsity,
            **common,
            **scored,
            **reconstructed,
        )
    return ms.PRUNE_BY_MAGNITUDE, ms.OpSelector(global_config=config)
