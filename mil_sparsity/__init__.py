"""mil_sparsity: sparsity passes for coremltools MIL pipelines.

Importing the package registers ``mil_sparsity::prune_by_threshold``,
``mil_sparsity::prune_by_magnitude`` and ``mil_sparsity::sparse_pack`` in coremltools'
pass registry (re-importing or reloading is safe).
"""

from __future__ import annotations

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
from mil_sparsity.passes import register_passes
from mil_sparsity.posthoc import apply_pipeline
from mil_sparsity.report import SparsityReport, WeightRecord
from mil_sparsity.selector import OpSelector

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
