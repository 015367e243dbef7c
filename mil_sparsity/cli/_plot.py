"""``--plot``, shared by ``sweep`` and ``fit``: matplotlib is optional (the ``plot`` extra), the
destination and its format are checked before any work runs, the figure is written atomically."""

from __future__ import annotations

import importlib
import os
from typing import Any

import mil_sparsity as ms
from mil_sparsity.cli._common import CLIError, UsageError, one_line

PLOT_INSTALL_HINT = 'pip install "mil_sparsity[plot]"'


def matplotlib_figure() -> Any:
    """matplotlib's Figure module, or a CLIError naming the extra to install."""
    try:
        return importlib.import_module("matplotlib.figure")
    except ImportError:
        raise CLIError(f"--plot needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") from None


def check_plot_path(figure_module: Any, path: str, command: str) -> None:
    """Before the work runs: the plot's directory exists and matplotlib knows its format."""
    try:
        ms.check_destination(path, overwrite=True)
    except (OSError, ValueError) as error:
        raise CLIError(f"--plot: {error}") from None
    extension = os.path.splitext(path)[1][1:].lower()
    supported = figure_module.Figure().canvas.get_supported_filetypes()
    if extension and extension not in supported:
        raise UsageError(
            f"{command}: --plot {path}: matplotlib cannot write .{extension} files; use one of "
            + ", ".join(f".{name}" for name in sorted(supported))
        )


def save_figure(figure: Any, path: str) -> None:
    """Write ``figure`` to ``path`` atomically; a CLIError if that fails."""
    try:
        with ms.atomic_output(path, overwrite=True) as staging:
            figure.savefig(staging)
    except Exception as error:
        raise CLIError(f"--plot: cannot write {path}: {one_line(error)}") from None
