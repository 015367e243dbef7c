"""``mil_sparsity::prune_by_threshold``: zero every |w| <= threshold, then pack.

Graph: ``const(w) -> op``  becomes  ``constexpr_sparse_to_dense(nonzero_data, mask) -> op`` for
each float weight with more than ``weight_threshold`` elements whose sparsity after
thresholding reaches ``minimum_sparsity_percentile``; other weights are left untouched.
Config: :class:`~mil_sparsity.ThresholdConfig` (default ``ThresholdConfig()`` when none is set).
"""

from __future__ import annotations

from mil_sparsity.passes._base import SparsityPass
from mil_sparsity.plan import catalog


class PruneByThreshold(SparsityPass):
    entry = catalog.PRUNE_BY_THRESHOLD
