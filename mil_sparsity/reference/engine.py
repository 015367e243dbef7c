"""Evaluate a PyMIL function op by op with numpy.

Plan (once per function, nothing in the program is changed): for every block, nested ones
included, the ops in order and, for each op, the values to free once it has run (the last
reader of a value frees it; a value nobody reads is freed right after its op). Vars read inside
a nested block but defined outside it count as read by the op that owns the block.

Run: inputs are checked and converted (see :mod:`.inputs`); const ops give their value (fp16
upcast to float32), constexpr ops their materialized value, cond/while_loop evaluate their
blocks, every other op calls its kernel from the op table. Each output is brought to its
compute dtype (float32 for every float type; integer and bool types as declared) and, with
``round_fp16_intermediates``, fp16-typed outputs are rounded to fp16 and back.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import attrs
import numpy as np
from coremltools.converters.mil.mil.block import Block, Function
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.var import Var

from mil_sparsity.errors import InvalidInputError
from mil_sparsity import _coremltools_private as private
from mil_sparsity.reference import ops_constexpr, ops_control, runtime_rules
from mil_sparsity.reference._registry import OP_TABLE
from mil_sparsity.reference.inputs import InputSpec, compute_dtype

# import for their side effect: registering kernels in OP_TABLE
from mil_sparsity.reference import (  # noqa: F401,E402
    ops_conv,
    ops_elementwise,
    ops_gather,
    ops_image,
    ops_list,
    ops_nn,
    ops_quantize,
    ops_random,
    ops_recurrent,
    ops_reduce,
    ops_tensor,
)

Capture = Callable[[Operation, Mapping[str, Any], tuple[Any, ...]], None]


def supported_op_types() -> frozenset[str]:
    """Every op type the evaluator can run."""
    return frozenset(OP_TABLE) | ops_constexpr.OP_TYPES | frozenset(ops_control.BLOCK_OPS) | {"const"}


def _walk(block: Block) -> Iterator[Operation]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk(inner)


def check_supported(function: Function, function_name: str) -> None:
    """One NotImplementedError listing every op type the evaluator lacks, with counts."""
    supported = supported_op_types()
    missing = Counter(op.op_type for op in _walk(function) if op.op_type not in supported)
    if missing:
        listing = ", ".join(f"{op_type} (x{count})" for op_type, count in sorted(missing.items()))
        raise NotImplementedError(
            f"function {function_name!r}: the reference evaluator cannot run "
            f"{len(missing)} op type(s): {listing}"
        )


def _flat_inputs(op: Operation) -> list[Var]:
    result: list[Var] = []
    for value in op.inputs.values():
        result.extend(value if isinstance(value, (list, tuple)) else (value,))
    return result


def _storage_dtype(var: Var) -> Optional[np.dtype[Any]]:
    """The numpy dtype of a var's element type; None for lists, strings and states."""
    try:
        storage = private.numpy_dtype_of(var.dtype)
    except Exception:  # not a numeric element type: left as the kernel returns it
        return None
    return storage if storage.kind in "biuf" else None


def _compute_dtype(var: Var) -> Optional[np.dtype[Any]]:
    """float32 for float types, the declared dtype otherwise; None for non-tensor values."""
    storage = _storage_dtype(var)
    return None if storage is None else compute_dtype(storage)


@attrs.frozen
class _Step:
    op: Operation
    outputs: tuple[tuple[int, Optional[np.dtype[Any]], bool], ...]  # (var id, dtype, is fp16)
    free_after: tuple[int, ...]


@attrs.frozen
class _BlockPlan:
    inputs: tuple[int, ...]
    steps: tuple[_Step, ...]
    outputs: tuple[int, ...]
    owned_outputs: tuple[int, ...]  # block outputs defined in the block (freed on exit)
    nested: Mapping[int, tuple["_BlockPlan", ...]]  # op id -> plans of its blocks


def _block_inputs(block: Block) -> list[Var]:
    """A block's input vars (a Function keeps them in a name -> Var dict)."""
    inputs = block.inputs
    return list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)


def _free_vars(block: Block) -> set[int]:
    """Vars read in ``block`` (nested blocks included) but defined outside it."""
    defined = {id(v) for v in _block_inputs(block)}
    read: set[int] = set()
    for op in block.operations:
        defined.update(id(v) for v in op.outputs)
        read.update(id(v) for v in _flat_inputs(op))
        for inner in op.blocks:
            read.update(_free_vars(inner))
    read.update(id(v) for v in block.outputs)
    return read - defined


