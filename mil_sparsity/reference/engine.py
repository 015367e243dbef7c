"""Evaluate a PyMIL function op by op with numpy.

Plan (once per function, nothing in the program is changed): for every block, nested ones
included, the ops in order and, for each op, the values to free once it has run (the last
reader of a value frees it; a value nobody reads is freed right after its op). Vars read inside
a nested block but defined outside it count as read by the op that owns the block.

Run: inputs are checked and converted (see :mod:`.inputs`), state inputs bound to the run's
state (see :mod:`.state`); const ops give their value (a float32 const's own array; fp16
upcast to float32 once per evaluator), or the run's override for them; constexpr ops their
materialized value, cond/while_loop evaluate their blocks, every other op calls the kernel
resolved for it when the plan was made
(:class:`~mil_sparsity.reference._registry.KernelTable`: the evaluator's own kernels first,
then the built-in ones, by opset; without a capture callback, a step's in-place variant where
the plan allows one, see :mod:`.planning`). Each output is brought to its compute dtype
(float32 for every float type; integer and bool types as declared) and, with
``round_fp16_intermediates``, fp16-typed outputs are rounded to fp16 and back.

A run may ask for any top-level values (``outputs``) and bind intermediates (``start``): it
then follows a partial plan (:func:`~mil_sparsity.reference.planning.plan_partial`), cached per
(outputs, start names), and evaluates only the ops between them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from coremltools.converters.mil.mil.block import Function
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.var import Var

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.reference import ops_constexpr, ops_control, runtime_rules
from mil_sparsity.reference._registry import Kernel, KernelKey, KernelTable
from mil_sparsity.reference.inputs import InputSpec, compute_dtype, convert_inputs
from mil_sparsity.reference.state import EvaluatorState, StateLayout
from mil_sparsity.reference.threads import check_threads, default_threads, running
from mil_sparsity.reference.planning import (
    BlockPlan,
    PartialPlan,
    Step,
    live_before,
    plan_block,
    plan_partial,
    storage_dtype,
    walk,
)

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
    ops_state,
    ops_tensor,
)

Capture = Callable[[Operation, Mapping[str, Any], tuple[Any, ...]], None]

_ENGINE_OPS = ops_constexpr.OP_TYPES | frozenset(ops_control.BLOCK_OPS) | {"const"}


def supported_op_types(table: Optional[KernelTable] = None) -> frozenset[str]:
    """Every op type the evaluator can run (with ``table``'s extra kernels, if given)."""
    return (table or KernelTable()).op_types() | _ENGINE_OPS


def _opset(op: Operation) -> Optional[int]:
    """The opset version that defined the op's class; None for ops outside the versioned
    registry (coremltools' internal ops, such as ``coreml_update_state``)."""
    try:
        version = op.opset_version
    except AttributeError:
        return None
    return None if version is None else int(version)


def check_supported(function: Function, function_name: str, table: Optional[KernelTable] = None) -> None:
    """One NotImplementedError listing every op type the evaluator lacks, with counts."""
    table = table or KernelTable()
    missing = Counter(
        op.op_type
        for op in walk(function)
        if op.op_type not in _ENGINE_OPS and table.lookup(op.op_type, _opset(op)) is None
    )
    if missing:
        listing = ", ".join(f"{op_type} (x{count})" for op_type, count in sorted(missing.items()))
        raise NotImplementedError(
            f"function {function_name!r}: the reference evaluator cannot run "
            f"{len(missing)} op type(s): {listing}"
        )


def _as_compute_value(value: Any, dtype: Optional[np.dtype[Any]]) -> Any:
    if dtype is None:
        return value
    array = np.asarray(value)
    return array if array.dtype == dtype else array.astype(dtype)


def _const_value(value: Any) -> Any:
    """A const's value in the compute dtype: a float32 array is the const's own array (no copy),
    fp16 is upcast (the evaluator keeps the upcast copy, made once, while the const holds the
    same value)."""
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind == "f":
        return np.asarray(value, dtype=np.float32)
    return value


Values = Mapping[str, Any]


def _shape_fits(declared: Sequence[Any], shape: tuple[int, ...]) -> bool:
    """``shape`` has the declared rank and matches every fixed (integer) dimension."""
    return len(declared) == len(shape) and all(
        not isinstance(d, (int, np.integer)) or int(d) == size for d, size in zip(declared, shape)
    )


def _declared_shape(var: Var) -> tuple[Any, ...]:
    return tuple(var.shape) if var.shape is not None else ()


class Evaluator:
    """A planned function of a program, run on any number of input dicts.

    ``round_fp16_intermediates``: round every fp16-typed value (op outputs, fp16 consts are
    already fp16) to the nearest fp16 and back after each op, so results show fp16 effects;
    arithmetic inside an op stays float32. ``ops``: this evaluator's extra kernels (see
    :class:`~mil_sparsity.reference._registry.KernelTable` for keys and precedence).
    ``threads``: how many ways a run's large products, elementwise chains, softmax and norms
    split their work (default: the BLAS's own thread count; see :mod:`.threads`).
    """

    def __init__(
        self,
        program: Program,
        input_specs: Sequence[InputSpec],
        *,
        function_name: str = "main",
        round_fp16_intermediates: bool = False,
        ops: Optional[Mapping[KernelKey, Kernel]] = None,
        threads: Optional[int] = None,
    ) -> None:
        #: how many ways a run's kernels split their work (see :mod:`.threads`)
        self.threads = check_threads(threads) or default_threads()
        if function_name not in program.functions:
            raise InvalidInputError(
                f"function_name: {function_name!r} is not in the program; it has "
                f"{sorted(program.functions)}"
            )
        function = program.functions[function_name]
        self._table = KernelTable.with_extra(ops)
        check_supported(function, function_name, self._table)
        runtime_rules.check_program(function, input_specs)  # what the Core ML runtime refuses to load
        self.function_name = function_name
        self.round_fp16_intermediates = bool(round_fp16_intermediates)
        self.input_specs = tuple(input_specs)
        self._function = function
        self._output_names = tuple(str(var.name) for var in function.outputs)
        self._plan = plan_block(function, self._kernel_for)
        self.states = StateLayout(function, function_name)  # state inputs: see .state
        self._partial_plans: dict[tuple[tuple[str, ...], frozenset[str]], PartialPlan] = {}
        # const op id -> (the const's value, that value in the compute dtype), made once
        self._consts: dict[int, tuple[Any, Any]] = {}
        self._values = {name: var for name, var in function.inputs.items()}
        self._values.update({str(v.name): v for op in function.operations for v in op.outputs})
        self._weights = {
            str(op.outputs[0].name): op.outputs[0]
            for op in walk(function)
            if (op.op_type == "const" or op.op_type in ops_constexpr.OP_TYPES) and len(op.outputs) == 1
        }

    def make_state(self) -> EvaluatorState:
        """New zero state buffers for :meth:`run` (an empty state for a stateless function)."""
        return self.states.new_state()

    def cut_before(self, const_names: Sequence[str]) -> tuple[str, ...]:
        """The top-level values to pass as ``start`` to re-run only what follows the first op
        that reads any of ``const_names`` (see :func:`~.planning.live_before`)."""
        unknown = [name for name in const_names if name not in self._weights]
        if unknown:
            raise InvalidInputError(f"const_names: {unknown} are not consts of function {self.function_name!r}")
        live = live_before(self._function, const_names, _ENGINE_OPS - frozenset(ops_control.BLOCK_OPS))
        return tuple(str(v.name) for v in live)

    def _kernel_for(self, op: Operation) -> Optional[Kernel]:
        if op.op_type in _ENGINE_OPS:
            return None
        return self._table.lookup(op.op_type, _opset(op))

    # -- the three kinds of named values a run can take ----------------------------------------

    def _override_values(self, overrides: Optional[Values]) -> dict[int, Any]:
        """``overrides`` checked: const (or single-output constexpr) names, exact shapes,
        numbers; each value stored as the const's dtype would store it, in the compute dtype."""
        if not overrides:
            return {}
        if not isinstance(overrides, Mapping):
            raise InvalidTypeError(f"overrides must map const names to arrays, got {type(overrides).__name__}")
        replaced: dict[int, Any] = {}
        for name, value in overrides.items():
            var = self._weights.get(name) if isinstance(name, str) else None
            if var is None:
                raise InvalidInputError(
                    f"overrides: {name!r} is not a const of function {self.function_name!r} "
                    f"({len(self._weights)} consts, e.g. {sorted(self._weights)[:5]})"
                )
            readers = sorted(str(op.name) for op in var.child_ops if op.op_type in ops_constexpr.OP_TYPES)
            if readers:
                raise InvalidInputError(
                    f"overrides: {name!r} is an operand of compressed weight(s) {readers}; "
                    "override the decompressed value by that op's name instead"
                )
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise InvalidTypeError(f"overrides[{name!r}]: expected numbers, got dtype {array.dtype}")
            declared = _declared_shape(var)
            if tuple(array.shape) != tuple(int(d) for d in declared):
                raise InvalidInputError(
                    f"overrides[{name!r}]: shape {tuple(array.shape)} differs from the const's "
                    f"shape {declared}"
                )
            storage = storage_dtype(var)
            if storage is not None:
                array = _as_compute_value(array.astype(storage, copy=False), compute_dtype(storage))
            replaced[id(var)] = array
        return replaced

    def _start_values(self, start: Optional[Values]) -> dict[int, Any]:
        """``start`` checked: names of values the function computes, declared ranks and sizes."""
        if not start:
            return {}
        if not isinstance(start, Mapping):
            raise InvalidTypeError(f"start must map value names to arrays, got {type(start).__name__}")
        given: dict[int, Any] = {}
        for name, value in start.items():
            var = self._values.get(name) if isinstance(name, str) else None
            if var is None or name in self._function.inputs:
                what = "is a function input (give it in inputs)" if var is not None else "is not a value"
                raise InvalidInputError(
                    f"start: {name!r} {what} of the top level of function {self.function_name!r}"
                )
            storage = storage_dtype(var)
            if storage is not None:
                array = np.asarray(value)
                if not _shape_fits(_declared_shape(var), tuple(array.shape)):
                    raise InvalidInputError(
                        f"start[{name!r}]: shape {tuple(array.shape)} does not fit the value's "
                        f"declared shape {_declared_shape(var)}"
                    )
                value = _as_compute_value(array, compute_dtype(storage))
            given[id(var)] = value
        return given

    def _targets(self, outputs: Optional[Sequence[str]]) -> tuple[Var, ...]:
        if outputs is None:
            return tuple(self._function.outputs)
        if isinstance(outputs, str) or not isinstance(outputs, Sequence):
            raise InvalidTypeError(f"outputs must be a list of value names, got {type(outputs).__name__}")
        unknown = [name for name in outputs if name not in self._values]
        if unknown or not outputs:
            raise InvalidInputError(
                f"outputs: {unknown or 'an empty list'} not values of the top level of function "
                f"{self.function_name!r} (function outputs: {list(self._output_names)})"
            )
        return tuple(self._values[name] for name in outputs)

    def _partial(self, targets: tuple[Var, ...], start: Values) -> PartialPlan:
        key = (tuple(str(v.name) for v in targets), frozenset(start))
        plan = self._partial_plans.get(key)
        if plan is None:
            plan = plan_partial(self._function, targets, [self._values[n] for n in start], self._kernel_for)
            self._partial_plans[key] = plan
        return plan

    def run(
        self,
        inputs: Values,
        capture: Optional[Capture] = None,
        *,
        overrides: Optional[Values] = None,
        outputs: Optional[Sequence[str]] = None,
        start: Optional[Values] = None,
        state: Optional[EvaluatorState] = None,
    ) -> dict[str, np.ndarray]:
        """The function's outputs (or ``outputs``, any top-level values by name) on ``inputs``.

        ``overrides``: const name -> array, used in place of the const's value for this run
        only. ``start``: top-level value name -> array; the run binds these and evaluates only
        the ops that the requested values need beyond them (``inputs`` then needs only the
        function inputs those ops read).
        """
        with running(self.threads):
            return self._run(inputs, capture, overrides, outputs, start, state)

    def _run(
        self,
        inputs: Values,
        capture: Optional[Capture],
        overrides: Optional[Values],
        outputs: Optional[Sequence[str]],
        start: Optional[Values],
        state: Optional[EvaluatorState],
    ) -> dict[str, np.ndarray]:
        replaced = self._override_values(overrides)
        slots = self.states.bind(state, inputs)  # state inputs come from `state`, never `inputs`
        if outputs is None and not start:
            converted: dict[str, Any] = {**convert_inputs(self.input_specs, inputs), **slots}
            values = [converted[name] for name in self._function.inputs]
            results = self._run_block(self._plan, values, {}, capture, replaced)
            return {name: np.asarray(value) for name, value in zip(self._output_names, results)}
        targets = self._targets(outputs)
        given = self._start_values(start)
        partial = self._partial(targets, start or {})
        required = [name for name in partial.needed_inputs if name not in slots]
        converted = {**convert_inputs(self.input_specs, inputs, required=required), **slots}
        for name in partial.needed_inputs:
            given[id(self._function.inputs[name])] = converted[name]
        results = self._run_block(partial.plan, [given[i] for i in partial.plan.inputs], {}, capture, replaced)
        return {str(var.name): np.asarray(value) for var, value in zip(targets, results)}

    def _run_block(
        self,
        plan: BlockPlan,
        block_inputs: Sequence[Any],
        env: dict[int, Any],
        capture: Optional[Capture],
        replaced: Mapping[int, Any],
    ) -> list[Any]:
        for var_id, value in zip(plan.inputs, block_inputs):
            env[var_id] = value
        for step in plan.steps:
            op = step.op
            args = {
                name: tuple(env[id(v)] for v in var) if isinstance(var, (list, tuple)) else env[id(var)]
                for name, var in op.inputs.items()
            }
            kernel = step.kernel if capture is not None or step.inplace is None else step.inplace
            if kernel is not None:
                result = kernel(args)
                results = result if isinstance(result, tuple) else (result,)
            else:
                results = self._run_engine_op(plan, step, args, env, capture, replaced)
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

    def _run_engine_op(
        self,
        plan: BlockPlan,
        step: Step,
        args: Mapping[str, Any],
        env: dict[int, Any],
        capture: Optional[Capture],
        replaced: Mapping[int, Any],
    ) -> tuple[Any, ...]:
        """Const, constexpr and block ops: what the engine itself computes."""
        op = step.op
        if replaced and step.outputs[0][0] in replaced:
            return (replaced[step.outputs[0][0]],)
        op_type = op.op_type
        if op_type == "const":
            source = op.outputs[0].val
            cached = self._consts.get(id(op))
            if cached is None or cached[0] is not source:
                cached = self._consts[id(op)] = (source, _const_value(source))
            return (cached[1],)
        if op_type in ops_constexpr.OP_TYPES:
            return ops_constexpr.materialize(op, args)
        blocks = plan.nested[id(op)]

        def run_nested(index: int, block_inputs: Sequence[Any]) -> list[Any]:
            return self._run_block(blocks[index], block_inputs, env, capture, replaced)

        return tuple(ops_control.BLOCK_OPS[op_type](args, run_nested))
