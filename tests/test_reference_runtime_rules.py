"""The runtime's rules coremltools' own op tests found the evaluator missing, run through
tests/conformance (scripts/conformance.py): values computed where the runtime raises (iOS17
scatter indices; a stack of inputs whose shapes differ at the default input shapes, refused
when the evaluator is built), and results that differed (reshape's 0, flatten2d's negative
axis, iOS17 resize, the order of a reverse recurrence's states)."""

from __future__ import annotations

from typing import Any, Callable

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol, types

from mil_sparsity import reference

IOS16 = ct.target.iOS16
IOS17 = ct.target.iOS17

DATA = np.array([[1, 2, 3], [4, 5, 6]], np.float32)


def run_with_indices(build: Callable[[Any, Any], Any], indices: np.ndarray, target: Any = IOS17) -> np.ndarray:
    """``build(data, indices)`` with both as inputs (dynamic indices: the builder cannot check them)."""

    @mb.program(
        input_specs=[mb.TensorSpec(shape=DATA.shape), mb.TensorSpec(shape=indices.shape, dtype=types.int32)],
        opset_version=target,
    )
    def prog(data: Any, idx: Any) -> Any:
        return build(data, idx)

    (result,) = reference.run(prog, {"data": DATA, "idx": indices}).values()
    return result


SCATTERS = {
    "scatter": (
        lambda d, i, v: mb.scatter(data=d, indices=i, updates=np.ones((2, 3), np.float32), mode="add", validate_indices=v),
        np.array([1, 0], np.int32),
        [np.array([-1, 0], np.int32), np.array([2, 0], np.int32)],
    ),
    "scatter_along_axis": (
        lambda d, i, v: mb.scatter_along_axis(
            data=d, indices=i, updates=np.ones((2, 3), np.float32), axis=0, mode="add", validate_indices=v
        ),
        np.array([[1, 0, 1], [0, 1, 0]], np.int32),
        [np.array([[-1, 0, 1], [0, 1, 0]], np.int32), np.array([[1, 2, 1], [0, 1, 0]], np.int32)],
    ),
    "scatter_nd": (
        lambda d, i, v: mb.scatter_nd(data=d, indices=i, updates=np.ones(2, np.float32), mode="add", validate_indices=v),
        np.array([[1, 0], [0, 2]], np.int32),
        [np.array([[1, 0], [0, -1]], np.int32), np.array([[1, 0], [0, 3]], np.int32)],
    ),
}


@pytest.mark.parametrize("op_type", sorted(SCATTERS))
def test_ios17_scatter_indices_out_of_bounds(op_type: str) -> None:
    build, good, bad_cases = SCATTERS[op_type]
    full = (run_with_indices(lambda d, i: build(d, i, True), good) != DATA).sum()
    assert full == (2 if op_type == "scatter_nd" else DATA.size)
    for bad in bad_cases:
        # validate_indices: the runtime refuses a negative or too large index
        with pytest.raises(ValueError, match=rf"{op_type}: indices: .* is out of bounds, allowed 0\.\.\d"):
            run_with_indices(lambda d, i: build(d, i, True), bad)
        # without it the runtime's result is undefined: the invalid updates are dropped
        got = run_with_indices(lambda d, i: build(d, i, False), bad)
        changed = (got != DATA).sum()
        assert 0 < changed < full
        assert set(np.unique(got - DATA)) <= {0.0, 1.0}


def test_ios16_scatter_negative_indices_count_from_the_end() -> None:
    got = run_with_indices(
        lambda d, i: mb.scatter(data=d, indices=i, updates=np.ones((2, 3), np.float32), mode="add"),
        np.array([-1, 0], np.int32),
        target=IOS16,
    )
    np.testing.assert_array_equal(got, DATA + 1)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((1, 0, -1, 0), (1, 1, 2, 50)), ((0, -1), (2, 50)), ((0, 0, 0), (1, 2, 50)), ((-1, 0), (2, 50))],
)
def test_ios17_reshape_zero_matches_the_input_from_the_right(shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    x = np.arange(100, dtype=np.float32).reshape(2, 50)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=x.shape), mb.TensorSpec(shape=(len(shape),), dtype=types.int32)],
        opset_version=IOS17,
    )
    def prog(x: Any, shape: Any) -> Any:  # the shape an input: nothing folds it
        return mb.reshape(x=x, shape=shape)

    (got,) = reference.run(prog, {"x": x, "shape": np.array(shape, np.int32)}).values()
    np.testing.assert_array_equal(got, x.reshape(expected))


@pytest.mark.parametrize("axis", [-4, -3, -1, 0, 1, 4])
def test_flatten2d_negative_axis_counts_from_rank(axis: int) -> None:
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=IOS17)
    def prog(x: Any) -> Any:
        return mb.flatten2d(x=x, axis=axis)

    (got,) = reference.run(prog, {"x": x}).values()
    split = axis + 4 if axis < 0 else axis
    np.testing.assert_array_equal(got, x.reshape(int(np.prod(x.shape[:split])), -1))


