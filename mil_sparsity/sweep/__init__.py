"""``mil_sparsity.sweep``: size and weight error (and optionally output quality) over several
pruning settings. :mod:`~mil_sparsity.sweep.run` runs the points, :mod:`~mil_sparsity.sweep.points`
builds them, :mod:`~mil_sparsity.sweep.results` holds the rows."""

from mil_sparsity.sweep.points import DEFAULT_SPARSITIES, PATTERN_HELP, SweepArgumentError, SweepConfig
from mil_sparsity.sweep.points import SweepPoint, pattern_points, sweep_points
from mil_sparsity.sweep.results import LayerError, QualityLike, SweepResult, SweepRow
from mil_sparsity.sweep.run import Samples, sweep

__all__ = [
    "DEFAULT_SPARSITIES",
    "PATTERN_HELP",
    "LayerError",
    "QualityLike",
    "Samples",
    "SweepArgumentError",
    "SweepConfig",
    "SweepPoint",
    "SweepResult",
    "SweepRow",
    "pattern_points",
    "sweep",
    "sweep_points",
]
