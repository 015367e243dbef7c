"""mil_sparsity: sparsity passes for coremltools MIL pipelines.

Importing the package registers ``mil_sparsity::prune_by_threshold``,
``mil_sparsity::prune_by_magnitude`` and ``mil_sparsity::sparse_pack`` in coremltools'
pass registry (re-importing or reloading is safe).
"""

from __future__ import annotations

import logging as _logging
import os as _os
import sys as _sys


def _quiet_coremltools_import_for_the_command_line() -> None:
    """The ``mil-sparsity`` command prints one line per error; coremltools' import-time notices
    (no Core ML runtime on Linux, untested torch version) would come before it. Only for that
    command: a library user importing mil_sparsity still sees them."""
    command = _os.path.basename(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ""
    if command != "mil-sparsity" or "coremltools" in _sys.modules:
        return
    previous = _logging.root.manager.disable
    _logging.disable(_logging.WARNING)
    try:
        import coremltools  # noqa: F401
    finally:
        _logging.disable(previous)


_quiet_coremltools_import_for_the_command_line()

from mil_sparsity.configs import (  # noqa: E402
    BlockConfig,
    MagnitudeConfig,
    NMConfig,
    PackConfig,
    SparsityConfig,
    ThresholdConfig,
    config_from_dict,
    config_to_dict,
)
from mil_sparsity.passes import register_passes  # noqa: E402
from mil_sparsity.posthoc import apply_pipeline  # noqa: E402
from mil_sparsity.report import SparsityReport, WeightRecord  # noqa: E402
from mil_sparsity.selector import OpSelector  # noqa: E402

register_passes()

PRUNE_BY_THRESHOLD = "mil_sparsity::prune_by_threshold"
PRUNE_BY_MAGNITUDE = "mil_sparsity::prune_by_magnitude"
SPARSE_PACK = "mil_sparsity::sparse_pack"

__version__ = "0.1.0"

__all__ = [
    "BlockConfig",
    "MagnitudeConfig",
    "NMConfig",
    "OpSelector",
    "PRUNE_BY_MAGNITUDE",
    "PRUNE_BY_THRESHOLD",
    "PackConfig",
    "SPARSE_PACK",
    "SparsityConfig",
    "SparsityReport",
    "ThresholdConfig",
    "WeightRecord",
    "apply_pipeline",
    "config_from_dict",
    "config_to_dict",
]
