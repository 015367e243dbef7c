"""The installed ``mil-sparsity`` command: quiet coremltools' import, run :mod:`mil_sparsity.cli`.

The command prints one line per error, but importing coremltools logs notices first (no Core ML
runtime on Linux, an untested torch version). Python imports a package before any of its
modules, so ``mil_sparsity.cli`` cannot run before ``mil_sparsity`` (which imports
coremltools): this top-level module can. It imports coremltools with log records below ERROR
disabled, restores logging, then imports and runs the command line. ``import mil_sparsity``
itself never silences anything; ``python -m mil_sparsity.cli`` runs the same command without
this step.
"""

from __future__ import annotations

import logging


def _import_coremltools_quietly() -> None:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import coremltools  # noqa: F401
    finally:
        logging.disable(previous)


def main() -> int:
    """Entry point of the ``mil-sparsity`` console script; returns the exit code."""
    _import_coremltools_quietly()
    from mil_sparsity.cli import main as run_command_line

    return run_command_line()


if __name__ == "__main__":
    raise SystemExit(main())
