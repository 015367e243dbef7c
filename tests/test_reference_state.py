"""Stateful functions (iOS18 ``ct.StateType``) in the reference evaluator: ``make_state()`` and
``run(..., state=)`` as ``MLModel.make_state()`` and ``predict(..., state=)`` behave.

Torch models with registered buffers updated in place, converted with ``states=``, run step by
step against torch eager: an accumulator and a KV-cache attention layer in the form Core ML LLMs
ship (token ids and a causal mask whose last dimension is the cache length so far; the cache
slice-updated at the new positions, attention over the filled part). Torch-free: the errors,
the state object's API, the state op kernels and calibration over a sequence of samples.

Conversions: compute precision fp32 to a PyMIL program (fp32 states: the math compared at
fp32 tolerance; Core ML itself accepts only fp16 states, so such a program cannot be saved)
and the default fp16 ML Program (fp16 states and weights: compared at fp16 tolerance, also
saved and loaded as a package).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from mil_sparsity import reference
from mil_sparsity.calibration import collect_activation_stats
from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.reference import EvaluatorState, ReferenceEvaluator, StateSpec
from mil_sparsity.reference._registry import OP_TABLE
from mil_sparsity.reference.state import StateSlot
from tests._mil_helpers import snapshot

IOS18 = ct.target.iOS18
RNG = np.random.default_rng(0)
W = RNG.standard_normal((3, 3)).astype(np.float32)
W2 = RNG.standard_normal((4, 3)).astype(np.float32)


def accumulator_program(dtype: Any = types.fp32) -> Any:
    """x (2, 3) -> acc += linear(x, w); returns 2 * acc, linear(x, w) and linear(acc, w2);
    ``acc`` a (2, 3) state."""

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(2, 3)), mb.StateTensorSpec(shape=(2, 3), dtype=dtype)],
        opset_version=IOS18,
    )
    def prog(x: Any, acc: Any) -> Any:
        h = mb.linear(x=x, weight=mb.const(val=W, name="w"), name="lin")
        if dtype == types.fp16:
            h = mb.cast(x=h, dtype="fp16")
        total = mb.add(x=mb.read_state(input=acc), y=h, name="total")
        updated = mb.coreml_update_state(state=acc, value=total, name="update")
        doubled = mb.mul(x=updated, y=np.array(2.0, dtype=types.nptype_from_builtin(dtype)), name="doubled")
        if dtype == types.fp16:
            updated = mb.cast(x=updated, dtype="fp32")
        after = mb.linear(x=updated, weight=mb.const(val=W2, name="w2"), name="after")
        return doubled, mb.identity(x=h, name="step"), after

    return prog


def x_values(count: int) -> list[np.ndarray]:
    return [RNG.standard_normal((2, 3)).astype(np.float32) for _ in range(count)]


# -- the state object and the errors (no torch) -------------------------------------------------


def test_state_persists_across_runs_and_starts_at_zero() -> None:
    evaluator = ReferenceEvaluator(accumulator_program())
    assert evaluator.state_specs == (StateSpec("acc", (2, 3), np.float32),)
    assert [spec.name for spec in evaluator.input_specs] == ["x"]
    state = evaluator.make_state()
    assert state.names == ("acc",)
    np.testing.assert_array_equal(state.read_state("acc"), np.zeros((2, 3), np.float32))
    total = np.zeros((2, 3), np.float32)
    for x in x_values(4):
        out = evaluator.run({"x": x}, state=state)
        total = total + x @ W.T
        np.testing.assert_allclose(out["doubled"], 2 * total, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(state.read_state("acc"), total, rtol=1e-6, atol=1e-6)


def test_states_are_independent() -> None:
    evaluator = ReferenceEvaluator(accumulator_program())
    first, second = evaluator.make_state(), evaluator.make_state()
    x = x_values(1)[0]
    evaluator.run({"x": x}, state=first)
    evaluator.run({"x": x}, state=first)
    out = evaluator({"x": x}, state=second)  # __call__ takes state= too
    np.testing.assert_allclose(out["doubled"], 2 * (x @ W.T), rtol=1e-6)
    np.testing.assert_allclose(first.read_state("acc"), 2 * (x @ W.T), rtol=1e-6)
    snapshot_ = first.copy()
    evaluator.run({"x": x}, state=first)
    np.testing.assert_allclose(snapshot_.read_state("acc"), 2 * (x @ W.T), rtol=1e-6)
    np.testing.assert_allclose(first.read_state("acc"), 3 * (x @ W.T), rtol=1e-6)


def test_read_state_and_write_state_copy() -> None:
    evaluator = ReferenceEvaluator(accumulator_program(types.fp16))
    state = evaluator.make_state()
    assert state.read_state("acc").dtype == np.float16
    value = np.full((2, 3), 0.1, np.float64)
    state.write_state("acc", value)
    value[...] = 7  # the state holds its own copy
    read = state.read_state("acc")
    np.testing.assert_array_equal(read, np.full((2, 3), np.float16(0.1)))  # rounded to fp16
    read[...] = 5  # and hands out copies
    np.testing.assert_array_equal(state.read_state("acc"), np.full((2, 3), np.float16(0.1)))
    out = evaluator.run({"x": np.zeros((2, 3), np.float32)}, state=state)
    np.testing.assert_allclose(out["doubled"], 2 * np.float32(np.float16(0.1)), rtol=1e-3)
    with pytest.raises(InvalidInputError, match=r"'kv'.*not a state.*\['acc'\]"):
        state.read_state("kv")
    with pytest.raises(InvalidInputError, match=r"state 'acc'.*shape \(3, 2\).*\(2, 3\)"):
        state.write_state("acc", np.zeros((3, 2)))
    with pytest.raises(InvalidTypeError, match=r"state 'acc'.*dtype <U1"):
        state.write_state("acc", np.full((2, 3), "a"))
    assert "acc (2, 3) float16" in repr(state)


def test_fp16_state_rounds_what_is_written() -> None:
    """Core ML keeps states in fp16: a value written is rounded to fp16, whatever
    round_fp16_intermediates says (as an fp16 input is)."""
    evaluator = ReferenceEvaluator(accumulator_program(types.fp16))
    state = evaluator.make_state()
    x = x_values(1)[0]
    out = evaluator.run({"x": x}, state=state)
    step = out["step"]  # float32 arithmetic, not rounded
    np.testing.assert_array_equal(state.read_state("acc"), step.astype(np.float16))
    np.testing.assert_array_equal(out["doubled"], 2 * step.astype(np.float16).astype(np.float32))


def test_missing_foreign_and_wrong_states_are_refused() -> None:
    prog = accumulator_program()
    evaluator = ReferenceEvaluator(prog)
    x = {"x": x_values(1)[0]}
    with pytest.raises(InvalidInputError, match=r"state: missing; function 'main' has states \['acc'\].*make_state"):
        evaluator.run(x)
    with pytest.raises(InvalidInputError, match=r"state: missing.*\['acc'\]"):
        reference.run(prog, x)
    other = ReferenceEvaluator(prog).make_state()
    with pytest.raises(InvalidInputError, match=r"state: made by another evaluator.*'acc'"):
        evaluator.run(x, state=other)
    stateless = ReferenceEvaluator(mb.program(input_specs=[mb.TensorSpec(shape=(2,))])(lambda a: mb.relu(x=a)))
    with pytest.raises(InvalidInputError, match=r"another evaluator \(function 'main' with states \[\]\)"):
        evaluator.run(x, state=stateless.make_state())
    with pytest.raises(InvalidTypeError, match=r"state must be an EvaluatorState.*got dict"):
        evaluator.run(x, state={"acc": np.zeros((2, 3))})  # type: ignore[arg-type]
    state = evaluator.make_state()
    with pytest.raises(InvalidInputError, match=r"inputs: \['acc'\] are states of function 'main'"):
        evaluator.run({**x, "acc": np.zeros((2, 3))}, state=state)
    np.testing.assert_array_equal(state.read_state("acc"), np.zeros((2, 3)))  # nothing ran


def test_stateless_function_takes_an_empty_state() -> None:
    """As Core ML's state of a stateless model: runs with it are stateless."""
    evaluator = ReferenceEvaluator(mb.program(input_specs=[mb.TensorSpec(shape=(2,))])(lambda a: mb.relu(x=a)))
    state = evaluator.make_state()
    assert state.names == () and evaluator.state_specs == ()
    x = {"a": np.array([-1.0, 2.0], np.float32)}
    for _ in range(2):
        np.testing.assert_array_equal(next(iter(evaluator.run(x, state=state).values())), [0.0, 2.0])


