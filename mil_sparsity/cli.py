"""``mil-sparsity``: inspect, prune, pack and sweep Core ML ML Program packages from the shell.

Subcommands (each has ``--help``)::

    mil-sparsity passes [--json]
    mil-sparsity report MODEL [--json] [--weight-threshold N]
    mil-sparsity prune  MODEL -o OUT (--threshold T [--min-sparsity P] | --target-sparsity S
                        [--block-size B] | --n-m N:M | --config FILE) [--dim D]
                        [--weight-threshold N] [--min-deployment-target iOS16|iOS17|iOS18]
                        [--force] [--json]
    mil-sparsity pack   MODEL -o OUT [--min-sparsity P] [--weight-threshold N] [--force] [--json]
    mil-sparsity sweep  MODEL [--sparsities 0.5,0.75,0.9] [--patterns unstructured,block:4,n:m:3:4]
                        [--dim D] [--weight-threshold N] [--plot FILE.png] [--json]

Everything that decides or computes goes through the library: the configs validate their own
values, the passes select, prune and pack (``prune``/``pack`` through
:func:`mil_sparsity.apply_pipeline`, ``sweep`` by running the same pass classes on a freshly
loaded program per point), :class:`~mil_sparsity.SparsityReport` renders the per-weight
report and :mod:`mil_sparsity.inspect_model` reads what a package stores.

Errors are one line on stderr, ``mil-sparsity: error: ...``, without a traceback (set
``MIL_SPARSITY_TRACEBACK=1`` to get one for unexpected errors). Exit codes: 0 success, 1 bad
input or failure (missing/corrupt/unsupported model, unreadable config, existing output), 2
usage (unknown or conflicting options, values out of range), 130 interrupted. Outputs are
written atomically (:mod:`mil_sparsity._atomic`): on any error nothing is written and the input
is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import math
import os
import sys
import warnings
from typing import Any, Callable, Iterator, NoReturn, Optional

PROG = "mil-sparsity"
TARGETS = ("iOS16", "iOS17", "iOS18")
PLOT_INSTALL_HINT = 'pip install "mil_sparsity[plot]"'


# ----- errors ---------------------------------------------------------------------------------
class CLIError(Exception):
    """An error reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CLIError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a :class:`UsageError` (one line, exit 2), not usage text."""

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG):].strip()
        hint = f" (see '{self.prog} --help')"
        raise UsageError(f"{command}: {message}{hint}" if command else f"{message}{hint}")


# ----- option value types ---------------------------------------------------------------------
def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _n_m(text: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected N:M with integers N <= M, e.g. 3:4; got {text!r}")
    return int(parts[0]), int(parts[1])


def _target(text: str) -> str:
    for target in TARGETS:
        if text.lower() == target.lower():
            return target
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(TARGETS)}, got {text!r}")


def _float_list(text: str) -> list[float]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of numbers")
    return [_number(item) for item in items]


def _name_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of patterns")
    return items


# ----- the parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from mil_sparsity import __version__

    parser = _Parser(
        prog=PROG,
        description="Sparsify the weights of Core ML ML Program packages (.mlpackage) and "
        "inspect how they are stored. Works on Linux without the Core ML runtime.",
        epilog="Run 'mil-sparsity COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    passes = commands.add_parser(
        "passes",
        help="list the registered passes, their configs and fields",
        description="List the passes mil_sparsity registers in coremltools (the content of "
        "passes_registry.json), with their config classes and each field's type and default.",
    )
    passes.add_argument("--json", action="store_true", help="print the manifest as JSON")

    report = commands.add_parser(
        "report",
        help="one row per weight: how it is stored, how sparse it is, its bytes",
        description="Describe every weight of every function: consuming op types, shape, "
        "dtype, sparsity (fraction of exact zeros of the dense or decompressed value), storage "
        "(dense, sparse, palettized, quantized, or joint for a constexpr chain combining "
        "several), and bytes as stored (sub-byte types at their bit width). Then totals and "
        "the package's size on disk. Read-only; works on any ML Program, compressed or not.",
    )
    report.add_argument("model", metavar="MODEL", help="an ML Program .mlpackage")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument(
        "--weight-threshold",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="list only weights with more than N elements (default 0: every weight, biases "
        "included)",
    )

    prune = commands.add_parser(
        "prune",
        help="prune and pack the weights of a model, write a new package",
        description="Prune the model's weights post hoc with mil_sparsity::prune_by_threshold "
        "(--threshold) or mil_sparsity::prune_by_magnitude (--target-sparsity, --n-m), or "
        "the pass a --config file's kinds select; write the result to OUT and print the "
        "per-weight report and the package size before and after. The model keeps its "
        "opset (iOS16/17 get the packed-bit mask form, iOS18+ the uint1 form).",
    )
    _add_model_output(prune)
    how = prune.add_mutually_exclusive_group(required=True)
    how.add_argument("--threshold", type=_number, metavar="T", help="zero every |w| <= T")
    how.add_argument(
        "--target-sparsity",
        type=_number,
        metavar="S",
        help="zero exactly round(S x N) smallest-magnitude elements (or blocks, with "
        "--block-size)",
    )
    how.add_argument(
        "--n-m", type=_n_m, metavar="N:M", help="zero N of every M consecutive elements (3:4)"
    )
    how.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or YAML file in OpSelector.to_dict() form (global_config, op_type_configs, "
        "op_name_configs; each config with its 'kind'); the kinds pick the pass",
    )
    prune.add_argument(
        "--min-sparsity",
        type=_number,
        metavar="P",
        help="with --threshold: leave a weight dense unless at least this fraction is zero "
        "(default 0.5)",
    )
    prune.add_argument(
        "--block-size", type=_int, metavar="B", help="with --target-sparsity: prune blocks of B"
    )
    prune.add_argument(
        "--dim",
        type=_int,
        metavar="D",
        help="with --block-size or --n-m: the axis of the blocks/groups (defaults: 0 for "
        "blocks, 1 for n:m)",
    )
    prune.add_argument(
        "--weight-threshold",
        type=_non_negative_int,
        metavar="N",
        help="consider only weights with more than N elements (default 2048)",
    )
    prune.add_argument(
        "--min-deployment-target",
        type=_target,
        metavar="TARGET",
        help=f"one of {', '.join(TARGETS)}: checked against the model's own target (the "
        "post-hoc path keeps the model's opset; re-convert the model to change it)",
    )
    _add_force_json(prune)

    pack = commands.add_parser(
        "pack",
        help="store weights that already hold zeros in sparse form (values unchanged)",
        description="Run mil_sparsity::sparse_pack: pack weights whose zeros came from "
        "training-time pruning, without changing any value; write OUT.",
    )
    _add_model_output(pack)
    pack.add_argument(
        "--min-sparsity",
        type=_number,
        metavar="P",
        help="pack a weight only if at least this fraction is zero (default: whenever the "
        "sparse form is smaller)",
    )
    pack.add_argument(
        "--weight-threshold",
        type=_non_negative_int,
        metavar="N",
        help="consider only weights with more than N elements (default 2048)",
    )
    _add_force_json(pack)

    sweep = commands.add_parser(
        "sweep",
        help="model size vs weight error for several patterns and sparsities (writes no model)",
        description="For each pattern and sparsity level, run mil_sparsity::prune_by_magnitude "
        "on a freshly loaded copy of the program (nothing is written) and report the size "
        "of all weights as they would be stored and the weight error: the relative Frobenius "
        "error sqrt(sum ||W - W_pruned||^2) / sqrt(sum ||W||^2) over the pruned weights "
        "(float64), and the worst single weight's. n:m patterns fix their own sparsity n/m "
        "and run once.",
    )
    sweep.add_argument("model", metavar="MODEL", help="an ML Program .mlpackage (iOS16+)")
    sweep.add_argument(
        "--sparsities",
        type=_float_list,
        default=[0.5, 0.75, 0.9],
        metavar="LIST",
        help="comma-separated target sparsities (default 0.5,0.75,0.9)",
    )
    sweep.add_argument(
        "--patterns",
        type=_name_list,
        default=["unstructured"],
        metavar="LIST",
        help="comma-separated: unstructured, block:B, n:m:N:M (default unstructured)",
    )
    sweep.add_argument(
        "--dim", type=_int, metavar="D", help="axis for block and n:m patterns (defaults 0 / 1)"
    )
    sweep.add_argument(
        "--weight-threshold",
        type=_non_negative_int,
        metavar="N",
        help="consider only weights with more than N elements (default 2048)",
    )
    sweep.add_argument(
        "--plot",
        metavar="FILE.png",
        help=f"draw size vs error, one curve per pattern (needs matplotlib: {PLOT_INSTALL_HINT})",
    )
    sweep.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _add_model_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="an ML Program .mlpackage (iOS16+)")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="the .mlpackage to write"
    )


def _add_force_json(parser: argparse.ArgumentParser) -> None:
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


# ----- environment ----------------------------------------------------------------------------
_TERMINAL: list[Any] = []  # the real stderr while _quiet_coremltools redirects sys.stderr


@contextlib.contextmanager
def _quiet_coremltools() -> Iterator[None]:
    """Silence coremltools while a command runs: its log records (a failing pass logs an
    ERROR banner before the exception we report), its warnings, and its per-pipeline tqdm bars
    (``Running MIL ... pipeline``), which would garble our progress bar and stderr. The bars
    write to ``sys.stderr``, which points at a sink meanwhile; our own bar and error line use
    the real stream (:func:`_stderr`)."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    _TERMINAL.append(sys.stderr)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        _TERMINAL.pop()
        logger.setLevel(level)


