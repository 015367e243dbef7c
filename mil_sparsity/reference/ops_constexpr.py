"""Constexpr (compression) ops: their value is the op's materialized value.

``constexpr_*`` ops only decompress constants (sparse mask + nonzero values, palettized LUT +
indices, blockwise scale/offset, casts), so the evaluator takes the dense value coremltools
itself materializes for the op. Ops with two outputs (``constexpr_lut_to_sparse``: mask and
nonzero values) give both; a ``constexpr_sparse_to_dense`` reading them materializes through
its producer. Float results are upcast to float32 by the engine like every value.
"""

from __future__ import annotations

from typing import Any

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


def materialize(op: Operation) -> tuple[Any, ...]:
    """The op's output values, one per output, computed by coremltools from its const inputs."""
    value = private.materialized_value(op)
    values = value if isinstance(value, tuple) else (value,)
    return tuple(np.asarray(v) for v in values)
