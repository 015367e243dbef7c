"""The states of a stateful function (iOS18, ``ct.StateType``), as ``MLModel.make_state()`` and
``predict(..., state=)`` keep them.

A stateful function has state inputs (vars of a ``state`` type wrapping a fixed-shape tensor)
next to its ordinary inputs. Ops read a state with ``read_state`` and write it with
``coreml_update_state`` (or ``write_state``); the value written persists in the state object
across runs, so one state carries e.g. a KV cache from one decode step to the next.

- :class:`EvaluatorState`: one numpy buffer per state input of one evaluator, zero-initialised
  as Core ML's ``makeState`` documents ("The allocated state buffers are initialized to zeros";
  ``ct.StateType`` has no default value). Buffers hold the state's declared dtype (fp16 for a
  Core ML model: Core ML keeps states in fp16), so a value written is rounded to it, as an fp16
  input is. Two states never share a buffer; ``read_state`` returns a copy and ``write_state``
  copies in, as ``ct.models.MLState`` does.
- :class:`StateLayout`: the state inputs of one planned function; it makes that function's
  states and binds one to a run, refusing a missing state, a state made for another evaluator,
  and state names among the ordinary inputs (Core ML takes states only through ``state=``).
- :class:`StateSlot`: one buffer as a state op sees it during a run (the value of a state
  input var; :mod:`.ops_state` reads and writes it).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import attrs
import numpy as np

from mil_sparsity import _coremltools_private as private
from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.reference.inputs import compute_dtype


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in values)


@attrs.frozen
class StateSpec:
    """One state input: its name, its (fixed) shape and the dtype its buffer holds."""

    name: str
    shape: tuple[int, ...] = attrs.field(converter=_ints)
    dtype: np.dtype[Any] = attrs.field(converter=np.dtype)


class StateSlot:
    """One state buffer during a run: ``read`` gives a copy in the compute dtype (float32 for
    a float state), ``write`` stores a value of the state's shape, cast to its dtype."""

    __slots__ = ("spec", "_buffer")

    def __init__(self, spec: StateSpec, buffer: np.ndarray) -> None:
        self.spec = spec
        self._buffer = buffer

    def read(self) -> np.ndarray:
        return self._buffer.astype(compute_dtype(self.spec.dtype), copy=True)

    def write(self, value: Any) -> None:
        given = np.asarray(value)
        if tuple(given.shape) != self.spec.shape:
            raise InvalidInputError(
                f"state {self.spec.name!r}: a write of shape {tuple(given.shape)}, but the state "
                f"has shape {self.spec.shape}"
            )
        self._buffer[...] = given  # cast to the buffer's dtype (fp16 rounds), never aliased

    def __repr__(self) -> str:
        return f"StateSlot({self.spec.name!r}, shape={self.spec.shape}, dtype={self.spec.dtype})"


class EvaluatorState:
    """The state buffers of one evaluator's function, made by its ``make_state()`` and passed
    to its ``run(..., state=)``; each run's writes persist here for the next run.

    ``read_state(name)`` and ``write_state(name, value)`` read and set a buffer (copies, as
    ``ct.models.MLState`` in coremltools 9); ``copy()`` is an independent snapshot (e.g. to
    branch a decode). A state belongs to the evaluator that made it: another one refuses it.
    """

    __slots__ = ("_layout", "_buffers")

    def __init__(self, layout: "StateLayout", buffers: Mapping[str, np.ndarray]) -> None:
        self._layout = layout
        self._buffers = dict(buffers)

    @property
    def specs(self) -> tuple[StateSpec, ...]:
        return self._layout.specs

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self._layout.specs)

    def _spec(self, name: str) -> StateSpec:
        for spec in self._layout.specs:
            if spec.name == name:
                return spec
        raise InvalidInputError(f"state name {name!r} is not a state of this model; it has {list(self.names)}")

    def read_state(self, name: str) -> np.ndarray:
        """A copy of the buffer of state ``name``, in the state's dtype."""
        self._spec(name)
        return self._buffers[name].copy()

    def write_state(self, name: str, value: Any) -> None:
        """Set state ``name`` to ``value`` (its exact shape; numbers, cast to the state's dtype)."""
        spec = self._spec(name)
        given = np.asarray(value)
        if given.dtype.kind not in "buif":
            raise InvalidTypeError(f"state {name!r}: expected numbers, got dtype {given.dtype}")
        StateSlot(spec, self._buffers[name]).write(given)

    def copy(self) -> "EvaluatorState":
        """An independent state of the same evaluator holding the same values."""
        return EvaluatorState(self._layout, {name: buffer.copy() for name, buffer in self._buffers.items()})

    def __repr__(self) -> str:
        listing = ", ".join(f"{s.name} {s.shape} {s.dtype}" for s in self._layout.specs)
        return f"EvaluatorState(function {self._layout.function_name!r}: {listing or 'no states'})"


class StateLayout:
    """The state inputs of one planned function, in the function's input order."""

    def __init__(self, function: Any, function_name: str) -> None:
        specs = []
        for name, var in function.inputs.items():
            if not private.is_state_type(var.sym_type):
                continue
            shape = tuple(var.shape)
            if not all(isinstance(d, (int, np.integer)) for d in shape):
                raise InvalidInputError(
                    f"state {name!r} of function {function_name!r}: shape {shape} is not fixed "
                    f"(Core ML states have fixed shapes)"
                )
            specs.append(StateSpec(str(name), shape, private.numpy_dtype_of(var.dtype)))
        self.function_name = function_name
        self.specs: tuple[StateSpec, ...] = tuple(specs)
        self.names = frozenset(spec.name for spec in specs)

    def new_state(self) -> EvaluatorState:
        """Zero buffers, one per state (none for a stateless function: such a state makes runs
        stateless, as Core ML's state of a stateless model does)."""
        return EvaluatorState(self, {spec.name: np.zeros(spec.shape, spec.dtype) for spec in self.specs})

    def _describe(self) -> str:
        return f"function {self.function_name!r} with states {sorted(self.names)}"

    def bind(self, state: Optional[EvaluatorState], inputs: Mapping[str, Any]) -> dict[str, StateSlot]:
        """State input name -> its slot in ``state`` for one run, after checking that
        ``inputs`` names no state and that ``state`` is one of this function's states."""
        if isinstance(inputs, Mapping):
            given = sorted(str(name) for name in inputs if name in self.names)
            if given:
                raise InvalidInputError(
                    f"inputs: {given} are states of function {self.function_name!r}, not inputs; "
                    f"pass them with state=evaluator.make_state() (as MLModel.predict(..., state=))"
                )
        if state is None:
            if not self.specs:
                return {}
            raise InvalidInputError(
                f"state: missing; function {self.function_name!r} has states "
                f"{[spec.name for spec in self.specs]}: pass state=evaluator.make_state() "
                f"(ReferenceEvaluator(model).make_state(), as MLModel.make_state())"
            )
        if not isinstance(state, EvaluatorState):
            raise InvalidTypeError(
                f"state must be an EvaluatorState from this evaluator's make_state(), got "
                f"{type(state).__name__}"
            )
        if state._layout is not self:
            raise InvalidInputError(
                f"state: made by another evaluator ({state._layout._describe()}); this evaluator "
                f"({self._describe()}) runs only on states from its own make_state()"
            )
        return {spec.name: StateSlot(spec, state._buffers[spec.name]) for spec in self.specs}
