"""``mil-sparsity``: inspect, prune, pack and sweep Core ML ML Program packages from the shell.

Subcommands (each has ``--help``), one module each::

    mil-sparsity passes [--json]                                          passes.py
    mil-sparsity report MODEL [--json] [--weight-threshold N]             report.py
    mil-sparsity prune  MODEL -o OUT (--threshold T [--min-sparsity P] | --target-sparsity S
                        [--block-size B] | --n-m N:M | --config FILE) [--dim D]
                        [--weight-threshold N] [--min-deployment-target iOS16|iOS17|iOS18]
                        [--force] [--streaming] [--json]                  prune.py
    mil-sparsity pack   MODEL -o OUT [--min-sparsity P] [--weight-threshold N] [--force]
                        [--streaming] [--json]                            pack.py
    mil-sparsity sweep  MODEL [--sparsities 0.5,0.75,0.9] [--patterns unstructured,block:4,n:m:3:4]
                        [--dim D] [--weight-threshold N] [--plot FILE.png] [--json]
                        [SAMPLES] [--backend reference|coreml]            sweep.py
    mil-sparsity compare A B SAMPLES [--backend reference|coreml] [--json]   compare.py
    mil-sparsity calibrate MODEL -o STATS.npz SAMPLES [--gram] [--sequential CONFIG]
                        [--force] [--json]                                calibrate.py
    mil-sparsity fit    MODEL -o OUT SAMPLES (--max-size R | --min-cosine C) [--plan FILE.json]
                        [--calibration STATS.npz] [--methods M,..] [--compute-unit all|ane|cpu]
                        [--jobs N] [--plot FILE.png] [--force] [--json]   fit.py

    SAMPLES: (--data FILE.npz | --random-inputs N [--seed S] [--int-range LOW..HIGH])
             [--function NAME]                                             _inputs.py

``prune`` and ``pack`` share one rewrite path (``_rewrite.py``); errors, option types, the
terminal and model loading are shared in ``_common.py``; input samples, the function and the
evaluation backend in ``_inputs.py``. A new command is a module with
``register(commands)`` (adds its parser, ``set_defaults(run=...)``) listed in :data:`COMMANDS`.

Everything that decides or computes goes through the library's public API: the configs validate
their own values, the passes select, prune and pack (:func:`mil_sparsity.apply_pipeline`,
:func:`mil_sparsity.streaming.compress_package`), :func:`mil_sparsity.sweep` measures sweeps,
:mod:`mil_sparsity.inspect_model` reads what a package stores.

Errors are one line on stderr, ``mil-sparsity: error: ...``, without a traceback (set
``MIL_SPARSITY_TRACEBACK=1`` to get one for unexpected errors). Exit codes: 0 success, 1 bad
input or failure (missing/corrupt/unsupported model, unreadable config, existing output), 2
usage (unknown or conflicting options, values out of range) or a package refused by the
safety checks (:mod:`mil_sparsity.format.package_guard`), 130 interrupted. Outputs are
written atomically (:func:`mil_sparsity.atomic_output`): on any error nothing is written and the
input is never touched.

The installed ``mil-sparsity`` script starts in :mod:`mil_sparsity_cli`, which imports
coremltools with its import-time notices silenced before importing this package.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from types import ModuleType
from typing import Optional

from mil_sparsity import __version__
from mil_sparsity.errors import MilSparsityError, UnsafePackageError
from mil_sparsity.format.package_guard import SECURITY_NOTE
from mil_sparsity.cli import calibrate, compare, fit, pack, passes, prune, report, sweep
from mil_sparsity.cli._common import PROG, CLIError, Parser, one_line, quiet_coremltools

#: the command modules, in --help order
COMMANDS: tuple[ModuleType, ...] = (passes, report, prune, pack, sweep, compare, calibrate, fit)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Sparsify the weights of Core ML ML Program packages (.mlpackage) and "
        "inspect how they are stored. Works on Linux without the Core ML runtime.",
        epilog="Run 'mil-sparsity COMMAND --help' for a command's options.\n\n" + textwrap.fill(SECURITY_NOTE, 88),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {one_line(message)}\n")
    sys.stderr.flush()
    return code


def _exit_code(error: Exception) -> int:
    """2 for a package the safety checks refused (also when a command re-worded that refusal
    as a CLIError: it is the error's context), else the CLIError's own code, else 1."""
    if isinstance(error, UnsafePackageError) or isinstance(error.__context__, UnsafePackageError):
        return 2
    return error.code if isinstance(error, CLIError) else 1


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help, --version
            return int(done.code or 0) if not isinstance(done.code, str) else 2
        with quiet_coremltools():
            code: int = args.run(args)
            return code
    except CLIError as error:
        return _fail(str(error), _exit_code(error))
    except MilSparsityError as error:  # one of ours that no command worded: still one clear line
        return _fail(str(error), _exit_code(error))
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", 130)
    except Exception as error:
        if os.environ.get("MIL_SPARSITY_TRACEBACK"):
            raise
        return _fail(f"unexpected {type(error).__name__}: {error}", 1)


__all__ = ["COMMANDS", "build_parser", "main"]