def test_ios17_resize() -> None:
    """Values from coremltools' iOS17 TestResize (what the runtime gives): nearest rounds the
    DEFAULT grid's halves up, linear blends on it, a 0 in ``shape`` keeps x's size."""
    x = np.array([-6.174, 9.371], np.float32).reshape(1, 1, 2, 1)

    def resize(value: np.ndarray, shape: list[int], mode: str) -> np.ndarray:
        @mb.program(input_specs=[mb.TensorSpec(shape=value.shape)], opset_version=IOS17)
        def prog(v: Any) -> Any:
            return mb.resize(x=v, shape=shape, resized_dims=np.uint32(2), interpolation_mode=mode, sampling_mode="DEFAULT")

        (got,) = reference.run(prog, {"v": value}).values()
        return got

    np.testing.assert_array_equal(resize(x, [1, 1, 3, 2], "NEAREST_NEIGHBOR")[0, 0], x[0, 0][[0, 1, 1]][:, [0, 0]])
    line = np.array([0, 1], np.float32).reshape(1, 1, 2)
    np.testing.assert_allclose(resize(line, [1, 1, 5], "LINEAR").reshape(-1), [0, 0.4, 0.8, 1, 1], atol=1e-6)
    assert resize(line, [1, 0, 5], "LINEAR").shape == (1, 1, 5)


def test_concat_of_scalars_is_a_vector() -> None:
    """The torch frontend concatenates scalar sizes into a shape (torch.ones(x.shape))."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(2,), dtype=types.int32)], opset_version=IOS17)
    def prog(x: Any) -> Any:
        first = mb.slice_by_index(x=x, begin=[0], end=[1], squeeze_mask=[True])
        return mb.concat(values=(first, mb.gather(x=x, indices=1, axis=0)), axis=0)

    (got,) = reference.run(prog, {"x": np.array([3, 5], np.int32)}).values()
    np.testing.assert_array_equal(got, [3, 5])


def stack_model(default: int) -> Any:
    """torch's TestStack::test_stack_dynamic_range_dim as a PyMIL program: two fixed inputs and
    one whose last dim is a RangeDim with ``default``, stacked."""

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(2, 4)), mb.TensorSpec(shape=(2, 4)), mb.TensorSpec(shape=(2, get_new_symbol()))],
        opset_version=IOS17,
    )
    def prog(a: Any, b: Any, c: Any) -> Any:
        return mb.stack(values=(a, b, c), axis=0)

    flexible = ct.TensorType(name="c", shape=(2, ct.RangeDim(lower_bound=1, upper_bound=10, default=default)))
    return ct.convert(
        prog, inputs=[ct.TensorType(name="a", shape=(2, 4)), ct.TensorType(name="b", shape=(2, 4)), flexible],
        convert_to="mlprogram", minimum_deployment_target=IOS17, compute_precision=ct.precision.FLOAT32,
        skip_model_load=True,
    )


def test_stack_of_shapes_differing_at_the_default_input_shape_is_refused() -> None:
    """The runtime fixes a RangeDim to its default when it loads the model and refuses a stack of
    different shapes there, whatever the sizes given at prediction (coremltools' torch test
    expects a RuntimeError for every default but 4)."""
    x = {name: np.ones((2, 4), np.float32) for name in "abc"}
    (got,) = reference.run(stack_model(4), x).values()
    np.testing.assert_array_equal(got, np.ones((3, 2, 4)))
    with pytest.raises(ValueError, match=r"stack 'stack_0': values: the inputs' shapes differ .* 'a' \(2, 4\), 'b' \(2, 4\), 'c' \(2, 2\)"):
        reference.ReferenceEvaluator(stack_model(2))


def test_stack_rule_binds_bare_symbols_to_one_and_leaves_computed_sizes_open() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(get_new_symbol(), 3)), mb.TensorSpec(shape=(2, 3))], opset_version=IOS17)
    def bare(x: Any, y: Any) -> Any:  # ct.convert writes a default of 1 for the symbolic dim
        return mb.stack(values=(x, y), axis=0)

    with pytest.raises(ValueError, match=r"stack .*'x' \(1, 3\), 'y' \(2, 3\)"):
        reference.ReferenceEvaluator(bare)

    @mb.program(input_specs=[mb.TensorSpec(shape=(4,))], opset_version=IOS17)
    def computed(x: Any) -> Any:  # non_zero's row count is only known when it runs
        rows = mb.non_zero(x=x)
        return mb.stack(values=(rows, mb.non_zero(x=mb.mul(x=x, y=-1.0))), axis=0)

    (got,) = reference.run(computed, {"x": np.array([1, 0, 2, 0], np.float32)}).values()
    np.testing.assert_array_equal(got, [[[0], [2]], [[0], [2]]])


@pytest.mark.parametrize("op_type", ["rnn", "gru", "lstm"])
def test_reverse_recurrence_lists_states_in_computation_order(op_type: str) -> None:
    """direction='reverse' with output_sequence: the first output is the state after the last
    input step (coremltools' op tests: torch's RNN on the time-flipped input); the final
    state is the last output."""
    rng = np.random.default_rng(0)
    steps, batch, size, hidden = 4, 2, 3, 5
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[op_type]
    x = rng.standard_normal((steps, batch, size)).astype(np.float32)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    w_ih = rng.standard_normal((gates * hidden, size)).astype(np.float32) * 0.5
    w_hh = rng.standard_normal((gates * hidden, hidden)).astype(np.float32) * 0.5

    def run(direction: str, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        @mb.program(input_specs=[mb.TensorSpec(shape=value.shape)], opset_version=IOS17)
        def prog(x: Any) -> Any:
            extra = {"initial_c": np.zeros_like(h0)} if op_type == "lstm" else {}
            outputs = getattr(mb, op_type)(
                x=x, initial_h=h0, weight_ih=w_ih, weight_hh=w_hh, direction=direction, output_sequence=True, **extra
            )
            return outputs[0], outputs[1]

        sequence, final = reference.run(prog, {"x": value}).values()
        return sequence, final

    forward_on_flipped = run("forward", x[::-1].copy())
    reverse = run("reverse", x)
    np.testing.assert_allclose(reverse[0], forward_on_flipped[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reverse[1], reverse[0][-1], rtol=1e-6, atol=1e-6)
