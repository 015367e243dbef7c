"""What every command shares: errors, option types, the terminal, and loading the model.

Errors are :class:`CLIError` (exit 1: bad input or failure) and :class:`UsageError` (exit 2:
unknown, conflicting or out-of-range options); :func:`mil_sparsity.cli.main` prints them as one
line. While a command runs, :func:`quiet_coremltools` silences coremltools (its log records,
warnings and per-pipeline tqdm bars); our own progress bar and error line go to the real
terminal (:func:`terminal`). Only public library API is used.
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
from typing import Any, Callable, Iterator, NoReturn, Optional, TypeAlias, TypeVar

import mil_sparsity as ms
from mil_sparsity.model.io import load_model, load_program
from mil_sparsity.plan.targets import posthoc_target_names

PROG = "mil-sparsity"
#: --min-deployment-target values: iOS16 (the sparse op's first target) to the newest
TARGETS = posthoc_target_names()

T = TypeVar("T")


# ----- errors ---------------------------------------------------------------------------------
class CLIError(Exception):
    """An error reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CLIError):
    """A bad option: exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)


def one_line(message: object) -> str:
    return " ".join(str(message).split())


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a :class:`UsageError` (one line, exit 2), not usage text."""

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG):].strip()
        hint = f" (see '{self.prog} --help')"
        raise UsageError(f"{command}: {message}{hint}" if command else f"{message}{hint}")


#: what each command module's ``register`` adds its parser to
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


# ----- option value types ---------------------------------------------------------------------
def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, else an error naming the bound and text."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def n_m(text: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected N:M with integers N <= M, e.g. 3:4; got {text!r}")
    return int(parts[0]), int(parts[1])


def target(text: str) -> str:
    for name in TARGETS:
        if text.lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(TARGETS)}, got {text!r}")


def float_list(text: str) -> list[float]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of numbers")
    return [number(item) for item in items]


def name_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of patterns")
    return items


def add_weight_threshold(parser: argparse.ArgumentParser, default: str = "2048") -> None:
    parser.add_argument(
        "--weight-threshold",
        type=non_negative_int,
        metavar="N",
        help=f"consider only weights with more than N elements (default {default})",
    )


def add_json(parser: argparse.ArgumentParser, what: str = "a table") -> None:
    parser.add_argument("--json", action="store_true", help=f"print JSON instead of {what}")


def make_config(factory: Callable[..., T], option: str, **values: Any) -> T:
    """Build a config from the options that are set; the library validates, we name the option."""
    try:
        return factory(**{key: value for key, value in values.items() if value is not None})
    except (TypeError, ValueError) as error:
        raise UsageError(f"{option}: {one_line(error)}") from None


# ----- the terminal ---------------------------------------------------------------------------
_TERMINAL: list[Any] = []  # the real stderr while quiet_coremltools redirects sys.stderr


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """Silence coremltools while a command runs: its log records (a failing pass logs an
    ERROR banner before the exception we report), its warnings, and its per-pipeline tqdm bars
    (``Running MIL ... pipeline``), which would garble our progress bar and stderr. The bars
    write to ``sys.stderr``, which points at a sink meanwhile; our own bar and error line use
    the real stream (:func:`terminal`)."""
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


def terminal() -> Any:
    """The real stderr, also inside :func:`quiet_coremltools`."""
    return _TERMINAL[-1] if _TERMINAL else sys.stderr


def isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Any = None, *, total: Optional[int] = None, desc: str, quiet: bool) -> Any:
    """A tqdm bar on the terminal, silent when ``quiet`` (--json) or stderr is not a terminal."""
    tqdm = importlib.import_module("tqdm").tqdm  # untyped third-party module: imported as Any
    stream = terminal()
    disable = quiet or not isatty(stream)
    return tqdm(iterable, total=total, desc=desc, file=stream, disable=disable, leave=False)


def emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def emit_json(data: Any) -> None:
    emit(json.dumps(finite(data), indent=2))


def finite(data: Any) -> Any:
    """NaN and infinities as null, so the output is strict JSON."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


# ----- models and output paths ----------------------------------------------------------------
def require_exists(path: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"model not found: {path}")


def load(path: str) -> tuple[Any, Any]:
    """(MLModel, PyMIL program) of a saved ML Program, or a one-line CLIError."""
    mlmodel = load_mlmodel(path)
    try:
        prog = load_program(mlmodel)
    except Exception as error:
        raise CLIError(f"cannot read model {path}: {type(error).__name__}: {one_line(error)}") from None
    return mlmodel, prog


def load_mlmodel(path: str) -> Any:
    """The MLModel of a saved ML Program (its program not loaded yet), or a one-line CLIError."""
    require_exists(path)
    try:
        mlmodel = load_model(path)
    except Exception as error:
        raise CLIError(f"cannot read model {path}: {one_line(error)}") from None
    try:
        kind = str(mlmodel.get_spec().WhichOneof("Type"))
    except Exception as error:
        raise CLIError(f"cannot read model spec: {one_line(error)}") from None
    if kind == "None":
        raise CLIError(f"cannot read model {path}: not a Core ML model (its spec has no model type)")
    if kind != "mlProgram":
        raise CLIError(
            f"{path} is a {kind!r} model; mil-sparsity works on ML Program models. Re-convert "
            'it with ct.convert(..., convert_to="mlprogram", '
            "minimum_deployment_target=ct.target.iOS16) or later"
        )
    return mlmodel


def check_output(output: str, model: str, force: bool) -> str:
    """-o/--output: an .mlpackage that is not the input, in an existing directory."""
    if not output.endswith(".mlpackage"):
        raise UsageError(f"-o/--output must end with .mlpackage, got {output!r}")
    out = os.path.realpath(output)
    source = os.path.realpath(model)
    if out == source or out.startswith(source + os.sep) or source.startswith(out + os.sep):
        raise UsageError(f"-o/--output {output!r} must not be the input model, inside it, or contain it")
    try:
        return ms.check_destination(output, overwrite=force)
    except FileExistsError as error:
        raise CLIError(f"{error} (use --force to replace it)") from None
    except (OSError, ValueError) as error:
        raise CLIError(str(error)) from None
