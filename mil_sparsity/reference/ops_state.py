"""State ops (iOS18): ``read_state``, ``coreml_update_state`` and ``write_state``.

A state argument arrives as the run's :class:`~mil_sparsity.reference.state.StateSlot` (the
value of the function's state input), so these kernels read and write the buffers of the
:class:`~mil_sparsity.reference.state.EvaluatorState` the run was given.

- ``read_state(input)``: a copy of the state (float32 for a float state).
- ``coreml_update_state(state, value)``: PyMIL's ``write_state`` followed by ``read_state``:
  stores ``value`` (cast to the state's dtype) and returns the state as read back.
- ``write_state(input, data)``: the ML Program op; stores ``data``, no outputs. coremltools'
  proto loader turns it into ``coreml_update_state``, so a PyMIL program does not show it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.reference._registry import Args, Outputs, kernel
from mil_sparsity.reference.state import StateSlot


def _slot(args: Args, name: str) -> StateSlot:
    value: Any = args[name]
    if not isinstance(value, StateSlot):
        raise InvalidInputError(f"{name}: expected a state input, got {type(value).__name__}")
    return value


@kernel("read_state")
def _read_state(args: Args) -> Outputs:
    return _slot(args, "input").read()


@kernel("coreml_update_state")
def _coreml_update_state(args: Args) -> Outputs:
    slot = _slot(args, "state")
    slot.write(np.asarray(args["value"]))
    return slot.read()


@kernel("write_state")
def _write_state(args: Args) -> Outputs:
    _slot(args, "input").write(np.asarray(args["data"]))
    return ()
