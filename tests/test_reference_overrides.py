"""The evaluator as an engine: weight overrides, partial runs, runs from intermediates and
per-evaluator kernels (``ops=``)."""

from __future__ import annotations

from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from mil_sparsity import _coremltools_private as private
from mil_sparsity import reference
from mil_sparsity.reference._registry import OP_TABLE, OPSET_TABLE, KernelTable
from tests._mil_helpers import snapshot

IOS16, IOS17, IOS18 = ct.target.iOS16, ct.target.iOS17, ct.target.iOS18
RNG = np.random.default_rng(7)


def three_layers(dtype: Any = np.float32, target: Any = IOS17) -> tuple[Any, list[np.ndarray]]:
    """x -> linear(w0) -> relu -> linear(w1) -> relu -> linear(w2); the names h0.. are fixed."""
    weights = [RNG.standard_normal(shape).astype(dtype) for shape in ((16, 8), (16, 16), (4, 16))]

    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 8))], opset_version=target)
    def prog(x: Any) -> Any:
        if dtype == np.float16:
            x = mb.cast(x=x, dtype="fp16", name="x16")
        h = x
        for index, weight in enumerate(weights):
            h = mb.linear(x=h, weight=mb.const(val=weight, name=f"w{index}"), name=f"h{index}")
            if index < 2:
                h = mb.relu(x=h, name=f"r{index}")
        return h

    return prog, weights


def numpy_three(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    h = x
    for index, weight in enumerate(weights):
        h = h @ weight.astype(np.float32).T
        if index < 2:
            h = np.maximum(h, 0)
    return h


def output_of(result: dict[str, np.ndarray]) -> np.ndarray:
    (value,) = result.values()
    return value


X = RNG.standard_normal((3, 8)).astype(np.float32)


# ---- overrides --------------------------------------------------------------------------------


def test_an_override_replaces_the_const_for_that_run_only() -> None:
    prog, weights = three_layers()
    evaluator = reference.ReferenceEvaluator(prog)
    before = snapshot(prog)
    pruned = weights[1] * (np.abs(weights[1]) > 0.5)
    changed = output_of(evaluator.run({"x": X}, overrides={"w1": pruned}))
    np.testing.assert_allclose(changed, numpy_three(X, [weights[0], pruned, weights[2]]), rtol=1e-5, atol=1e-5)
    dense = output_of(evaluator.run({"x": X}))
    np.testing.assert_allclose(dense, numpy_three(X, weights), rtol=1e-5, atol=1e-5)
    assert not np.allclose(changed, dense)
    assert snapshot(prog) == before


def test_an_fp16_const_override_is_stored_as_fp16() -> None:
    prog, weights = three_layers(np.float16, IOS17)
    evaluator = reference.ReferenceEvaluator(prog)
    fine = weights[0].astype(np.float32) + np.float32(1e-4)  # below fp16's resolution near 1
    rounded = fine.astype(np.float16)
    a = output_of(evaluator.run({"x": X}, overrides={"w0": fine}))
    b = output_of(evaluator.run({"x": X}, overrides={"w0": rounded}))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "overrides, error, words",
    [
        ({"nope": np.zeros((16, 8))}, ValueError, ["'nope'", "not a const"]),
        ({"h0": np.zeros((3, 16))}, ValueError, ["'h0'", "not a const"]),
        ({"w0": np.zeros((8, 16))}, ValueError, ["w0", "(8, 16)", "(16, 8)"]),
        ({"w0": np.full((16, 8), "a")}, TypeError, ["w0", "numbers"]),
        ([("w0", 1)], TypeError, ["overrides", "list"]),
    ],
)
def test_bad_overrides_name_the_problem(overrides: Any, error: type, words: list[str]) -> None:
    prog, _ = three_layers()
    evaluator = reference.ReferenceEvaluator(prog)
    with pytest.raises(error) as raised:
        evaluator.run({"x": X}, overrides=overrides)
    for word in words:
        assert word in str(raised.value)


def test_an_override_of_a_compressed_weight_goes_by_the_decompressed_name() -> None:
    mask = RNG.random((4, 8)) < 0.5
    dense = np.where(mask, RNG.standard_normal((4, 8)), 0).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 8))], opset_version=IOS18)
    def prog(x: Any) -> Any:
        weight = mb.constexpr_sparse_to_dense(
            nonzero_data=mb.const(val=dense[mask], name="nz"),
            mask=mb.const(val=mask.astype(private.UINT1_DTYPE), name="m"),
            name="w_sparse",
        )
        return mb.linear(x=x, weight=weight, name="y")

    evaluator = reference.ReferenceEvaluator(prog)
    np.testing.assert_allclose(output_of(evaluator.run({"x": X})), X @ dense.T, rtol=1e-5, atol=1e-6)
    other = RNG.standard_normal((4, 8)).astype(np.float32)
    got = output_of(evaluator.run({"x": X}, overrides={"w_sparse": other}))
    np.testing.assert_allclose(got, X @ other.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"'nz' is an operand of compressed weight\(s\) \['w_sparse'\]"):
        evaluator.run({"x": X}, overrides={"nz": np.zeros(int(mask.sum()), np.float32)})


