"""Joint sparse + palettized storage for ``fit(..., palettize_nbits=N)`` (iOS18+).

When asked, every weight fit prunes is also palettized: its kept values are replaced by the
nearest of 2**N table entries fitted to the kept values alone
(:func:`mil_sparsity.kernels.palettize.kept_value_lut`; zeros belong to the mask and cost no
entry). Probes measure that value and count its bytes (N bits per kept value, the 1-bit mask,
the table), so the allocation sees what will be stored.

Graph, per pruned weight, after :func:`palettize_pruned`::

    const nonzero_data -> constexpr_sparse_to_dense -> reader
    constexpr_lut_to_sparse(indices_mask, indices_nonzero_data, lut) -> (mask, nonzero_data)
        -> constexpr_sparse_to_dense -> reader

built by coremltools' public ``palettize_weights(..., joint_compression=True)`` in ``custom``
mode, with the same table function as the probes: the stored weight decompresses to exactly
the value the probe evaluated. Weights left dense stay dense.
"""

from __future__ import annotations

import functools
from typing import Any, Collection, Optional

import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.format import sparse_format
from mil_sparsity.kernels.palettize import check_nbits, kept_value_lut


def check_palettize(nbits: Optional[int], opset_version: Any, function_name: str) -> Optional[int]:
    """``palettize_nbits`` checked: None, or one of the stored widths on an iOS18+ function."""
    if nbits is None:
        return None
    nbits = check_nbits(nbits, "palettize_nbits")
    if opset_version is None or opset_version < sparse_format.UINT1_MASK_FORM.since:
        raise InvalidInputError(
            f"palettize_nbits={nbits}: joint sparse + palettized weights (constexpr_lut_to_sparse) "
            f"need iOS18 or later, but function {function_name!r} targets "
            f"{sparse_format.target_name(opset_version) if opset_version is not None else 'no opset'}; "
            "convert with minimum_deployment_target=ct.target.iOS18, or drop palettize_nbits"
        )
    return nbits


def _lut_function(weight: NDArray[Any], nbits: int) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    """coremltools' ``custom`` palettization hook: the table and every element's index."""
    return kept_value_lut(np.asarray(weight), nbits)


def palettization_config(sparse_op_names: Collection[str], nbits: int) -> Any:
    """The coremltools ``OptimizationConfig`` palettizing the kept values of exactly the sparse
    weights whose ``constexpr_sparse_to_dense`` ops have these names, with the kept-value
    table (per tensor, whatever their size)."""
    import coremltools.optimize.coreml as cto

    op_config = cto.OpPalettizerConfig(
        mode="custom",
        lut_function=functools.partial(_lut_function, nbits=nbits),
        granularity="per_tensor",
        weight_threshold=0,
    )
    return cto.OptimizationConfig(op_name_configs={name: op_config for name in sorted(sparse_op_names)})


def palettize_pruned(model: Any, weight_names: Collection[str], nbits: int, function_name: str) -> tuple[Any, Any]:
    """``model`` (a pruned MLModel) with the sparse weights named ``weight_names`` (saved dense
    names) stored jointly sparse + palettized, and the config that did it."""
    import coremltools.optimize.coreml as cto

    from mil_sparsity.model.io import load_program

    prog = load_program(model)
    found: dict[str, str] = {}
    for op in prog.functions[function_name].find_ops(op_type=sparse_format.OP_TYPE):
        name = sparse_format.dense_name(str(op.name), op.op_type)
        if name in weight_names and getattr(op, sparse_format.NONZERO_DATA).op.op_type == "const":
            # a loaded const's name is not stored (each load numbers it anew); coremltools
            # finds a const's config through the constexpr op it feeds, whose name is stored
            found[name] = str(op.name)
    missing = sorted(set(weight_names) - set(found))
    if missing:
        raise InvalidInputError(f"palettize_nbits: pruned weights not found as sparse consts: {missing}")
    config = palettization_config(found.values(), nbits)
    return cto.palettize_weights(model, config, joint_compression=True), config
