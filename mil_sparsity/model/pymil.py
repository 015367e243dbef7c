"""Reading and rewriting PyMIL programs: the only module (with the passes) that touches MIL."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.block import Block, Function
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.var import Var

from mil_sparsity import _coremltools_private as private
from mil_sparsity.format import sparse_format
from mil_sparsity.model.products import NotAProduct, ProductRole, product_role
from mil_sparsity.model.inventory import Consumer, Weight, is_constexpr, walk_chain
from mil_sparsity.format.sparse_format import SparseForm, SparseReplacement


def check_opsets(prog: Program, pass_name: str) -> None:
    """Raise ValueError if any function's opset is older than iOS16 (sparse ops don't exist)."""
    for name, function in prog.functions.items():
        sparse_format.checked_form(name, function.opset_version, f"{pass_name}: ")


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
        if isinstance(value, np.ndarray) and value.ndim >= 1 and str(value.dtype) in sparse_format.WEIGHT_NUMPY_DTYPES:
            yield op


def _is_constant(var: Var) -> bool:
    """A const, or a constexpr op's output (a weight stored compressed)."""
    op = var.op
    return op is not None and (op.op_type == "const" or is_constexpr(op.op_type))


def _scalar(op: Operation, name: str) -> Any:
    """The value of ``op``'s constant input ``name`` (None if absent or not constant)."""
    var = op.inputs.get(name)
    return None if var is None or var.val is None else np.asarray(var.val).item()


def input_role(op: Operation, param: str, var: Var) -> ProductRole | NotAProduct:
    """The product role of ``var`` as ``op``'s input ``param`` (flags read from the op)."""
    other = op.inputs.get("y" if param == "x" else "x") if op.op_type == "matmul" else None
    groups = _scalar(op, "groups")
    return product_role(
        str(op.op_type),
        param,
        int(var.rank),
        transpose_x=bool(_scalar(op, "transpose_x")),
        transpose_y=bool(_scalar(op, "transpose_y")),
        other_rank=None if other is None else int(other.rank),
        other_is_const=other is not None and _is_constant(other),
        groups=1 if groups is None else int(groups),
    )


def consumers(var: Var) -> tuple[Consumer, ...]:
    """Each op reading ``var`` once, with the input names under which it reads it and the
    product role of each."""
    seen: dict[int, Consumer] = {}
    for child in var.child_ops:
        if id(child) in seen:
            continue
        names = []
        for input_name, value in child.inputs.items():
            values = value if isinstance(value, (list, tuple)) else (value,)
            if any(item is var for item in values):
                names.append(input_name)
        roles = tuple(input_role(child, name, var) for name in names)
        seen[id(child)] = Consumer(str(child.name), str(child.op_type), tuple(names), roles)
    return tuple(seen.values())


def weight_site(function_name: str, op: Operation) -> Weight:
    """The selection rules' view of a PyMIL op's (first) output: a const, or a constexpr op's
    decompressed weight. Shape and dtype come from the var's type, not its value."""
    var = op.outputs[0]
    return Weight(
        function=function_name,
        name=str(op.name),
        shape=tuple(int(d) for d in var.shape),
        dtype=private.numpy_dtype_of(var.dtype).name,
        consumers=consumers(var),
        feeds_block_output=private.feeds_block_output(var),
    )


def constexpr_chain(op: Operation) -> list[Operation]:
    """``op`` and every constexpr op it reads from, transitively; ``op`` first, no repeats."""
    return walk_chain(
        op, lambda current: [v.op for v in current.get_flattened_inputs() if v.op is not None and is_constexpr(v.op.op_type)]
    )


def chain_head(op: Operation) -> Operation:
    """The first op of the decompression chain that ends in ``op``: up through each op's first
    constexpr input (in input order) until an op reads none (``op`` itself if it reads none)."""
    while True:
        upstream = next(
            (
                var.op
                for var in op.inputs.values()
                if not isinstance(var, (list, tuple)) and var.op is not None and is_constexpr(var.op.op_type)
            ),
            None,
        )
        if upstream is None:
            return op
        op = upstream


def function_form(name: str, function: Function) -> SparseForm:
    """The sparse form of the function's opset; ValueError before iOS16."""
    return sparse_format.checked_form(name, function.opset_version)


def builder_inputs(replacement: SparseReplacement) -> dict[str, np.ndarray]:
    """The replacement's tensors as Builder arguments (a uint1 tensor typed with PyMIL's dtype)."""
    return {
        tensor.input_name: tensor.values.view(private.UINT1_DTYPE) if tensor.dtype == "uint1" else tensor.values
        for tensor in replacement.tensors
    }


def build_sparse_op(const_op: Operation, replacement: SparseReplacement) -> Var:
    """Insert the replacement's sparse op just before ``const_op`` (caller holds the block)."""
    new_var: Var = mb.constexpr_sparse_to_dense(
        **builder_inputs(replacement), before_op=const_op, name=replacement.name
    )
    return new_var


def sparse_op_builder(const_op: Operation, replacement: SparseReplacement) -> Callable[[], Var]:
    return lambda: build_sparse_op(const_op, replacement)


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
            if unused and (op.op_type == "const" or is_constexpr(op.op_type)):
                ops.append(op)
