"""List ops in the reference evaluator: a list built in a while loop, growth, and the errors."""

from __future__ import annotations

from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

from mil_sparsity import reference

IOS17 = ct.target.iOS17


def test_list_filled_in_a_loop_then_gathered() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)

    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 2))], opset_version=IOS17)
    def prog(x: Any) -> Any:
        ls = mb.make_list(init_length=1, elem_shape=(2,), dynamic_length=True)

        def cond(i: Any, ls: Any) -> Any:
            return mb.less(x=i, y=3)

        def body(i: Any, ls: Any) -> Any:
            row = mb.gather(x=x, indices=i, axis=0)
            ls = mb.list_write(ls=ls, index=mb.add(x=i, y=1), value=mb.mul(x=row, y=10.0))
            return mb.add(x=i, y=1), ls

        _, ls = mb.while_loop(_cond=cond, _body=body, loop_vars=(np.int32(0), ls))
        return mb.list_gather(ls=ls, indices=[3, 0, 1]), mb.list_length(ls=ls)

    gathered, length = reference.run(prog, {"x": x}).values()
    np.testing.assert_array_equal(gathered, [x[2] * 10, [0, 0], x[0] * 10])  # element 0: never written
    assert int(length) == 4  # grown from 1 by the writes at 1, 2, 3


def test_fixed_length_list_refuses_a_write_past_its_end() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,))], opset_version=IOS17)
    def prog(a: Any) -> Any:
        ls = mb.make_list(init_length=2, elem_shape=(2,), dynamic_length=False)
        ls = mb.list_write(ls=ls, index=2, value=a)
        return mb.list_read(ls=ls, index=0)

    with pytest.raises(ValueError, match=r"list_write: index 2 is out of range, allowed 0\.\.1"):
        reference.run(prog, {"a": np.ones(2, np.float32)})


def test_read_past_the_end_raises() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,))], opset_version=IOS17)
    def prog(a: Any) -> Any:
        ls = mb.make_list(init_length=2, elem_shape=(2,))
        ls = mb.list_write(ls=ls, index=0, value=a)
        return mb.list_read(ls=ls, index=5)

    with pytest.raises(ValueError, match=r"list_read: index 5 is out of range, allowed 0\.\.1"):
        reference.run(prog, {"a": np.ones(2, np.float32)})
