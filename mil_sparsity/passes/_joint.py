"""Joint compression for ``sparse_pack(joint_compression=True)`` (iOS18+).

A weight already palettized or quantized whose decompressed value holds zeros keeps its
compression and gains a sparse mask:

* ``constexpr_lut_to_dense(indices, lut)`` becomes
  ``constexpr_lut_to_sparse(indices_mask, indices_nonzero_data, lut) -> (mask, nonzero_data)
  -> constexpr_sparse_to_dense``;
* ``constexpr_blockwise_shift_scale(data, scale[, offset])`` becomes
  ``constexpr_sparse_blockwise_shift_scale(data_mask, nonzero_data, scale[, offset]) ->
  (mask, nonzero_data) -> constexpr_sparse_to_dense``.

The mask is ``decompressed != 0`` and the kept indices/data are the old ones at those
positions, so every nonzero decompressed value is unchanged bit for bit (a decompressed ``-0.0``
reads back as ``+0.0``). Sizes are counted in the compressed domain: the old form stores
``N * bits``, the new one ``nonzero * bits + N`` mask bits; with ``minimum_sparsity_percentile=None``
the weight is rewritten only when that is smaller (break-even sparsity about ``1 / bits``). Vector
palettization (LUT entries that are vectors) is left alone, with a reason.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import attrs
import numpy as np
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil.block import Block
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.var import Var

from mil_sparsity.errors import InvalidTypeError
from mil_sparsity import _coremltools_private as private
from mil_sparsity.model import pymil as _graph
from mil_sparsity.format import sparse_format
from mil_sparsity.configs import PackConfig, config_to_dict
from mil_sparsity.plan.handlers import Skip, pack_skip
from mil_sparsity.kernels import nonzero_mask
from mil_sparsity.report import PACKED, SKIPPED, WeightRecord
from mil_sparsity.plan.rules import Decision, PassRules, record, select
from mil_sparsity.selector import OpSelector

JOINT_OP_TYPES = ("constexpr_lut_to_dense", "constexpr_blockwise_shift_scale")


def _compressed_input(op: Operation) -> Var:
    return op.indices if op.op_type == "constexpr_lut_to_dense" else op.data


def _builder(op: Operation, mask: np.ndarray) -> Callable[[], Var]:
    """The new op chain for ``op``, built from arrays fixed now (phase 1)."""
    stored = _compressed_input(op).val
    kept = stored[mask].astype(stored.dtype)  # keeps the sub-byte dtype's metadata
    mask_uint1 = mask.view(private.UINT1_DTYPE)

    def build() -> Var:
        if op.op_type == "constexpr_lut_to_dense":
            extra = {} if op.vector_axis is None else {"vector_axis": op.vector_axis}
            sparse_mask, nonzero = mb.constexpr_lut_to_sparse(
                indices_mask=mask_uint1,
                indices_nonzero_data=kept,
                lut=op.lut,
                before_op=op,
                name=sparse_format.joint_name(str(op.name), "constexpr_lut_to_sparse"),
                **extra,
            )
        else:
            extra = {} if op.offset is None else {"offset": op.offset}
            sparse_mask, nonzero = mb.constexpr_sparse_blockwise_shift_scale(
                data_mask=mask_uint1,
                nonzero_data=kept,
                scale=op.scale,
                before_op=op,
                name=sparse_format.joint_name(str(op.name), "constexpr_sparse_blockwise_shift_scale"),
                **extra,
            )
        inputs = {sparse_format.NONZERO_DATA: nonzero, sparse_format.MASK: sparse_mask}
        new_var: Var = mb.constexpr_sparse_to_dense(
            **inputs, before_op=op, name=sparse_format.replacement_name(str(op.name))
        )
        return new_var

    return build


@attrs.frozen
class _JointOutcome:
    """Phase 1 for one joint op: the sparse mask to add (or the reason not to), and sizes."""

    mask: Optional[np.ndarray]
    skip: Optional[Skip]
    sparsity: float
    stored_bytes: int
    packed_bytes: int


def _outcome(op: Operation, config: PackConfig) -> _JointOutcome:
    if op.op_type == "constexpr_lut_to_dense" and op.lut.shape[-1] != 1:
        return _JointOutcome(None, Skip("vector palettization is not rewritten for joint compression"), 0.0, 0, 0)
    mask = nonzero_mask(private.materialized_value(op))
    size = int(mask.size)
    kept = int(np.count_nonzero(mask))
    bits = private.bit_width(_compressed_input(op).dtype)
    if bits is None:
        raise InvalidTypeError(f"{op.name}: compressed input of {op.op_type} has no bit width")
    sparsity = 1.0 - kept / size if size else 0.0
    stored = (size * bits + 7) // 8
    packed = (kept * bits + 7) // 8 + (size + 7) // 8
    skip = pack_skip(config, sparsity, packed, stored, f"{bits}-bit")
    return _JointOutcome(mask if skip is None else None, skip, sparsity, stored, packed)


def plan_joint(
    function_name: str, block: Block, selector: OpSelector, rules: PassRules
) -> Iterator[tuple[Optional[Any], WeightRecord]]:
    """(builder plan or None, record) for each palettized/quantized op of ``block``."""
    from mil_sparsity.passes._base import Planned

    for op in list(block.operations):
        if op.op_type not in JOINT_OP_TYPES:
            continue
        site = _graph.weight_site(function_name, op)
        chosen = select(site, selector, rules)
        if isinstance(chosen, Decision):
            yield None, record(site, chosen, rules, lambda: private.materialized_value(op))
            continue
        config = chosen.config
        if not isinstance(config, PackConfig):  # sparse_pack's selector holds PackConfigs only
            raise InvalidTypeError(f"joint compression takes PackConfig, got {type(config).__name__}")
        outcome = _outcome(op, config)
        common: dict[str, Any] = dict(
            pass_name=rules.pass_name,
            function=function_name,
            name=site.name,
            shape=site.shape,
            dtype=site.dtype,
            consumer_types=site.consumer_types,
            config=config_to_dict(config),
            dense_bytes=outcome.stored_bytes,
        )
        if outcome.mask is None:
            reason = outcome.skip.reason if outcome.skip is not None else "not rewritten"
            yield None, WeightRecord(decision=SKIPPED, reason=reason, sparsity=outcome.sparsity, packed_bytes=None, **common)
            continue
        yield Planned(block, op, _builder(op, outcome.mask)), WeightRecord(
            decision=PACKED,
            reason=f"joint: {op.op_type} + sparse mask; config from {chosen.source}",
            sparsity=outcome.sparsity,
            packed_bytes=outcome.packed_bytes,
            **common,
        )