def _plan_block(block: Block) -> _BlockPlan:
    ops = list(block.operations)
    reads: list[set[int]] = []
    for op in ops:
        used = {id(v) for v in _flat_inputs(op)}
        for inner in op.blocks:
            used.update(_free_vars(inner))
        reads.append(used)
    defined_here = {id(v) for v in _block_inputs(block)} | {id(v) for op in ops for v in op.outputs}
    kept = {id(v) for v in block.outputs}
    last_reader: dict[int, int] = {}
    for index, used in enumerate(reads):
        for var_id in used:
            last_reader[var_id] = index
    free_after: list[list[int]] = [[] for _ in ops]
    for var_id, index in last_reader.items():
        if var_id in defined_here and var_id not in kept:
            free_after[index].append(var_id)
    for index, op in enumerate(ops):
        for var in op.outputs:
            if id(var) not in last_reader and id(var) not in kept:
                free_after[index].append(id(var))
    steps = tuple(
        _Step(
            op=op,
            outputs=tuple(
                (id(v), _compute_dtype(v), _storage_dtype(v) == np.float16) for v in op.outputs
            ),
            free_after=tuple(free_after[index]),
        )
        for index, op in enumerate(ops)
    )
    nested = {id(op): tuple(_plan_block(inner) for inner in op.blocks) for op in ops if op.blocks}
    return _BlockPlan(
        inputs=tuple(id(v) for v in _block_inputs(block)),
        steps=steps,
        outputs=tuple(id(v) for v in block.outputs),
        owned_outputs=tuple(id(v) for v in block.outputs if id(v) in defined_here),
        nested=nested,
    )


def _as_compute_value(value: Any, dtype: Optional[np.dtype[Any]]) -> Any:
    if dtype is None:
        return value
    array = np.asarray(value)
    return array if array.dtype == dtype else array.astype(dtype)


def _const_value(op: Operation) -> Any:
    value = op.outputs[0].val
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind == "f":
        return np.asarray(value, dtype=np.float32)
    return value


class Evaluator:
    """A planned function of a program, run on any number of input dicts.

    ``round_fp16_intermediates``: round every fp16-typed value (op outputs, fp16 consts are
    already fp16) to the nearest fp16 and back after each op, so results show fp16 effects;
    arithmetic inside an op stays float32.
    """

    def __init__(
        self,
        program: Program,
        input_specs: Sequence[InputSpec],
        *,
        function_name: str = "main",
        round_fp16_intermediates: bool = False,
    ) -> None:
        if function_name not in program.functions:
            raise InvalidInputError(
                f"function_name: {function_name!r} is not in the program; it has "
                f"{sorted(program.functions)}"
            )
        function = program.functions[function_name]
        check_supported(function, function_name)
        runtime_rules.check_program(function, input_specs)  # what the Core ML runtime refuses to load
        self.function_name = function_name
        self.round_fp16_intermediates = bool(round_fp16_intermediates)
        self.input_specs = tuple(input_specs)
        self._function = function
        self._input_ids = {name: id(var) for name, var in function.inputs.items()}
        self._output_names = tuple(str(var.name) for var in function.outputs)
        self._plan = _plan_block(function)

    def run(self, inputs: Mapping[str, Any], capture: Optional[Capture] = None) -> dict[str, np.ndarray]:
        from mil_sparsity.reference.inputs import convert_inputs

        converted = convert_inputs(self.input_specs, inputs)
        values = [converted[name] for name in self._function.inputs]
        outputs = self._run_block(self._plan, values, {}, capture)
        return {name: np.asarray(value) for name, value in zip(self._output_names, outputs)}

    def _run_block(
        self,
        plan: _BlockPlan,
        block_inputs: Sequence[Any],
        env: dict[int, Any],
        capture: Optional[Capture],
    ) -> list[Any]:
        for var_id, value in zip(plan.inputs, block_inputs):
            env[var_id] = value
        for step in plan.steps:
            op = step.op
            args = {
                name: tuple(env[id(v)] for v in var) if isinstance(var, (list, tuple)) else env[id(var)]
                for name, var in op.inputs.items()
            }
            results = self._run_op(plan, op, args, env, capture)
            for (var_id, dtype, is_fp16), value in zip(step.outputs, results):
                value = _as_compute_value(value, dtype)
                if is_fp16 and self.round_fp16_intermediates and op.op_type != "const":
                    value = value.astype(np.float16).astype(np.float32)
                env[var_id] = value
            if capture is not None:
                capture(op, args, tuple(env[var_id] for var_id, _, _ in step.outputs))
            del args, results
            for var_id in step.free_after:
                env.pop(var_id, None)
        outputs = [env[var_id] for var_id in plan.outputs]
        for var_id in plan.inputs + plan.owned_outputs:
            env.pop(var_id, None)
        return outputs

    def _run_op(
        self,
        plan: _BlockPlan,
        op: Operation,
        args: Mapping[str, Any],
        env: dict[int, Any],
        capture: Optional[Capture],
    ) -> tuple[Any, ...]:
        op_type = op.op_type
        if op_type == "const":
            return (_const_value(op),)
        if op_type in ops_constexpr.OP_TYPES:
            return ops_constexpr.materialize(op, args)
        if op_type in ops_control.BLOCK_OPS:
            blocks = plan.nested[id(op)]

            def run_nested(index: int, block_inputs: Sequence[Any]) -> list[Any]:
                return self._run_block(blocks[index], block_inputs, env, capture)

            return tuple(ops_control.BLOCK_OPS[op_type](args, run_nested))
        result = OP_TABLE[op_type](args)
        return result if isinstance(result, tuple) else (result,)