def _stderr() -> Any:
    return _TERMINAL[-1] if _TERMINAL else sys.stderr


def _progress(iterable: Any = None, *, total: Optional[int] = None, desc: str, quiet: bool) -> Any:
    """A tqdm bar on stderr, silent when ``quiet`` (--json) or when stderr is not a terminal."""
    tqdm = importlib.import_module("tqdm").tqdm  # untyped third-party module: imported as Any
    stream = _stderr()
    disable = quiet or not _isatty(stream)
    return tqdm(iterable, total=total, desc=desc, file=stream, disable=disable, leave=False)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _emit_json(data: Any) -> None:
    _emit(json.dumps(_finite(data), indent=2))


def _finite(data: Any) -> Any:
    """NaN and infinities as null, so the output is strict JSON."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


# ----- loading and checking models ------------------------------------------------------------
def _require_exists(path: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"model not found: {path}")


def _load(path: str) -> tuple[Any, Any]:
    """(MLModel, PyMIL program) of a saved ML Program, or a one-line CLIError."""
    from mil_sparsity.posthoc import load_model, load_program

    _require_exists(path)
    try:
        mlmodel = load_model(path)
    except Exception as error:
        raise CLIError(f"cannot read model {path}: {_one_line(error)}") from None
    kind = _model_kind(mlmodel)
    if kind == "None":
        raise CLIError(f"cannot read model {path}: not a Core ML model (its spec has no model type)")
    if kind != "mlProgram":
        raise CLIError(
            f"{path} is a {kind!r} model; mil-sparsity works on ML Program models. Re-convert "
            'it with ct.convert(..., convert_to="mlprogram", '
            "minimum_deployment_target=ct.target.iOS16) or later"
        )
    try:
        prog = load_program(mlmodel)
    except Exception as error:
        raise CLIError(f"cannot read model {path}: {type(error).__name__}: {_one_line(error)}") from None
    return mlmodel, prog


def _model_kind(mlmodel: Any) -> str:
    try:
        return str(mlmodel.get_spec().WhichOneof("Type"))
    except Exception as error:
        raise CLIError(f"cannot read model spec: {_one_line(error)}") from None


def _check_sparse_opsets(prog: Any, path: str) -> None:
    """The library's own check (iOS16+ for constexpr_sparse_to_dense), as a CLIError."""
    from mil_sparsity import _graph

    try:
        _graph.check_opsets(prog, PROG)
    except ValueError as error:
        message = str(error)
        if message.startswith(f"{PROG}: "):
            message = message[len(PROG) + 2:]
        raise CLIError(f"{path}: {message}") from None