# ---- partial runs and runs from intermediates -------------------------------------------------


def test_outputs_returns_intermediates_and_runs_only_what_they_need() -> None:
    prog, weights = three_layers()
    evaluator = reference.ReferenceEvaluator(prog)
    seen: list[str] = []
    got = evaluator.run({"x": X}, lambda op, _a, _o: seen.append(str(op.name)), outputs=["r0", "h1"])
    assert list(got) == ["r0", "h1"]
    r0 = np.maximum(X @ weights[0].T, 0)
    np.testing.assert_allclose(got["r0"], r0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["h1"], r0 @ weights[1].T, rtol=1e-5, atol=1e-5)
    assert "h2" not in seen and "w2" not in seen and "h1" in seen


def test_start_from_an_intermediate_skips_everything_before_it() -> None:
    prog, weights = three_layers()
    evaluator = reference.ReferenceEvaluator(prog)
    r1 = evaluator.run({"x": X}, outputs=["r1"])["r1"]
    seen: list[str] = []
    rest = evaluator.run({}, lambda op, _a, _o: seen.append(str(op.name)), start={"r1": r1})
    np.testing.assert_allclose(output_of(rest), output_of(evaluator.run({"x": X})), rtol=1e-6, atol=1e-6)
    assert "h2" in seen and not {"w0", "h0", "r0", "w1", "h1", "r1"} & set(seen)
    # a changed last weight, probed from the cached activation, matches a full run with it
    probe = np.zeros_like(weights[2])
    probe[:, :4] = weights[2][:, :4]
    fast = output_of(evaluator.run({}, start={"r1": r1}, overrides={"w2": probe}))
    full = output_of(evaluator.run({"x": X}, overrides={"w2": probe}))
    np.testing.assert_array_equal(fast, full)


def test_a_slice_between_two_intermediates() -> None:
    prog, weights = three_layers()
    evaluator = reference.ReferenceEvaluator(prog)
    r0 = evaluator.run({"x": X}, outputs=["r0"])["r0"]
    h1 = evaluator.run({}, start={"r0": r0}, outputs=["h1"])["h1"]
    np.testing.assert_allclose(h1, r0 @ weights[1].T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"outputs": ["zz"]}, ["outputs", "zz"]),
        ({"outputs": []}, ["outputs", "empty"]),
        ({"start": {"zz": np.zeros(3)}}, ["start", "zz", "not a value"]),
        ({"start": {"x": X}}, ["start", "'x'", "function input"]),
        ({"start": {"r0": np.zeros((3, 15))}}, ["start", "r0", "(3, 15)"]),
    ],
)
def test_bad_outputs_or_start_name_the_problem(kwargs: Any, words: list[str]) -> None:
    prog, _ = three_layers()
    with pytest.raises(ValueError) as raised:
        reference.run(prog, {"x": X}, **kwargs)
    for word in words:
        assert word in str(raised.value)


def test_outputs_as_a_string_is_a_type_error() -> None:
    prog, _ = three_layers()
    with pytest.raises(TypeError, match="outputs"):
        reference.run(prog, {"x": X}, outputs="h0")  # type: ignore[arg-type]


def test_a_partial_run_still_requires_the_inputs_it_reads() -> None:
    prog, _ = three_layers()
    with pytest.raises(ValueError, match=r"missing \['x'\]"):
        reference.run(prog, {}, outputs=["h0"])


# ---- per-evaluator kernels --------------------------------------------------------------------


def test_extra_kernels_are_per_evaluator_and_leave_the_global_table_alone() -> None:
    prog, weights = three_layers()
    table_before = dict(OP_TABLE), {k: dict(v) for k, v in OPSET_TABLE.items()}
    leaky = reference.ReferenceEvaluator(prog, ops={"relu": lambda args: np.where(args["x"] > 0, args["x"], 0.5 * args["x"])})
    plain = reference.ReferenceEvaluator(prog)
    assert not np.allclose(output_of(leaky.run({"x": X})), output_of(plain.run({"x": X})))
    np.testing.assert_allclose(output_of(plain.run({"x": X})), numpy_three(X, weights), rtol=1e-5, atol=1e-5)
    assert (dict(OP_TABLE), {k: dict(v) for k, v in OPSET_TABLE.items()}) == table_before


