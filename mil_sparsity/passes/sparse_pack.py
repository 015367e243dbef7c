"""``mil_sparsity::sparse_pack``: store weights that are already sparse in sparse form.

For models pruned during training: no value changes. Graph: ``const(w) -> op`` becomes
``constexpr_sparse_to_dense(nonzero_data, mask) -> op`` when the weight's zeros reach
``minimum_sparsity_percentile`` (default: whenever the sparse form is smaller). Handles
float16, float32, int8 and uint8 weights. Config: :class:`~mil_sparsity.PackConfig`
(default ``PackConfig()``).
"""

from __future__ import annotations

from mil_sparsity.configs import PackConfig
from mil_sparsity.passes._base import SparsityPass
from mil_sparsity.selector import OpSelector


class SparsePack(SparsityPass):
    pass_name = "mil_sparsity::sparse_pack"
    description = "Pack weights that already hold zeros (training-time pruning) without changing them."
    accepted_configs = (PackConfig,)
    supported_dtypes = frozenset({"float16", "float32", "int8", "uint8"})

    def default_selector(self) -> OpSelector:
        return OpSelector(global_config=PackConfig())