def _check_target(prog: Any, path: str, wanted: Optional[str]) -> None:
    from mil_sparsity.inspect_model import function_opsets

    if wanted is None:
        return
    opsets = function_opsets(prog)
    differing = {name: opset for name, opset in opsets.items() if opset != wanted}
    if differing:
        has = ", ".join(sorted(set(opsets.values())))
        raise UsageError(
            f"--min-deployment-target {wanted}: {path} targets {has}, and the post-hoc path "
            f"keeps the model's opset. Omit the option (or pass {has}), or re-convert the "
            f"source model with minimum_deployment_target=ct.target.{wanted}"
        )


def _check_output(output: str, model: str, force: bool) -> str:
    from mil_sparsity._atomic import check_destination

    if not output.endswith(".mlpackage"):
        raise UsageError(f"-o/--output must end with .mlpackage, got {output!r}")
    out = os.path.realpath(output)
    source = os.path.realpath(model)
    if out == source or out.startswith(source + os.sep) or source.startswith(out + os.sep):
        raise UsageError(f"-o/--output {output!r} must not be the input model, inside it, or contain it")
    try:
        return check_destination(output, overwrite=force)
    except FileExistsError as error:
        raise CLIError(f"{error} (use --force to replace it)") from None
    except (OSError, ValueError) as error:
        raise CLIError(str(error)) from None