def test_state_ops_are_supported_and_their_kernels() -> None:
    assert {"read_state", "coreml_update_state", "write_state"} <= reference.supported_op_types()
    spec = StateSpec("s", (2,), np.float16)
    buffer = np.zeros(2, np.float16)
    slot = StateSlot(spec, buffer)
    assert OP_TABLE["write_state"]({"input": slot, "data": np.array([1.5, 2.0], np.float32)}) == ()
    np.testing.assert_array_equal(buffer, [1.5, 2.0])
    read = OP_TABLE["read_state"]({"input": slot})
    assert isinstance(read, np.ndarray) and read.dtype == np.float32
    read[0] = 9  # a copy
    np.testing.assert_array_equal(buffer, [1.5, 2.0])
    updated = OP_TABLE["coreml_update_state"]({"state": slot, "value": np.array([1 / 3, 1.0], np.float32)})
    np.testing.assert_array_equal(updated, np.array([1 / 3, 1.0], np.float16).astype(np.float32))
    with pytest.raises(InvalidInputError, match=r"input: expected a state input, got ndarray"):
        OP_TABLE["read_state"]({"input": buffer})


def test_program_unchanged_after_runs() -> None:
    prog = accumulator_program()
    before = snapshot(prog)
    evaluator = ReferenceEvaluator(prog)
    state = evaluator.make_state()
    for x in x_values(3):
        evaluator.run({"x": x}, state=state)
    assert snapshot(prog) == before