def test_an_extra_kernel_runs_an_op_type_the_evaluator_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=IOS17)
    def prog(x: Any) -> Any:
        return mb.erf(x=x)

    monkeypatch.delitem(OP_TABLE, "erf")  # as if erf had no built-in kernel
    with pytest.raises(NotImplementedError, match="erf"):
        reference.ReferenceEvaluator(prog)
    doubled = reference.run(prog, {"x": np.ones((2, 3))}, ops={"erf": lambda args: 2 * args["x"]})
    np.testing.assert_array_equal(output_of(doubled), np.full((2, 3), 2, np.float32))


@pytest.mark.parametrize("target, expected", [(IOS16, 1.0), (IOS17, 3.0), (IOS18, 3.0)])
def test_kernels_keyed_by_opset_apply_from_that_version_on(target: Any, expected: float) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,))], opset_version=target)
    def prog(x: Any) -> Any:
        return mb.gather(x=x, indices=np.array([0, 1], np.int32), axis=0)

    ops = {"gather": lambda args: np.full(2, 1.0, np.float32), ("gather", int(IOS17)): lambda args: np.full(2, 3.0, np.float32)}
    got = output_of(reference.run(prog, {"x": np.zeros(2)}, ops=ops))
    # gather has versions for iOS15, iOS16 and iOS17: an iOS18 program uses the iOS17 class
    np.testing.assert_array_equal(got, np.full(2, expected, np.float32))


@pytest.mark.parametrize(
    "ops, error, word",
    [
        ({"relu": 3}, TypeError, "callable"),
        ({("relu",): abs}, TypeError, "key"),
        ({("relu", "iOS17"): abs}, TypeError, "key"),
        ([("relu", abs)], TypeError, "ops"),
    ],
)
def test_bad_extra_kernels_are_refused(ops: Any, error: type, word: str) -> None:
    with pytest.raises(error, match=word):
        KernelTable.with_extra(ops)


def test_cut_before_a_weight_gives_what_a_probe_of_it_needs() -> None:
    prog, weights = three_layers()
    evaluator = reference.ReferenceEvaluator(prog)
    assert evaluator.cut_before(["w2"]) == ("r1",)
    assert evaluator.cut_before(["w1", "w2"]) == ("r0",)
    assert evaluator.cut_before(["w0"]) == ()
    cached = evaluator.run({"x": X}, outputs=list(evaluator.cut_before(["w1"])))
    probe = np.flip(weights[1], axis=0).copy()
    fast = evaluator.run({"x": X}, start=cached, overrides={"w1": probe})
    np.testing.assert_array_equal(output_of(fast), output_of(evaluator.run({"x": X}, overrides={"w1": probe})))
    with pytest.raises(ValueError, match="h0"):
        evaluator.cut_before(["h0"])


def test_cut_before_a_weight_inside_a_nested_block_stops_before_its_owner() -> None:
    inner = RNG.standard_normal((4, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4)), mb.TensorSpec(shape=(1,), dtype=types.bool)], opset_version=IOS17)
    def prog(x: Any, flag: Any) -> Any:
        h = mb.relu(x=x, name="h")

        def then() -> Any:
            return mb.linear(x=h, weight=mb.const(val=inner, name="inner_w"), name="t")

        def other() -> Any:
            return mb.identity(x=h, name="e")

        return mb.cond(pred=mb.squeeze(x=flag), _true_fn=then, _false_fn=other, name="out")

    evaluator = reference.ReferenceEvaluator(prog)
    cut = evaluator.cut_before(["inner_w"])
    assert "h" in cut
    inputs = {"x": X[:2, :4], "flag": np.array([True])}
    cached = evaluator.run(inputs, outputs=list(cut))
    probe = np.eye(4, dtype=np.float32)
    fast = evaluator.run(inputs, start=cached, overrides={"inner_w": probe})
    np.testing.assert_allclose(output_of(fast), np.maximum(X[:2, :4], 0), rtol=1e-6)


@pytest.mark.parametrize("target, expected", [(IOS16, [0.0, 0.0, 5.0]), (IOS17, [0.0, 0.0, 0.0])])
def test_built_in_scatter_kernels_are_keyed_by_opset(target: Any, expected: list[float]) -> None:
    """iOS15/16 scatter counts a negative index from the end; iOS17's takes [0, D) only (an
    index outside is dropped without validate_indices)."""
    assert "scatter" in OPSET_TABLE

    @mb.program(input_specs=[mb.TensorSpec(shape=(3,))], opset_version=target)
    def prog(x: Any) -> Any:
        return mb.scatter(data=x, indices=np.array([-1], np.int32), updates=np.array([5.0], np.float32), mode="update")

    got = output_of(reference.run(prog, {"x": np.zeros(3, np.float32)}))
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