# ----- configs --------------------------------------------------------------------------------
def _make_config(factory: Callable[..., Any], option: str, **values: Any) -> Any:
    """Build a config; the library validates the values, we name the option."""
    try:
        return factory(**{key: value for key, value in values.items() if value is not None})
    except (TypeError, ValueError) as error:
        raise UsageError(f"{option}: {_one_line(error)}") from None


def read_config_file(path: str) -> Any:
    """An OpSelector from a JSON (``.json``) or YAML (anything else) file, or a CLIError."""
    from mil_sparsity.selector import OpSelector

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read config file {path}: {_one_line(error)}") from None
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CLIError(f"config file {path}: invalid JSON: {_one_line(error)}") from None
    else:
        yaml = importlib.import_module("yaml")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CLIError(f"config file {path}: invalid YAML: {_one_line(error)}") from None
    if not isinstance(data, dict):
        raise CLIError(
            f"config file {path}: expected a mapping with global_config / op_type_configs / "
            f"op_name_configs, got {type(data).__name__}"
        )
    try:
        return OpSelector.from_dict(data)
    except (TypeError, ValueError) as error:
        raise CLIError(f"config file {path}: {_one_line(error)}") from None


def pass_for_selector(selector: Any, where: str) -> str:
    """The one pass that takes every config kind in the selector, or a CLIError."""
    from mil_sparsity.passes import pass_for_selector as owning_pass

    try:
        return owning_pass(selector, where)
    except ValueError as error:
        raise CLIError(_one_line(error)) from None


def _prune_selection(args: argparse.Namespace) -> tuple[str, Any]:
    """(pass name, OpSelector) for the prune options; option conflicts are usage errors."""
    import mil_sparsity as ms

    if args.min_sparsity is not None and args.threshold is None:
        raise UsageError("prune: --min-sparsity goes with --threshold")
    if args.block_size is not None and args.target_sparsity is None:
        raise UsageError("prune: --block-size goes with --target-sparsity")
    if args.dim is not None and args.block_size is None and args.n_m is None:
        raise UsageError("prune: --dim goes with --block-size or --n-m")
    if args.config is not None:
        if args.weight_threshold is not None:
            raise UsageError("prune: --weight-threshold cannot be combined with --config (set "
                             "weight_threshold in the file's configs)")
        selector = read_config_file(args.config)
        return pass_for_selector(selector, f"config file {args.config}"), selector
    common = {"weight_threshold": args.weight_threshold}
    if args.threshold is not None:
        config = _make_config(
            ms.ThresholdConfig,
            "--threshold/--min-sparsity",
            threshold=args.threshold,
            minimum_sparsity_percentile=args.min_sparsity,
            **common,
        )
        return ms.PRUNE_BY_THRESHOLD, ms.OpSelector(global_config=config)
    if args.n_m is not None:
        n, m = args.n_m
        config = _make_config(ms.NMConfig, f"--n-m {n}:{m}", n=n, m=m, dim=args.dim, **common)
    elif args.block_size is not None:
        config = _make_config(
            ms.BlockConfig,
            "--target-sparsity/--block-size",
            target_sparsity=args.target_sparsity,
            block_size=args.block_size,
            dim=args.dim,
            **common,
        )
    else:
        config = _make_config(
            ms.MagnitudeConfig, "--target-sparsity", target_sparsity=args.target_sparsity, **common
        )
    return ms.PRUNE_BY_MAGNITUDE, ms.OpSelector(global_config=config)


