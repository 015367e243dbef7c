"""mil_sparsity: sparsity passes for coremltools MIL pipelines.

Importing the package registers ``mil_sparsity::prune_by_threshold``,
``mil_sparsity::prune_by_magnitude`` and ``mil_sparsity::sparse_pack`` in coremltools'
pass registry (re-importing or reloading is safe).

Also public here: :func:`sweep` / :class:`SweepResult` (size and weight error over several
pruning settings, :mod:`mil_sparsity.sweep`) and :func:`atomic_output` /
:func:`check_destination` (write a file or package so that all of it appears or nothing does,
:mod:`mil_sparsity.format.atomic`), which ``apply_pipeline`` users and the command line share.
"""

from __future__ import annotations

from mil_sparsity.format.atomic import atomic_output, check_destination
from mil_sparsity.configs import (
    BlockConfig,
    MagnitudeConfig,
    NMConfig,
    PackConfig,
    SparsityConfig,
    ThresholdConfig,
    config_from_dict,
    config_to_dict,
)
from mil_sparsity.calibration import ActivationStats, collect_activation_stats
from mil_sparsity.fit import FitResult, fit
from mil_sparsity.errors import InvalidInputError, InvalidTypeError, MilSparsityError, UnsafePackageError
from mil_sparsity.model.inventory import Weight, weights
from mil_sparsity.passes import register_passes
from mil_sparsity.plan import catalog
from mil_sparsity.posthoc import apply_pipeline
from mil_sparsity.oneshot import pack_weights, prune_weights
from mil_sparsity import reference
from mil_sparsity.quality import QualityReport, ReferenceOutputs, compare
from mil_sparsity.report import SparsityReport, WeightRecord
from mil_sparsity.selector import OpSelector
from mil_sparsity.sweep import SweepResult, sweep

register_passes()

PRUNE_BY_THRESHOLD = catalog.PRUNE_BY_THRESHOLD.name
PRUNE_BY_MAGNITUDE = catalog.PRUNE_BY_MAGNITUDE.name
SPARSE_PACK = catalog.SPARSE_PACK.name

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "FitResult",
    "InvalidInputError",
    "InvalidTypeError",
    "MilSparsityError",
    "UnsafePackageError",
    "Weight",
    "BlockConfig",
    "MagnitudeConfig",
    "NMConfig",
    "OpSelector",
    "PRUNE_BY_MAGNITUDE",
    "PRUNE_BY_THRESHOLD",
    "PackConfig",
    "QualityReport",
    "ReferenceOutputs",
    "SPARSE_PACK",
    "SparsityConfig",
    "SparsityReport",
    "SweepResult",
    "ThresholdConfig",
    "WeightRecord",
    "apply_pipeline",
    "atomic_output",
    "check_destination",
    "collect_activation_stats",
    "compare",
    "config_from_dict",
    "config_to_dict",
    "fit",
    "pack_weights",
    "prune_weights",
    "reference",
    "sweep",
    "weights",
]