def _sum_squares(rows: list[np.ndarray]) -> np.ndarray:
    result: np.ndarray = sum((r.astype(np.float64) ** 2).sum(0) for r in rows)  # type: ignore[assignment]
    return result


def test_collect_runs_samples_in_order_on_one_fresh_state() -> None:
    """The top-level samples share the call's fresh state; a list is a sequence on a fresh state
    of its own. ``w`` sees x; ``w2`` sees the accumulated state, which depends on the order and
    on where each sequence starts."""
    prog = accumulator_program()
    xs = x_values(5)
    steps = [x @ W.T for x in xs]
    stats = collect_activation_stats(prog, [{"x": x} for x in xs], progress=False)
    for name, rows in (("w", xs), ("w2", list(np.cumsum(steps, axis=0)))):
        entry = stats.get(name)
        assert entry is not None and entry.rows == 10, name
        np.testing.assert_allclose(entry.sum_squares, _sum_squares(rows), rtol=1e-5, err_msg=name)
    # [x0, x1] fresh; x2 on the call's state; [x3, x4] fresh
    nested = collect_activation_stats(
        prog, [[{"x": x} for x in xs[:2]], {"x": xs[2]}, [{"x": x} for x in xs[3:]]], progress=False
    )
    totals = [steps[0], steps[0] + steps[1], steps[2], steps[3], steps[3] + steps[4]]
    entry = nested.get("w2")
    assert entry is not None and entry.rows == 10
    np.testing.assert_allclose(entry.sum_squares, _sum_squares(totals), rtol=1e-5)
    again = collect_activation_stats(prog, [{"x": x} for x in xs], progress=False)  # a fresh state per call
    assert np.array_equal(again.get("w2").sum_squares, stats.get("w2").sum_squares)  # type: ignore[union-attr]
    with pytest.raises(InvalidTypeError, match=r"samples\[1\]: expected an input dict or a list of them.*got str"):
        collect_activation_stats(prog, [{"x": xs[0]}, "x"], progress=False)


# -- torch models converted with states= ---------------------------------------------------------

