"""A numpy reference evaluator for Core ML ML Programs.

``run(model, inputs)`` evaluates one function of an ML Program op by op with numpy and returns
every output by name. It is a reference for checking and calibrating (does a rewritten program
still compute the same function? what do the activations look like?), not a production
runtime: it runs on any platform, without the Core ML framework.

- ``model``: an ``MLModel`` (converted in this process or loaded with
  ``skip_model_load=True``), a path to an ``.mlpackage``, or a PyMIL ``Program``. The program
  is read, never modified.
- ``inputs``: input name -> array. Shapes must be within the model's input spec (fixed,
  ``RangeDim`` ranges or ``EnumeratedShapes``); dtypes are converted as Core ML does (int64
  token ids -> int32, float64 -> float32 or fp16). Missing or unknown names, a wrong rank or a
  shape outside the spec raise ValueError naming the input, the shape given and the shapes
  allowed.
- Arithmetic: float32. fp16 weights and activations are upcast to float32 exactly (results
  are float32 arrays even for fp16-typed outputs; an evaluator upcasts each fp16 weight once
  and keeps it, float32 weights are used as they are). ``round_fp16_intermediates=True`` rounds
  every fp16-typed value to fp16 after each op, so results show the effect of fp16 storage
  between ops (an op's internal arithmetic stays float32).
- ``capture(op, input_values, output_values)``, if given, is called once for every op
  evaluated (nested ops once per execution), with the PyMIL op, a dict input name -> value
  (a tuple for variadic inputs; a state as its :class:`~.state.StateSlot`) and a tuple of
  output values. Values are freed as soon as their last reader has run, so memory holds what
  the graph still needs plus what the callback keeps. Without a callback, add/sub/mul, gelu,
  softmax and layer_norm may write their result into an intermediate input that dies at them
  (never into inputs, ``start`` values, consts, overrides or states).
- Before anything runs, a function with op types the evaluator lacks raises one
  NotImplementedError listing each type and how many times it occurs.
- States (iOS18 ``ct.StateType``, e.g. an LLM's KV cache): as ``MLModel.make_state()`` and
  ``predict(..., state=)``, ``state = evaluator.make_state()`` (a
  :class:`ReferenceEvaluator`'s) holds one zero buffer per state input, in the state's dtype
  (fp16 for a Core ML model, so what the model writes is rounded to fp16), and
  ``evaluator.run(inputs, state=state)`` runs on it: ``read_state`` reads a copy,
  ``coreml_update_state`` / ``write_state`` write, and the writes persist in ``state`` for
  the next run (a decode step by step). States are not ``inputs``. A stateful function without
  a state, a state of another evaluator (even of the same model) or a state name among the
  inputs raise ValueError naming it; states never share buffers (``state.copy()`` snapshots,
  ``read_state(name)`` / ``write_state(name, value)`` copy out and in). A stateless function
  takes its empty ``make_state()`` too. The one-shot :func:`run` has no state to give: use a
  ``ReferenceEvaluator``. If a run raises, the state keeps the writes made before the error.
- ``threads`` (an int in 1..64; default: the BLAS's thread count, so ``OPENBLAS_NUM_THREADS``
  governs both): how many ways a run's large matrix products, fused elementwise chains (gelu,
  erf), softmax and norms split their work among threads. With more than one, numpy's
  OpenBLAS is pinned to one thread for the run and the products are cut into one-thread
  shares instead (its idle workers would otherwise spin on the cores the other kernels need);
  the count is process-wide, so other threads' products also run on one BLAS thread meanwhile,
  and it is put back when the run ends. Where the BLAS cannot be pinned (no OpenBLAS found),
  products stay whole. Every share is computed as it would be alone: elementwise kernels,
  softmax and norms give the same bits for every thread count.

Engine features (all per run; nothing in the program or the evaluator changes):

- ``overrides={const name: array}``: evaluate as if those consts held those values (stored as
  the const's dtype stores them: an fp16 const's override is rounded to fp16). Use it to probe
  a changed weight without rebuilding anything. An unknown name, a wrong shape or non-numbers
  raise; a const read by a ``constexpr_*`` op is refused (override the decompressed value by
  that op's name).
- ``outputs=[names]``: return these top-level values (any op output or input, by name)
  instead of the function's outputs; only the ops they need run.
- ``start={name: array}``: bind these top-level intermediate values; the ops they depend on
  do not run, and ``inputs`` needs only the function inputs the remaining ops read. With
  ``outputs``, a run covers one slice of the graph: calibrating layer by layer, or re-running
  only what follows a changed weight from cached activations.
- ``ReferenceEvaluator(model, ops={...})``: kernels of this evaluator only (the global table
  is untouched): ``{"my_op": kernel}`` for every opset, ``{("resize", ct.target.iOS17):
  kernel}`` for ops of that opset version and later. A kernel takes the op's input values by
  name and returns one array or a tuple, one per output. Precedence: the evaluator's
  opset-keyed kernels, its plain ones, the built-in opset-keyed ones, the built-in ones.

Supported op types: :func:`supported_op_types`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity import _coremltools_private as private
from mil_sparsity.reference._registry import Kernel, KernelKey
from mil_sparsity.reference.engine import Capture, Evaluator, check_supported, supported_op_types
from mil_sparsity.reference.inputs import InputSpec, spec_from_feature, spec_from_placeholder
from mil_sparsity.reference.state import EvaluatorState, StateSpec


def _program_and_description(model: Any, function_name: str) -> tuple[Any, Any]:
    """The PyMIL program and (if there is one) the model description of ``function_name``."""
    from coremltools.converters.mil.mil.program import Program

    if isinstance(model, Program):
        return model, None
    from mil_sparsity.model.io import load_model, load_program

    if not isinstance(model, (str, os.PathLike)) and not hasattr(model, "get_spec"):
        raise InvalidTypeError(
            "model must be an MLModel, a path to an .mlpackage or a PyMIL Program, got "
            f"{type(model).__name__}"
        )
    mlmodel = load_model(model)
    program = getattr(mlmodel, "_mil_program", None)
    if program is None:
        program = load_program(mlmodel)
    description = mlmodel.get_spec().description
    for function in description.functions:
        if function.name == function_name:
            return program, function
    return program, description if len(description.functions) == 0 else None


def _input_specs(function: Any, description: Any) -> list[InputSpec]:
    features = {feature.name: feature for feature in description.input} if description is not None else {}
    specs = []
    for name, var in function.inputs.items():
        if private.is_state_type(var.sym_type):  # given with state=, see .state
            continue
        dtype = private.numpy_dtype_of(var.dtype)
        spec = spec_from_feature(features[name], dtype) if name in features else None
        specs.append(spec if spec is not None else spec_from_placeholder(name, var.shape, dtype))
    return specs


class ReferenceEvaluator:
    """``model``'s function ``function_name`` loaded and planned once, run on many inputs.

    ``evaluator(inputs, capture=None, state=None)`` (or ``.run``) behaves like :func:`run`;
    a stateful function needs ``state=evaluator.make_state()`` (see the module doc).
    """

    def __init__(
        self,
        model: Any,
        *,
        function_name: str = "main",
        round_fp16_intermediates: bool = False,
        ops: Optional[Mapping[KernelKey, Kernel]] = None,
        threads: Optional[int] = None,
    ) -> None:
        if not isinstance(function_name, str):
            raise InvalidTypeError(f"function_name must be a str, got {type(function_name).__name__}")
        program, description = _program_and_description(model, function_name)
        if function_name not in program.functions:
            raise InvalidInputError(
                f"function_name: {function_name!r} is not in the model; it has "
                f"{sorted(program.functions)}"
            )
        self._program = program
        self._evaluator = Evaluator(
            program,
            _input_specs(program.functions[function_name], description),
            function_name=function_name,
            round_fp16_intermediates=round_fp16_intermediates,
            ops=ops,
            threads=threads,
        )

    @property
    def input_specs(self) -> tuple[InputSpec, ...]:
        return self._evaluator.input_specs

    @property
    def threads(self) -> int:
        """How many ways a run splits its work (the ``threads`` given, or the default)."""
        return self._evaluator.threads

    @property
    def program(self) -> Any:
        """The PyMIL program evaluated (read it; modifying it invalidates the evaluator)."""
        return self._program

    @property
    def state_specs(self) -> tuple[StateSpec, ...]:
        """The function's states (name, shape, dtype); empty for a stateless function."""
        return self._evaluator.states.specs

    def make_state(self) -> EvaluatorState:
        """New state buffers, zero as Core ML's ``make_state()`` makes them (an empty state for
        a stateless function)."""
        return self._evaluator.make_state()

    def cut_before(self, const_names: Sequence[str]) -> tuple[str, ...]:
        """Names of the values that, given as ``start``, let a run skip every op before the
        first reader of ``const_names`` (what a probe of those weights needs cached)."""
        return self._evaluator.cut_before(const_names)

    def run(
        self,
        inputs: Mapping[str, Any],
        capture: Optional[Capture] = None,
        *,
        overrides: Optional[Mapping[str, Any]] = None,
        outputs: Optional[Sequence[str]] = None,
        start: Optional[Mapping[str, Any]] = None,
        state: Optional[EvaluatorState] = None,
    ) -> dict[str, np.ndarray]:
        """The function's outputs by name (or the ``outputs`` asked for); see the module doc."""
        return self._evaluator.run(
            inputs, capture, overrides=overrides, outputs=outputs, start=start, state=state
        )

    __call__ = run


def run(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    function_name: str = "main",
    capture: Optional[Capture] = None,
    round_fp16_intermediates: bool = False,
    overrides: Optional[Mapping[str, Any]] = None,
    outputs: Optional[Sequence[str]] = None,
    start: Optional[Mapping[str, Any]] = None,
    ops: Optional[Mapping[KernelKey, Kernel]] = None,
    threads: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """Evaluate ``model``'s function ``function_name`` on ``inputs``; every output by name."""
    evaluator = ReferenceEvaluator(
        model, function_name=function_name, round_fp16_intermediates=round_fp16_intermediates, ops=ops,
        threads=threads,
    )
    return evaluator.run(inputs, capture, overrides=overrides, outputs=outputs, start=start)


__all__ = [
    "Capture",
    "EvaluatorState",
    "InputSpec",
    "Kernel",
    "KernelKey",
    "ReferenceEvaluator",
    "StateSpec",
    "check_supported",
    "run",
    "supported_op_types",
]
