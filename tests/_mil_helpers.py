"""Helpers for tests on PyMIL programs: run a pass, find sparse ops, snapshot a program."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from coremltools.converters.mil.mil.passes.graph_pass import PassOption

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private

from _models import iter_ops
# the reference rules live in _reference.py; re-exported for tests that import them from here
from _reference import ref_block, ref_magnitude, ref_n_m, ref_threshold  # noqa: F401


def run_pass(prog: Any, pass_name: str, config: Any = None, report: Any = None) -> ms.SparsityReport:
    """Run one registered pass on ``prog`` in place; returns the report it filled."""
    report = ms.SparsityReport() if report is None else report
    graph_pass = private.pass_instance(pass_name)
    options = [PassOption("report", report)]
    if config is not None:
        options.append(PassOption("config", config))
    graph_pass.set_options(options)
    graph_pass(prog)
    return report


def one_pass(pass_name: str, **options: Any) -> Any:
    """A ``ct.PassPipeline`` of the one pass ``pass_name`` with ``options`` set."""
    import coremltools as ct

    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(pass_name)
    if options:
        pipeline.set_options(pass_name, options)
    return pipeline


def all_ops(prog: Any) -> Iterator[Any]:
    """Every op of every function of ``prog``, nested blocks included."""
    for function in prog.functions.values():
        yield from iter_ops(function)


def sparse_ops(prog: Any) -> list[Any]:
    return [op for op in all_ops(prog) if op.op_type == "constexpr_sparse_to_dense"]


def materialized(prog: Any) -> dict[str, np.ndarray]:
    """Sparse op name -> the dense weight it stands for."""
    return {op.name: private.materialized_value(op) for op in sparse_ops(prog)}


def weight_of(consumer: Any, input_name: str = "weight") -> np.ndarray:
    """The dense value feeding ``consumer``'s input, whether const or sparse."""
    var = consumer.inputs[input_name]
    if var.op.op_type == "constexpr_sparse_to_dense":
        return private.materialized_value(var.op)
    return var.val


def find_op(prog: Any, name: str) -> Any:
    return next(op for op in all_ops(prog) if op.name == name)


def snapshot(prog: Any) -> list[tuple[Any, ...]]:
    """Every op in order with its inputs, outputs and const bytes: equal iff unchanged."""
    rows: list[tuple[Any, ...]] = []
    for op in all_ops(prog):
        inputs = tuple(
            (key, tuple(v.name for v in value) if isinstance(value, (list, tuple)) else value.name)
            for key, value in sorted(op.inputs.items())
        )
        const = None
        if op.op_type == "const":
            val = op.outputs[0].val
            const = (str(np.asarray(val).dtype), np.asarray(val).tobytes())
        rows.append((op.op_type, op.name, inputs, tuple(v.name for v in op.outputs), const,
                     tuple(child.name for v in op.outputs for child in v.child_ops)))
    return rows


def bits(array: np.ndarray) -> np.ndarray:
    """Bit pattern of a float array, -0.0 folded into +0.0 (what a sparse op gives back)."""
    array = np.where(array == 0, np.zeros_like(array), array)
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64, 1: np.uint8}[array.dtype.itemsize]
    return array.view(unsigned)
