"""A prior for ``fit`` when probing every weight at every setting costs too much.

Scores, in the manner of OWL (Yin et al., 2024, "Outlier Weighed Layerwise Sparsity"): each
element's score is ``|W_ij| * ||x_j||`` (Wanda's, from the channel statistics; ``|W_ij|`` without
them). A weight's *outlier ratio* is the fraction of its elements scoring above ``M`` times the
weight's mean score (M = 5): OWL's measure of how much a layer relies on a few large inputs,
which ranks weights before anything is probed.

A weight's *proxy loss* at sparsity s is the share of its score energy that pruning the
lowest-scoring fraction s removes, ``sum(lowest s of S^2) / sum(S^2)``: the relative output
error of that layer alone under a diagonal input covariance. ``fit`` turns proxies into
predicted model losses with one factor measured on a few probes, and probes in full only the
weights the prediction leaves uncertain (see :func:`mil_sparsity.fit.api.fit`).

Pure numpy on score arrays; no MIL objects.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np
from numpy.typing import NDArray

OUTLIER_MULTIPLE = 5.0
T = TypeVar("T")


def outlier_ratio(scores: NDArray[np.floating], multiple: float = OUTLIER_MULTIPLE) -> float:
    """Fraction of ``scores`` above ``multiple`` times their mean (0 for an all-zero array)."""
    flat = np.asarray(scores, dtype=np.float32).reshape(-1)
    mean = float(flat.mean(dtype=np.float64)) if flat.size else 0.0
    if mean <= 0.0:
        return 0.0
    return float(np.count_nonzero(flat > multiple * mean)) / flat.size


def proxy_losses(scores: NDArray[np.floating], sparsities: Sequence[float]) -> NDArray[np.float64]:
    """For each sparsity s: the share of ``sum(scores**2)`` held by the ``round(s * N)`` lowest
    scores (0 where the total is 0)."""
    energy = np.sort(np.square(np.asarray(scores, dtype=np.float64).reshape(-1)))
    if energy.size == 0:
        return np.zeros(len(sparsities))
    cumulative = np.concatenate(([0.0], np.cumsum(energy)))
    total = cumulative[-1]
    counts = np.array([round(s * energy.size) for s in sparsities], dtype=np.intp)
    removed = cumulative[np.clip(counts, 0, energy.size)]
    return removed / total if total > 0 else np.zeros(len(sparsities))


def spread_pick(order: Sequence[T], count: int) -> list[T]:
    """``count`` items of ``order`` at evenly spaced ranks (first and last included)."""
    if count <= 0 or not order:
        return []
    if count >= len(order):
        return list(order)
    positions = np.unique(np.round(np.linspace(0, len(order) - 1, count)).astype(np.intp))
    return [order[int(p)] for p in positions]
