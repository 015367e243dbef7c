"""Constexpr (compression) ops: their value is the op's materialized value.

``constexpr_*`` ops only decompress constants (sparse mask + nonzero values, palettized LUT +
indices, blockwise scale/offset, casts), so the evaluator takes the dense value coremltools
itself materializes for the op. Ops with two outputs (``constexpr_lut_to_sparse``: mask and
nonzero values) give both; a ``constexpr_sparse_to_dense`` reading them materializes through
its producer; an op whose inputs come from another constexpr op (no ``.val``) decompresses the
values the evaluator computed for them. Float results are upcast to float32 by the engine like every value.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from coremltools.converters.mil.mil.operation import Operation

from mil_sparsity import _coremltools_private as private

OP_TYPES = frozenset(
    {
        "constexpr_affine_dequantize",
        "constexpr_blockwise_shift_scale",
        "constexpr_cast",
        "constexpr_lut_to_dense",
        "constexpr_lut_to_sparse",
        "constexpr_sparse_blockwise_shift_scale",
        "constexpr_sparse_to_dense",
    }
)


def materialize(op: Operation, inputs: Mapping[str, Any]) -> tuple[Any, ...]:
    """The op's output values, one per output, computed by coremltools from its const inputs;
    an op fed by another constexpr op (a quantized LUT of a sparse palettized weight, say)
    decompresses ``inputs``, the values the evaluator computed for its producers."""
    chained = any(var.val is None for var in op.inputs.values() if not isinstance(var, (list, tuple)))
    value = private.decompressed_value(op, inputs) if chained else None
    if value is None:
        value = private.materialized_value(op)
    values = value if isinstance(value, tuple) else (value,)
    return tuple(np.asarray(v) for v in values)
