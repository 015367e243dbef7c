"""The evaluator's in-place steps: a hot kernel (add, sub, mul, gelu, softmax, layer_norm) may
write into an input that dies at it, and never into anything else: function inputs, ``start``
values, consts, overrides, values that another live value views, or values a user's kernel
returned. Results equal the out-of-place kernels' (and numpy's), with or without ``capture``.
Also: a probe of a weight from the activations cached before its layer equals a full run.
"""

from __future__ import annotations

from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

from mil_sparsity import reference
from mil_sparsity.reference._registry import KernelTable
from mil_sparsity.reference.planning import plan_block

IOS17 = ct.target.iOS17
RNG = np.random.default_rng(11)
W = RNG.standard_normal((6, 5)).astype(np.float32)
X = RNG.standard_normal((4, 5)).astype(np.float32)


def in_place_ops(prog: Any) -> list[str]:
    """Names of the ops the plan of ``prog``'s main function runs in place."""
    table = KernelTable()
    plan = plan_block(prog.functions["main"], lambda op: table.lookup(op.op_type, None) if op.op_type != "const" else None)
    return [str(step.op.name) for step in plan.steps if step.inplace is not None]


def only(result: dict[str, np.ndarray]) -> np.ndarray:
    (value,) = result.values()
    return value


def erf(x: np.ndarray) -> np.ndarray:
    from math import erf as scalar_erf

    return np.vectorize(scalar_erf)(x.astype(np.float64))


def test_an_elementwise_chain_runs_in_place_and_matches_numpy() -> None:
    bias = RNG.standard_normal(6).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 5))], opset_version=IOS17)
    def prog(x: Any) -> Any:
        h = mb.linear(x=x, weight=W, name="h")
        h = mb.add(x=h, y=bias, name="biased")
        h = mb.mul(x=h, y=np.float32(0.5), name="scaled")
        h = mb.gelu(x=h, mode="EXACT", name="act")
        h = mb.layer_norm(x=h, axes=[-1], epsilon=1e-5, name="norm")
        return mb.softmax(x=h, axis=-1, name="probs")

    assert in_place_ops(prog) == ["biased", "scaled", "act", "norm", "probs"]
    x = X.copy()
    got = only(reference.run(prog, {"x": x}))
    np.testing.assert_array_equal(x, X)  # the input is never written
    h = (X.astype(np.float64) @ W.T + bias) * 0.5
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    e = np.exp(h - h.max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    seen: dict[str, np.ndarray] = {}

    def capture(op: Any, inputs: Any, outputs: tuple[Any, ...]) -> None:
        if op.op_type == "const":
            return
        seen[str(op.name)] = outputs[0].copy()
        if isinstance(inputs.get("x"), np.ndarray):
            seen[f"{op.name}.x"] = inputs["x"].copy()

    np.testing.assert_array_equal(only(reference.run(prog, {"x": X}, capture=capture)), got)
    # with a capture callback nothing runs in place: each op's input is what its producer made
    for producer, reader in [("h", "biased"), ("biased", "scaled"), ("scaled", "act"), ("act", "norm")]:
        np.testing.assert_array_equal(seen[f"{reader}.x"], seen[producer])


def test_a_value_another_live_value_views_is_not_overwritten() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 5))], opset_version=IOS17)
    def prog(x: Any) -> Any:
        h = mb.linear(x=x, weight=W, name="h")
        flat = mb.reshape(x=h, shape=[24], name="flat")  # a view of h
        doubled = mb.mul(x=h, y=np.float32(2.0), name="doubled")  # h's last reader
        return mb.add(x=mb.reshape(x=flat, shape=[4, 6]), y=doubled, name="out")

    assert "doubled" not in in_place_ops(prog)
    np.testing.assert_allclose(only(reference.run(prog, {"x": X})), 3 * (X @ W.T), rtol=1e-5, atol=1e-5)


def test_a_value_a_user_kernel_returned_is_not_overwritten() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 5))], opset_version=IOS17)
    def prog(x: Any) -> Any:
        h = mb.linear(x=x, weight=W, name="h")
        same = mb.relu(x=h, name="same")  # the user's kernel below returns h itself
        doubled = mb.mul(x=h, y=np.float32(2.0), name="doubled")
        return mb.add(x=same, y=doubled, name="out")

    evaluator = reference.ReferenceEvaluator(prog, ops={"relu": lambda args: args["x"]})
    np.testing.assert_allclose(only(evaluator.run({"x": X})), 3 * (X @ W.T), rtol=1e-5, atol=1e-5)


def test_start_values_consts_and_overrides_are_never_written() -> None:
    scale = np.full((4, 6), 3.0, np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 5))], opset_version=IOS17)
    def prog(x: Any) -> Any:
        h = mb.linear(x=x, weight=mb.const(val=W, name="w"), name="h")
        g = mb.gelu(x=h, name="act")  # reads h: a start value in the partial runs below
        g = mb.mul(x=mb.const(val=scale, name="scale"), y=g, name="scaled")  # a const, then g
        return mb.add(x=g, y=mb.const(val=np.ones(6, np.float32), name="one"), name="out")

    evaluator = reference.ReferenceEvaluator(prog)
    full = only(evaluator.run({"x": X}))
    h = evaluator.run({"x": X}, outputs=["h"])["h"]
    kept = h.copy()
    start = {"h": h}
    for _ in range(2):
        np.testing.assert_array_equal(only(evaluator.run({}, start=start)), full)
        np.testing.assert_array_equal(h, kept)
    override = np.full((4, 6), 2.0, np.float32)
    with_override = only(evaluator.run({}, start=start, overrides={"scale": override}))
    np.testing.assert_array_equal(override, np.full((4, 6), 2.0, np.float32))
    np.testing.assert_allclose((with_override - 1) * 1.5, full - 1, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(only(evaluator.run({"x": X})), full)  # the consts are intact


@pytest.mark.filterwarnings("ignore")
def test_a_probe_of_a_last_layer_weight_from_cached_activations_equals_a_full_run() -> None:
    pytest.importorskip("transformers")
    import _zoo

    zoo = _zoo.build("bert")
    evaluator = reference.ReferenceEvaluator(_zoo.converted("bert", ct.target.iOS16, ct.precision.FLOAT32))
    inputs = zoo.random_inputs(3)
    main = evaluator.program.functions["main"]
    weights = {str(op.outputs[0].name): op.outputs[0].val for op in main.operations if op.op_type == "const"}
    last = max(int(name.split("_layer_")[1].split("_")[0]) for name in weights if "_layer_" in name)
    name = f"model_encoder_layer_{last}_intermediate_dense_weight"
    cut = evaluator.cut_before([name])
    cached = evaluator.run(inputs, outputs=list(cut))
    pruned = weights[name] * (np.abs(weights[name]) > np.median(np.abs(weights[name])))
    ran: list[str] = []
    probe = evaluator.run({}, lambda op, _i, _o: ran.append(op.op_type), start=cached, overrides={name: pruned})
    full = evaluator.run(inputs, overrides={name: pruned})
    assert list(probe) == list(full)
    for key in full:
        np.testing.assert_allclose(probe[key], full[key], rtol=1e-6, atol=1e-6)
        assert not np.allclose(full[key], evaluator.run(inputs)[key])  # the override matters
    # the probe ran the rest of the last layer and the pooler only
    assert ran.count("linear") == 3 and "gather" not in ran and "softmax" not in ran
