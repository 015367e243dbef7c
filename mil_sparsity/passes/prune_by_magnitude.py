"""``mil_sparsity::prune_by_magnitude``: exact unstructured, block or n:m magnitude pruning.

Graph: ``const(w) -> op``  becomes  ``constexpr_sparse_to_dense(nonzero_data, mask) -> op``.
Configs: :class:`~mil_sparsity.MagnitudeConfig` (exactly round(s*N) smallest elements),
:class:`~mil_sparsity.BlockConfig` (lowest-L2 blocks along ``dim``),
:class:`~mil_sparsity.NMConfig` (n smallest of every m along ``dim``). Block and n:m apply by
default only to conv/conv_transpose/linear weights and constant matmul operands. There is no
default: running the pass without a config raises ValueError.

Option ``calibration`` (an :class:`~mil_sparsity.ActivationStats` or the path of one, loaded
once when the option is set): the statistics for configs with ``scoring="activation"`` (Wanda:
rank ``|w| * sqrt(mean x_j^2)`` of the input channel j; unstructured prunes per output row).
Every activation-scored weight must have statistics under its const name and function.
"""

from __future__ import annotations

from typing import Optional

from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.passes._base import PassOption, SparsityPass
from mil_sparsity.plan import catalog


class PruneByMagnitude(SparsityPass):
    entry = catalog.PRUNE_BY_MAGNITUDE

    #: activation statistics for ``scoring="activation"`` configs (an ActivationStats, or the
    #: path of one, loaded once when set; None: not set)
    calibration: PassOption[Optional[ActivationStats]] = PassOption(None)
