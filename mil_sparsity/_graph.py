"""Reading and rewriting PyMIL programs: the only module (with the passes) that touches MIL."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import coremltools as ct
import numpy as np
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.block import Block, Function
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.var import Var

from mil_sparsity import _coremltools_private as private
from mil_sparsity.kernels import SparseWeight, pack_mask_bits
from mil_sparsity.selection import WEIGHT_DTYPES, Consumer, WeightSite

IOS16 = ct.target.iOS16
IOS18 = ct.target.iOS18


def target_name(opset: Any) -> str:
    return str(getattr(opset, "name", opset))


def check_opsets(prog: Program, pass_name: str) -> None:
    """Raise ValueError if any function's opset is older than iOS16 (sparse ops don't exist)."""
    for name, function in prog.functions.items():
        opset = function.opset_version
        if opset is None or opset < IOS16:
            raise ValueError(
                f"{pass_name}: function {name!r} targets {target_name(opset)}, but "
                "constexpr_sparse_to_dense needs iOS16 or later. Convert with "
                "minimum_deployment_target=ct.target.iOS16 (or later; iOS18 gives the compact "
                "uint1 mask form)."
            )


def iter_blocks(block: Block) -> Iterator[Block]:
    """``block`` and every block nested in its ops (cond branches, loop bodies), depth first."""
    yield block
    for op in list(block.operations):
        for inner in op.blocks:
            yield from iter_blocks(inner)


def weight_consts(block: Block) -> Iterator[Operation]:
    """Const ops of ``block`` whose value is a weight-typed ndarray."""
    for op in list(block.operations):
        if op.op_type != "const":
            continue
        value = op.outputs[0].val
        if isinstance(value, np.ndarray) and value.ndim >= 1 and str(value.dtype) in WEIGHT_DTYPES:
            yield op


def consumers(var: Var) -> tuple[Consumer, ...]:
    """Each op reading ``var`` once, with the input names under which it reads it."""
    seen: dict[int, Consumer] = {}
    for child in var.child_ops:
        if id(child) in seen:
            continue
        names = []
        for input_name, value in child.inputs.items():
            values = value if isinstance(value, (list, tuple)) else (value,)
            if any(item is var for item in values):
                names.append(input_name)
        seen[id(child)] = Consumer(str(child.name), str(child.op_type), tuple(names))
    return tuple(seen.values())


def weight_site(function_name: str, op: Operation) -> WeightSite:
    """The selection rules' view of a PyMIL op's (first) output: a const, or a constexpr op's
    decompressed weight. Shape and dtype come from the var's type, not its value."""
    var = op.outputs[0]
    return WeightSite(
        function=function_name,
        name=str(op.name),
        shape=tuple(int(d) for d in var.shape),
        dtype=private.numpy_dtype_of(var.dtype).name,
        consumers=consumers(var),
        feeds_block_output=private.feeds_block_output(var),
    )


def uses_ios18_form(function: Function) -> bool:
    return bool(function.opset_version >= IOS18)


def sparse_op_inputs(sparse: SparseWeight, ios18: bool) -> dict[str, np.ndarray]:
    """The inputs of ``constexpr_sparse_to_dense`` in the form of the program's opset.

    iOS16/17 form: uint8 mask of packed bits (LSB first, row-major) plus a uint32 shape; the
    bool mask is not kept, so a planned replacement holds 1 bit per element, not 1 byte.
    iOS18 form: uint1 mask with the weight's shape (one byte per element, as PyMIL stores it).
    """
    if ios18:
        return {"nonzero_data": sparse.nonzero_data, "mask": sparse.mask.view(private.UINT1_DTYPE)}
    return {
        "nonzero_data": sparse.nonzero_data,
        "mask": pack_mask_bits(sparse.mask),
        "shape": np.asarray(sparse.shape, dtype=np.uint32),
    }


def build_sparse_op(const_op: Operation, inputs: dict[str, np.ndarray]) -> Var:
    """Insert ``constexpr_sparse_to_dense`` just before ``const_op`` (caller holds the block)."""
    new_var: Var = mb.constexpr_sparse_to_dense(
        **inputs, before_op=const_op, name=f"{const_op.name}_sparse"
    )
    return new_var


def sparse_op_builder(const_op: Operation, inputs: dict[str, np.ndarray]) -> Callable[[], Var]:
    return lambda: build_sparse_op(const_op, inputs)


def remove_with_orphans(block: Block, ops: list[Operation]) -> None:
    """Remove ``ops``, then every const/constexpr op left without a reader because of it.

    Used to drop a replaced op together with the consts only it read (a const that other ops
    still read stays), and to undo a rewrite (the ops created for it, and their inputs).
    """
    while ops:
        inputs = [
            value.op
            for op in ops
            for value in op.get_flattened_inputs()
            if value.op is not None
        ]
        block.remove_ops(ops)
        seen: set[int] = set()
        ops = []
        for op in inputs:
            if id(op) in seen or op.enclosing_block is not block:
                continue
            seen.add(id(op))
            unused = all(not out.child_ops and not private.feeds_block_output(out) for out in op.outputs)
            if unused and (op.op_type == "const" or op.op_type.startswith("constexpr_")):
                ops.append(op)
