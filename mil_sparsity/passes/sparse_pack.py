"""``mil_sparsity::sparse_pack``: store weights that are already sparse in sparse form.

For models pruned during training: no value changes. Graph: ``const(w) -> op`` becomes
``constexpr_sparse_to_dense(nonzero_data, mask) -> op`` when the weight's zeros reach
``minimum_sparsity_percentile`` (default: whenever the sparse form is smaller). Handles
float16, float32, int8 and uint8 weights. Config: :class:`~mil_sparsity.PackConfig`
(default ``PackConfig()``). Option ``joint_compression`` (bool, default False, iOS18+): also
give palettized (``constexpr_lut_to_dense``) and quantized (``constexpr_blockwise_shift_scale``)
weights with zeros a sparse mask, keeping their compression (see ``_joint``).
"""

from __future__ import annotations

from typing import Iterator, Optional

from coremltools.converters.mil.mil.block import Block
from coremltools.converters.mil.mil.program import Program

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.format import sparse_format
from mil_sparsity.passes._base import PassOption, PassResult, Planned, SparsityPass
from mil_sparsity.passes._joint import plan_joint
from mil_sparsity.plan import catalog
from mil_sparsity.report import WeightRecord
from mil_sparsity.selector import OpSelector


class SparsePack(SparsityPass):
    entry = catalog.SPARSE_PACK

    #: also add sparse masks to palettized / quantized weights (iOS18+; see ``_joint``)
    joint_compression: PassOption[bool] = PassOption(False)

    def apply(self, prog: Program) -> PassResult:
        if self.joint_compression:
            for name, function in prog.functions.items():
                if sparse_format.sparse_form(function.opset_version) is not sparse_format.UINT1_MASK_FORM:
                    raise InvalidInputError(
                        f"{self.pass_name}: joint_compression needs iOS18 or later, but function "
                        f"{name!r} targets {sparse_format.target_name(function.opset_version)}. Convert with "
                        "minimum_deployment_target=ct.target.iOS18, or drop joint_compression."
                    )
        return super().apply(prog)

    def _plan_more(
        self, function_name: str, block: Block, selector: OpSelector
    ) -> Iterator[tuple[Optional[Planned], WeightRecord]]:
        if not self.joint_compression:
            return iter(())
        return plan_joint(function_name, block, selector, self.rules())