# ----- commands -------------------------------------------------------------------------------
def cmd_passes(args: argparse.Namespace) -> int:
    from mil_sparsity.inspect_model import format_rows
    from mil_sparsity.manifest import build_manifest

    manifest = build_manifest()
    if args.json:
        _emit_json(manifest)
        return 0
    lines: list[str] = []
    for entry in manifest["passes"]:
        option = entry["options"]["config"]
        default = (
            "required (no default)" if option.get("required")
            else "default " + json.dumps(option.get("default"))
        )
        lines.append(entry["name"])
        lines.append(f"  {entry['description']}")
        lines.append(f"  class: {entry['class']}")
        lines.append(f"  dtypes: {', '.join(entry['dtypes'])}")
        lines.append(f"  config: {default}")
        for config_class, config in entry["configs"].items():
            lines.append(f"  {config_class.split(':')[-1]} (kind {config['kind']!r})")
            rows = [("field", "type", "default")]
            for field, spec in config["fields"].items():
                value = "required" if spec.get("required") else json.dumps(spec.get("default"))
                rows.append((field, str(spec["type"]), value))
            lines.extend("    " + line for line in format_rows(rows))
        lines.append("")
    _emit("\n".join(lines).rstrip())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mil_sparsity.inspect_model import inspect_program, weight_sources

    _, prog = _load(args.model)
    sources = weight_sources(prog, args.weight_threshold)
    bar = _progress(sources, total=len(sources), desc="reading weights", quiet=args.json)
    try:
        inspection = inspect_program(prog, args.weight_threshold, path=args.model, sources=bar)
    finally:
        bar.close()
    if args.json:
        _emit_json(inspection.to_dict())
    else:
        _emit(f"model: {args.model}\n\n{inspection.format_table()}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    pass_name, selector = _prune_selection(args)
    return _rewrite(args, pass_name, selector)


def cmd_pack(args: argparse.Namespace) -> int:
    import mil_sparsity as ms

    config = _make_config(
        ms.PackConfig,
        "--min-sparsity/--weight-threshold",
        minimum_sparsity_percentile=args.min_sparsity,
        weight_threshold=args.weight_threshold,
    )
    return _rewrite(args, ms.SPARSE_PACK, ms.OpSelector(global_config=config))


def _rewrite(args: argparse.Namespace, pass_name: str, selector: Any) -> int:
    """Shared by prune and pack: check, run the pass post hoc, write OUT atomically, report."""
    import coremltools as ct

    import mil_sparsity as ms
    from mil_sparsity._atomic import atomic_output

    _require_exists(args.model)
    _check_output(args.output, args.model, args.force)
    if args.streaming:
        return _rewrite_streaming(args, pass_name, selector)
    bar = _progress(total=3, desc="loading", quiet=args.json)
    try:
        mlmodel, prog = _load(args.model)
        _check_sparse_opsets(prog, args.model)
        _check_target(prog, args.model, getattr(args, "min_deployment_target", None))
        # apply_pipeline loads its own copy of the program from the MLModel: don't hold two.
        # (Given the MLModel rather than the path, it takes the PyMIL route, not streaming.)
        del prog
        bar.update()
        bar.set_description(pass_name.split("::")[-1])
        pipeline = ct.PassPipeline.EMPTY
        pipeline.append_pass(pass_name)
        pipeline.set_options(pass_name, {"config": selector})
        report = ms.SparsityReport()
        try:
            result = ms.apply_pipeline(mlmodel, pipeline, report=report)
        except (ValueError, TypeError) as error:
            raise CLIError(_one_line(error)) from None
        bar.update()
        bar.set_description("saving")
        try:
            with atomic_output(args.output, overwrite=args.force) as staging:
                result.save(staging)
        except Exception as error:
            raise CLIError(f"cannot write {args.output}: {_one_line(error)}") from None
        bar.update()
    finally:
        bar.close()
    return _print_rewrite(args, pass_name, selector, report)


def _rewrite_streaming(args: argparse.Namespace, pass_name: str, selector: Any) -> int:
    """``--streaming``: compress_package checks, streams and writes OUT atomically itself."""
    import coremltools as ct

    import mil_sparsity as ms
    from mil_sparsity._blob import BlobFileError
    from mil_sparsity.streaming import compress_package, package_targets

    wanted = getattr(args, "min_deployment_target", None)
    try:
        targets = package_targets(args.model)
    except (OSError, ValueError, TypeError) as error:
        raise CLIError(f"{args.model}: {_one_line(error)}") from None
    if wanted is not None and any(target != wanted for target in targets.values()):
        raise UsageError(
            f"--min-deployment-target {wanted}: {args.model} targets "
            f"{', '.join(sorted(set(targets.values())))}; the post-hoc path keeps the model's opset"
        )
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(pass_name)
    pipeline.set_options(pass_name, {"config": selector})
    report = ms.SparsityReport()
    try:
        compress_package(args.model, args.output, pipeline, report=report, overwrite=args.force)
    except (OSError, ValueError, TypeError, BlobFileError) as error:
        raise CLIError(_one_line(error)) from None
    return _print_rewrite(args, pass_name, selector, report)


def _print_rewrite(args: argparse.Namespace, pass_name: str, selector: Any, report: Any) -> int:
    from mil_sparsity.inspect_model import package_size

    before, after = package_size(args.model), package_size(args.output)
    if args.json:
        _emit_json(
            {
                "model": args.model,
                "output": args.output,
                "pass": pass_name,
                "config": selector.to_dict(),
                "report": report.to_dict(),
                "package_bytes": {"before": before, "after": after},
            }
        )
    else:
        ratio = f" ({after / before:.1%})" if before else ""
        _emit(
            f"{report.format_table()}\n\nwrote {args.output}; package size on disk "
            f"{before:,} -> {after:,} bytes{ratio}"
        )
    return 0


# ----- sweep ----------------------------------------------------------------------------------
def parse_pattern(text: str, dim: Optional[int], weight_threshold: Optional[int]) -> tuple[str, Optional[Callable[[float], Any]], Any]:
    """``unstructured`` / ``block:B`` / ``n:m:N:M`` -> (label, level -> config, fixed config).

    Exactly one of the last two is set: n:m patterns have a fixed config (their sparsity is
    n/m), the others build a config per sparsity level.
    """
    import mil_sparsity as ms

    common: dict[str, Any] = {"weight_threshold": weight_threshold}
    parts = [part.strip() for part in text.lower().split(":")]
    if parts == ["unstructured"] or parts == ["magnitude"]:
        return "unstructured", lambda level: _make_config(
            ms.MagnitudeConfig, "--sparsities", target_sparsity=level, **common
        ), None
    if len(parts) == 2 and parts[0] == "block" and parts[1].isdigit():
        block_size = int(parts[1])
        label = f"block:{block_size}"
        _make_config(ms.BlockConfig, f"--patterns {label}", target_sparsity=0.5,
                     block_size=block_size, dim=dim, **common)
        return label, lambda level: _make_config(
            ms.BlockConfig, f"--patterns {label}", target_sparsity=level, block_size=block_size,
            dim=dim, **common
        ), None
    if len(parts) == 4 and parts[:2] == ["n", "m"] and parts[2].isdigit() and parts[3].isdigit():
        n, m = int(parts[2]), int(parts[3])
        label = f"n:m:{n}:{m}"
        return label, None, _make_config(ms.NMConfig, f"--patterns {label}", n=n, m=m, dim=dim, **common)
    raise UsageError(
        f"sweep: --patterns: unknown pattern {text!r}; use unstructured, block:B (e.g. block:4) "
        "or n:m:N:M (e.g. n:m:3:4)"
    )


def _sweep_points(args: argparse.Namespace) -> tuple[list[tuple[str, float, Any]], list[str]]:
    """[(pattern label, sparsity level, config)] in run order, and notes for the output."""
    import mil_sparsity as ms

    for level in args.sparsities:
        _make_config(ms.MagnitudeConfig, "--sparsities", target_sparsity=level)
    points: list[tuple[str, float, Any]] = []
    notes: list[str] = []
    seen: set[str] = set()
    for text in args.patterns:
        label, factory, fixed = parse_pattern(text, args.dim, args.weight_threshold)
        if label in seen:
            continue
        seen.add(label)
        if fixed is not None:
            points.append((label, fixed.sparsity, fixed))
            notes.append(
                f"{label} fixes its sparsity at {fixed.n}/{fixed.m} = {fixed.sparsity:.3f} and "
                "runs once (--sparsities does not apply to it)"
            )
        else:
            assert factory is not None
            points.extend((label, level, factory(level)) for level in args.sparsities)
    if args.dim is not None and all(label == "unstructured" for label in seen):
        raise UsageError("sweep: --dim goes with block:B or n:m:N:M patterns")
    return points, notes


def _weight_consumers(prog: Any) -> dict[tuple[str, str], tuple[Any, Any, str, Optional[int]]]:
    """(function, const name) -> (value, one reader op, input name, index in a list input)."""
    from mil_sparsity import _graph

    found: dict[tuple[str, str], tuple[Any, Any, str, Optional[int]]] = {}
    for function_name, function in prog.functions.items():
        for block in _graph.iter_blocks(function):
            for op in _graph.weight_consts(block):
                var = op.outputs[0]
                for reader in var.child_ops:
                    location = _input_location(reader, var)
                    if location is not None:
                        found[(str(function_name), str(op.name))] = (var.val, reader, *location)
                        break
    return found


def _input_location(op: Any, var: Any) -> Optional[tuple[str, Optional[int]]]:
    for name, value in op.inputs.items():
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if item is var:
                    return str(name), index
        elif value is var:
            return str(name), None
    return None


def _read_input(op: Any, name: str, index: Optional[int]) -> Any:
    value = op.inputs[name]
    return value[index] if index is not None else value


def _sweep_point(mlmodel: Any, pass_cls: Any, config: Any) -> dict[str, Any]:
    """Run the real pass on a fresh program; sizes from the program, errors vs the originals."""
    import numpy as np

    import mil_sparsity as ms
    from mil_sparsity.inspect_model import materialize, weight_sources
    from mil_sparsity.posthoc import load_program

    prog = load_program(mlmodel)
    originals = _weight_consumers(prog)
    report = ms.SparsityReport()
    graph_pass = pass_cls()
    graph_pass.config = ms.OpSelector(global_config=config)
    graph_pass.report = report
    try:
        graph_pass.apply(prog)
    except (ValueError, TypeError) as error:
        raise CLIError(_one_line(error)) from None
    layers: list[dict[str, Any]] = []
    error_sq = norm_sq = 0.0
    for record in report.packed:
        value, reader, name, index = originals[(record.function, record.name)]
        sparse_op = _read_input(reader, name, index).op
        if sparse_op is None or sparse_op.op_type != "constexpr_sparse_to_dense":
            raise CLIError(f"internal: {record.name} was reported packed but is not sparse")
        original = np.asarray(value, dtype=np.float64)
        pruned = np.asarray(materialize(sparse_op), dtype=np.float64)
        layer_error_sq = float(np.sum(np.square(original - pruned)))
        layer_norm_sq = float(np.sum(np.square(original)))
        error_sq += layer_error_sq
        norm_sq += layer_norm_sq
        layers.append(
            {
                "function": record.function,
                "name": record.name,
                "sparsity": record.sparsity,
                "relative_error": _ratio(layer_error_sq, layer_norm_sq),
            }
        )
    worst = max(layers, key=lambda layer: layer["relative_error"], default=None)
    totals = report.totals()
    return {
        "model_bytes": sum(source.stored_bytes() for source in weight_sources(prog, 0)),
        "packed": totals["packed"],
        "considered": totals["weights"],
        "relative_error": _ratio(error_sq, norm_sq),
        "worst": worst,
        "layers": layers,
    }


def _ratio(error_sq: float, norm_sq: float) -> float:
    if error_sq == 0.0:
        return 0.0
    return math.sqrt(error_sq) / math.sqrt(norm_sq) if norm_sq > 0 else math.inf


def cmd_sweep(args: argparse.Namespace) -> int:
    from mil_sparsity.inspect_model import format_rows, package_size, weight_sources
    from mil_sparsity.passes import PASS_CLASSES

    import mil_sparsity as ms

    points, notes = _sweep_points(args)
    plot_module = _matplotlib() if args.plot else None
    if args.plot:
        _check_plot_path(plot_module, args.plot)
    mlmodel, prog = _load(args.model)
    _check_sparse_opsets(prog, args.model)
    original_bytes = sum(source.stored_bytes() for source in weight_sources(prog, 0))
    disk_bytes = package_size(args.model)
    multifunction = len(prog.functions) > 1
    del prog
    pass_cls = {cls.pass_name: cls for cls in PASS_CLASSES}[ms.PRUNE_BY_MAGNITUDE]

    runs: list[dict[str, Any]] = []
    bar = _progress(points, desc="sweep", quiet=args.json)
    try:
        for label, level, config in bar:
            bar.set_postfix_str(f"{label} {level:.2f}")
            result = _sweep_point(mlmodel, pass_cls, config)
            result.update(
                pattern=label,
                sparsity=level,
                config=ms.config_to_dict(config),
                size_ratio=result["model_bytes"] / original_bytes if original_bytes else None,
                est_package_bytes=disk_bytes - original_bytes + result["model_bytes"],
            )
            runs.append(result)
    finally:
        bar.close()

    if args.plot:
        _plot(plot_module, args.plot, args.model, original_bytes, runs)
    if args.json:
        _emit_json(
            {
                "model": args.model,
                "original": {"model_bytes": original_bytes, "package_bytes": disk_bytes},
                "runs": [{key: run[key] for key in _RUN_KEYS} for run in runs],
                "notes": notes,
                "plot": args.plot,
            }
        )
        return 0
    rows = [("pattern", "sparsity", "packed", "model bytes", "size", "rel. error", "worst weight (error)")]
    rows.append(("original", "-", "-", f"{original_bytes:,}", "100.0%", "0.0000", "-"))
    for run in runs:
        worst = run["worst"]
        rows.append(
            (
                run["pattern"],
                f"{run['sparsity']:.3f}",
                f"{run['packed']}/{run['considered']}",
                f"{run['model_bytes']:,}",
                "-" if run["size_ratio"] is None else f"{run['size_ratio']:.1%}",
                f"{run['relative_error']:.4f}",
                "-" if worst is None else (
                    f"{worst['function'] + '/' if multifunction else ''}{worst['name']} "
                    f"({worst['relative_error']:.4f})"
                ),
            )
        )
    lines = format_rows(rows, right_align=(1, 2, 3, 4, 5))
    lines.append("")
    lines.append(
        "model bytes: every weight as it would be stored (pruned weights packed, the rest as "
        f"now); package on disk now: {disk_bytes:,} bytes"
    )
    lines.append(
        "rel. error: sqrt(sum ||W - W_pruned||^2) / sqrt(sum ||W||^2) over the packed weights"
    )
    lines.extend(f"note: {note}" for note in notes)
    if args.plot:
        lines.append(f"wrote {args.plot}")
    _emit("\n".join(lines))
    return 0


_RUN_KEYS = (
    "pattern", "sparsity", "config", "packed", "considered", "model_bytes", "size_ratio",
    "est_package_bytes", "relative_error", "worst", "layers",
)


def _matplotlib() -> Any:
    """matplotlib's Figure class, or a CLIError naming the extra to install."""
    try:
        figure = importlib.import_module("matplotlib.figure")
    except ImportError:
        raise CLIError(f"--plot needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") from None
    return figure


def _check_plot_path(figure_module: Any, path: str) -> None:
    """Before the sweep runs: the plot's directory exists and matplotlib knows its format."""
    from mil_sparsity._atomic import check_destination

    try:
        check_destination(path, overwrite=True)
    except (OSError, ValueError) as error:
        raise CLIError(f"--plot: {error}") from None
    extension = os.path.splitext(path)[1][1:].lower()
    supported = figure_module.Figure().canvas.get_supported_filetypes()
    if extension and extension not in supported:
        raise UsageError(
            f"sweep: --plot {path}: matplotlib cannot write .{extension} files; use one of "
            + ", ".join(f".{name}" for name in sorted(supported))
        )


def _plot(figure_module: Any, path: str, model: str, original_bytes: int, runs: list[dict[str, Any]]) -> None:
    from mil_sparsity._atomic import atomic_output

    figure = figure_module.Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    by_pattern: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_pattern.setdefault(run["pattern"], []).append(run)
    for label, pattern_runs in by_pattern.items():
        pattern_runs = sorted(pattern_runs, key=lambda run: run["model_bytes"])
        xs = [run["model_bytes"] / 1024 for run in pattern_runs]
        ys = [run["relative_error"] for run in pattern_runs]
        axes.plot(xs, ys, marker="o", label=label)
        for run, x, y in zip(pattern_runs, xs, ys):
            axes.annotate(f"{run['sparsity']:.2f}", (x, y), textcoords="offset points",
                          xytext=(4, 4), fontsize=8)
    axes.plot([original_bytes / 1024], [0.0], marker="s", color="black", linestyle="",
              label="original")
    axes.set_xlabel("weights as stored (KiB)")
    axes.set_ylabel("relative Frobenius error")
    axes.set_title(f"mil-sparsity sweep: {os.path.basename(model.rstrip(os.sep))}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    try:
        with atomic_output(path, overwrite=True) as staging:
            figure.savefig(staging)
    except Exception as error:
        raise CLIError(f"--plot: cannot write {path}: {_one_line(error)}") from None


# ----- entry point ----------------------------------------------------------------------------
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "passes": cmd_passes,
    "report": cmd_report,
    "prune": cmd_prune,
    "pack": cmd_pack,
    "sweep": cmd_sweep,
}


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    sys.stderr.flush()
    return code


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help, --version
            return int(done.code or 0) if not isinstance(done.code, str) else 2
        with _quiet_coremltools():
            return COMMANDS[args.command](args)
    except CLIError as error:
        return _fail(str(error), error.code)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", 130)
    except Exception as error:
        if os.environ.get("MIL_SPARSITY_TRACEBACK"):
            raise
        return _fail(f"unexpected {type(error).__name__}: {error}", 1)


if __name__ == "__main__":
    raise SystemExit(main())