VOCAB, DIM, HEADS, MAX_LEN = 32, 16, 2, 8
HEAD_DIM = DIM // HEADS


def _torch() -> Any:
    return pytest.importorskip("torch")


def _convert(traced: Any, inputs: list[Any], states: list[Any], fp16: bool, outputs: Any = None) -> Any:
    """fp32: a PyMIL program with fp32 states; fp16: an ML Program (Core ML's fp16 states)."""
    return ct.convert(
        traced,
        inputs=inputs,
        outputs=outputs,
        states=states,
        minimum_deployment_target=IOS18,
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        convert_to="mlprogram" if fp16 else "milinternal",
        skip_model_load=True,
    )


def _state_type(name: str, shape: tuple[int, ...], fp16: bool) -> Any:
    dtype = np.float16 if fp16 else np.float32
    return ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=dtype), name=name)


def _trace(torch: Any, model: Any, example: tuple[Any, ...]) -> Any:
    """A trace of a copy: tracing runs forward, which would update the eager model's buffers."""
    return torch.jit.trace(copy.deepcopy(model), example, check_trace=False)


def _accumulator(torch: Any) -> Any:
    class Accumulator(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            # zeros: Core ML's states start at zero, whatever the buffer held when converted
            self.register_buffer("acc", torch.zeros(2, 3))

        def forward(self, x: Any) -> Any:
            self.acc.add_(self.lin(x))
            return torch.relu(self.acc * 2.0 - x)

    torch.manual_seed(0)
    return Accumulator().eval()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_accumulator_matches_torch_run_after_run(fp16: bool) -> None:
    torch = _torch()
    model = _accumulator(torch)
    converted = _convert(
        _trace(torch, model, (torch.zeros(2, 3),)),
        [ct.TensorType(name="x", shape=(2, 3))],
        [_state_type("acc", (2, 3), fp16)],
        fp16,
        outputs=[ct.TensorType(name="y", dtype=np.float32)],
    )
    evaluator = ReferenceEvaluator(converted)
    assert evaluator.state_specs == (StateSpec("acc", (2, 3), np.float16 if fp16 else np.float32),)
    state = evaluator.make_state()
    tolerance = {"rtol": 1e-2, "atol": 1e-2} if fp16 else {"rtol": 1e-5, "atol": 1e-6}
    with torch.no_grad():
        for x in x_values(5):
            expected = model(torch.from_numpy(x)).numpy()
            (got,) = evaluator.run({"x": x}, state=state).values()
            np.testing.assert_allclose(got, expected, **tolerance)
            np.testing.assert_allclose(state.read_state("acc").astype(np.float32), model.acc.numpy(), **tolerance)


#: the KV-cache layer's forms: "slice" as Core ML's LLM examples ship it (Mistral 7B): the new
#: tokens' k and v written to ``cache[:, :, end - q : end]``, attention over ``cache[:, :, :end]``
#: (coremltools 8.3's torch frontend cannot convert a slice whose end is known only at run time;
#: 9 can); "select": one token per call, written to ``cache[:, :, end - 1]`` and the filled part
#: gathered with ``index_select(arange(end))``, which both convert.
KV_FORMS = ("slice", "select")


def _require_form(form: str) -> None:
    if form == "slice" and int(ct.__version__.split(".")[0]) < 9:
        pytest.skip(f"coremltools {ct.__version__} cannot convert a torch slice with a run-time end")


def _kv_attention(torch: Any, form: str) -> Any:
    """One multi-head attention layer with a KV cache (``KV_FORMS``): ``input_ids`` [1, q] and
    ``causal_mask`` [1, 1, q, end] in, ``end`` the cache length after this call (q = 1 for
    "select")."""
    functional = torch.nn.functional

    class KVAttention(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, DIM)
            self.q = torch.nn.Linear(DIM, DIM, bias=False)
            self.k = torch.nn.Linear(DIM, DIM, bias=False)
            self.v = torch.nn.Linear(DIM, DIM, bias=False)
            self.o = torch.nn.Linear(DIM, DIM)
            self.register_buffer("k_cache", torch.zeros(1, HEADS, MAX_LEN, HEAD_DIM))
            self.register_buffer("v_cache", torch.zeros(1, HEADS, MAX_LEN, HEAD_DIM))

        def heads(self, x: Any, length: Any) -> Any:
            return x.view(1, length, HEADS, HEAD_DIM).transpose(1, 2)

        def forward(self, input_ids: Any, causal_mask: Any) -> Any:
            length = input_ids.shape[-1] if form == "slice" else 1
            end = causal_mask.shape[-1]
            past = end - length
            x = self.embed(input_ids)
            q = self.heads(self.q(x), length)
            k = self.heads(self.k(x), length)
            v = self.heads(self.v(x), length)
            if form == "slice":
                self.k_cache[:, :, past:end, :] = k
                self.v_cache[:, :, past:end, :] = v
                keys = self.k_cache[:, :, :end, :]
                values = self.v_cache[:, :, :end, :]
            else:
                self.k_cache[:, :, past] = k[:, :, 0]
                self.v_cache[:, :, past] = v[:, :, 0]
                filled = torch.arange(end)
                keys = self.k_cache.index_select(2, filled)
                values = self.v_cache.index_select(2, filled)
            attention = functional.scaled_dot_product_attention(q, keys, values, attn_mask=causal_mask)
            return self.o(attention.transpose(1, 2).reshape(1, length, DIM))

    torch.manual_seed(0)
    return KVAttention().eval()


def _kv_converted(torch: Any, model: Any, form: str, fp16: bool) -> Any:
    length: Any = ct.RangeDim(1, MAX_LEN) if form == "slice" else 1
    example = (torch.zeros(1, 2 if form == "slice" else 1, dtype=torch.int32), torch.zeros(1, 1, 2 if form == "slice" else 1, 5))
    return _convert(
        _trace(torch, model, example),
        [
            ct.TensorType(name="input_ids", shape=(1, length), dtype=np.int32),
            ct.TensorType(name="causal_mask", shape=(1, 1, length, ct.RangeDim(1, MAX_LEN)), dtype=np.float32),
        ],
        [_state_type(name, (1, HEADS, MAX_LEN, HEAD_DIM), fp16) for name in ("k_cache", "v_cache")],
        fp16,
        outputs=[ct.TensorType(name="y", dtype=np.float32)],
    )


def causal_mask(length: int, end: int) -> np.ndarray:
    """[1, 1, length, end]: query i (at position end - length + i) sees keys 0..its position."""
    positions = np.arange(end - length, end)[:, None]
    return np.where(np.arange(end)[None, :] <= positions, 0.0, -np.inf).astype(np.float32)[None, None]


def decode_sequence(prompt: int, tokens: int, seed: int, form: str) -> list[dict[str, np.ndarray]]:
    """A prompt of ``prompt`` tokens (one prefill call for "slice", token by token for
    "select"), then ``tokens`` single-token decode steps."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=prompt + tokens).astype(np.int32)
    first = prompt if form == "slice" else 1
    steps = [{"input_ids": ids[None, :first], "causal_mask": causal_mask(first, first)}]
    for end in range(first + 1, prompt + tokens + 1):
        steps.append({"input_ids": ids[None, end - 1 : end], "causal_mask": causal_mask(1, end)})
    return steps


def torch_decode(torch: Any, model: Any, steps: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Eager outputs of ``steps`` from zero caches (the model's caches hold the last state)."""
    model.k_cache.zero_()
    model.v_cache.zero_()
    with torch.no_grad():
        return [
            model(torch.from_numpy(s["input_ids"]), torch.from_numpy(s["causal_mask"])).numpy()
            for s in steps
        ]


@pytest.mark.parametrize("form", KV_FORMS)
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_kv_cache_attention_matches_torch_token_by_token(form: str, fp16: bool, tmp_path: Path) -> None:
    torch = _torch()
    _require_form(form)
    model = _kv_attention(torch, form)
    converted = _kv_converted(torch, model, form, fp16)
    program = converted if not fp16 else converted._mil_program
    before = snapshot(program)
    steps = decode_sequence(prompt=3, tokens=MAX_LEN - 3, seed=1, form=form)
    expected = torch_decode(torch, model, steps)
    evaluator = ReferenceEvaluator(converted)
    assert [spec.name for spec in evaluator.input_specs] == ["input_ids", "causal_mask"]
    assert [spec.name for spec in evaluator.state_specs] == ["k_cache", "v_cache"]
    state = evaluator.make_state()
    # fp32: float32 rounding only (measured ~1e-7); fp16: fp16 weights, casts and caches (~3e-4)
    tolerance = {"rtol": 1e-2, "atol": 2e-3} if fp16 else {"rtol": 1e-5, "atol": 1e-6}
    outputs = []
    for index, (step, want) in enumerate(zip(steps, expected)):
        got = evaluator.run(step, state=state)["y"]
        np.testing.assert_allclose(got, want, err_msg=f"step {index}", **tolerance)
        outputs.append(got)
    for name in ("k_cache", "v_cache"):
        np.testing.assert_allclose(
            state.read_state(name).astype(np.float32), getattr(model, name).numpy(), err_msg=name, **tolerance
        )
    assert snapshot(program) == before
    if fp16:  # the shipped form: saved, loaded back (write_state + read_state in the proto)
        path = tmp_path / "kv.mlpackage"
        converted.save(str(path))
        loaded = ReferenceEvaluator(path)
        loaded_state = loaded.make_state()
        for step, got in zip(steps, outputs):
            np.testing.assert_array_equal(loaded.run(step, state=loaded_state)["y"], got)
        with pytest.raises(InvalidInputError, match=r"state: made by another evaluator"):
            loaded.run(steps[0], state=state)


def test_kv_cache_step_depends_on_the_state() -> None:
    """The same decode step on a fresh state (an empty cache but for this token) differs."""
    torch = _torch()
    model = _kv_attention(torch, "select")
    evaluator = ReferenceEvaluator(_kv_converted(torch, model, "select", fp16=False))
    steps = decode_sequence(prompt=2, tokens=2, seed=2, form="select")
    state = evaluator.make_state()
    for step in steps[:-1]:
        evaluator.run(step, state=state)
    warm = evaluator.run(steps[-1], state=state)["y"]
    cold = evaluator.run(steps[-1], state=evaluator.make_state())["y"]
    assert not np.allclose(warm, cold, atol=1e-3)


def _torch_stats(torch: Any, model: Any, sequences: list[list[dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Per input channel sum of squares of each projection's input in eager decoding, every
    sequence from zero caches."""
    seen: dict[str, list[np.ndarray]] = {"q": [], "k": [], "v": [], "o": []}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda module, args, output, name=name: seen[name].append(args[0].reshape(-1, DIM).numpy())
        )
        for name in seen
    ]
    try:
        for steps in sequences:
            torch_decode(torch, model, steps)
    finally:
        for hook in hooks:
            hook.remove()
    return {f"{name}.weight": _sum_squares(rows) for name, rows in seen.items()}


def test_collect_stats_over_a_kv_cache_decode_match_torch() -> None:
    torch = _torch()
    model = _kv_attention(torch, "select")
    program = _kv_converted(torch, model, "select", fp16=False)
    one = decode_sequence(prompt=3, tokens=4, seed=3, form="select")
    two = decode_sequence(prompt=2, tokens=5, seed=4, form="select")

    stats = collect_activation_stats(program, one, progress=False)  # one sequence, one fresh state
    for name, sums in _torch_stats(torch, model, [one]).items():
        entry = stats.get(name)
        assert entry is not None and entry.rows == 3 + 4, name
        np.testing.assert_allclose(entry.sum_squares, sums, rtol=1e-4, err_msg=name)

    both = collect_activation_stats(program, [one, two], progress=False)  # a fresh state each
    for name, sums in _torch_stats(torch, model, [one, two]).items():
        entry = both.get(name)
        assert entry is not None and entry.rows == 7 + 7, name
        np.testing.assert_allclose(entry.sum_squares, sums, rtol=1e-4, err_msg=name)
