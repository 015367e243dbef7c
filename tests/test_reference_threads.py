"""Threaded runs (mil_sparsity.reference.threads, .blas): kernels split their work among
threads only inside a run with ``threads`` > 1; elementwise chains, softmax and norms give the
same bits as one thread, matrix products (split by batch, rows or columns, with a bias) the
same values; the BLAS is pinned to one thread during the run and its count put back after;
failures in a share reach the caller; a bad ``threads`` names the argument and the value."""

from __future__ import annotations

from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from hypothesis import given
from hypothesis import strategies as st

from mil_sparsity import reference
from mil_sparsity.reference import blas, ops_elementwise, ops_nn, threads

RNG = np.random.default_rng(5)



@given(count=st.integers(0, 500), parts=st.integers(1, 12))
def test_shares_cover_every_piece_once_in_order(count: int, parts: int) -> None:
    cut = threads.shares(count, parts)
    assert [i for part in cut for i in part] == list(range(count))
    assert len(cut) <= parts and all(len(part) > 0 for part in cut)
    if cut:
        assert max(map(len, cut)) - min(map(len, cut)) <= 1


def test_kernels_split_only_inside_a_threaded_run(shared_work: list[int]) -> None:
    x = RNG.standard_normal((8, ops_elementwise.BLOCK // 2 + 5)).astype(np.float32)  # 5 blocks
    ops_elementwise.erf(x)
    with threads.running(1):
        ops_elementwise.erf(x)
    assert shared_work == []
    with threads.running(3):
        ops_elementwise.erf(x)
        assert threads.active_threads() == 3
    assert shared_work and threads.active_threads() == 1


@pytest.mark.parametrize("count", [2, 3])
def test_elementwise_softmax_and_norms_are_the_same_bits_as_one_thread(shared_work: list[int], count: int) -> None:
    x = RNG.standard_normal((6, 5, ops_elementwise.BLOCK // 4 + 3)).astype(np.float32)  # 8 blocks and a tail
    scores = RNG.standard_normal((5, 12, 64, 128)).astype(np.float32)
    hidden = RNG.standard_normal((8, 128, 768)).astype(np.float32)

    def results() -> list[np.ndarray]:
        return [
            ops_elementwise.erf(x),
            ops_elementwise._unary_blockwise(x, ops_elementwise._gelu_chain, 4),
            ops_elementwise._unary_blockwise(x, ops_elementwise._relu_chain, 0),
            ops_nn.softmax(scores, 3),
            ops_nn._normalize(hidden, (2,), 1e-5),
        ]

    alone = results()
    with threads.running(count):
        shared = results()
    for one, many in zip(alone, shared):
        np.testing.assert_array_equal(many, one)
    assert len(shared_work) >= 5 * (count - 1)


# (x shape, y shape): a batch of small products (split by batch), one tall product (rows), a
# short and wide one (columns), one that could be cut either way but is wider than tall
# (columns), a batch against one matrix (one GEMM over the leading rows)
PRODUCTS = [
    ((8, 12, 128, 64), (8, 12, 64, 128)), ((1000, 300), (300, 200)), ((3, 700), (700, 1500)),
    ((64, 300), (300, 2000)), ((4, 256, 96), (96, 160)),
]


@pytest.mark.parametrize(("x_shape", "y_shape"), PRODUCTS)
def test_split_products_equal_whole_ones(shared_work: list[int], x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
    if not blas.controls():
        pytest.skip("products are split only where the BLAS can be pinned to one thread")
    x = RNG.standard_normal(x_shape).astype(np.float32)
    y = RNG.standard_normal(y_shape).astype(np.float32)
    bias = RNG.standard_normal(y_shape[-1]).astype(np.float32)
    whole = ops_nn.matmul(x, y, bias=bias)
    with threads.running(2):
        assert threads.split_products()
        split = ops_nn.matmul(x, y, bias=bias)
        transposed = ops_nn.matmul(x, np.swapaxes(y, -1, -2).copy(), transpose_y=True)
    assert shared_work, "the product was not split"
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-4)  # the BLAS may block k differently
    np.testing.assert_allclose(transposed + bias, whole, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(whole, np.matmul(x.astype(np.float64), y) + bias, rtol=1e-4, atol=1e-3)


def test_small_products_run_whole(shared_work: list[int]) -> None:
    x = RNG.standard_normal((64, 32)).astype(np.float32)
    with threads.running(2):
        ops_nn.matmul(x, x.T)
    assert shared_work == []


def test_the_blas_runs_on_one_thread_during_a_run_and_gets_its_count_back() -> None:
    found = blas.controls()
    if not found:
        pytest.skip("no OpenBLAS whose thread count can be set")
    before = found[0].get()
    try:
        found[0].set(2)
        with threads.running(2):
            assert blas.thread_count() == 1
            with threads.running(2):  # nested: still pinned, restored once
                assert blas.thread_count() == 1
            assert blas.thread_count() == 1
        assert blas.thread_count() == 2
        assert threads.default_threads() == 2
        found[0].set(1)
        assert threads.default_threads() == 1
    finally:
        found[0].set(before)


def test_the_blas_description_names_its_file_kernels_and_thread_count() -> None:
    found = blas.controls()
    if not found:
        assert blas.describe() == "unknown BLAS"
        return
    before = found[0].get()
    try:
        found[0].set(1)
        text = blas.describe()
        assert text.startswith(found[0].path.rsplit("/", 1)[-1]) and text.endswith(", 1 thread")
        # numpy's OpenBLAS wheels tell which CPU's kernels they picked (OPENBLAS_CORETYPE)
        assert found[0].core and f", {found[0].core} kernels, " in text
    finally:
        found[0].set(before)


def test_a_failure_in_a_share_reaches_the_caller_after_every_share_ends() -> None:
    finished: list[int] = []

    def work(share: range) -> int:
        if 5 in share:
            raise RuntimeError("piece 5")
        finished.append(len(share))
        return len(share)

    with threads.running(3):
        with pytest.raises(RuntimeError, match="piece 5"):
            threads.run_shares(work, 9)
        assert sorted(finished) == [3, 3]
        assert sum(threads.run_shares(len, 9)) == 9


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (65, ValueError), (-1, ValueError), ("2", TypeError), (True, TypeError), (1.5, TypeError)])
def test_a_bad_thread_count_names_the_argument_and_the_value(value: object, error: type) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS17)
    def prog(x: Any) -> Any:
        return mb.relu(x=x)

    with pytest.raises(error) as raised:
        reference.ReferenceEvaluator(prog, threads=value)  # type: ignore[arg-type]
    message = str(raised.value)
    assert "threads" in message
    assert (type(value).__name__ if error is TypeError else str(value)) in message


def test_a_threaded_run_of_a_model_equals_a_one_thread_run(shared_work: list[int]) -> None:
    """Linear, gelu, attention (matmul, softmax), layer_norm, a 3x3 and a 1x1 conv, each large
    enough to be split."""
    hidden, ffn = 256, 1024
    w1 = (RNG.standard_normal((ffn, hidden)) * 0.05).astype(np.float32)
    w2 = (RNG.standard_normal((hidden, ffn)) * 0.05).astype(np.float32)
    conv_w = (RNG.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)
    point_w = (RNG.standard_normal((64, 32, 1, 1)) * 0.1).astype(np.float32)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(4, 128, hidden)), mb.TensorSpec(shape=(2, 16, 48, 48))],
        opset_version=ct.target.iOS17,
    )
    def prog(x: Any, image: Any) -> Any:
        h = mb.gelu(x=mb.linear(x=x, weight=w1), mode="EXACT")
        h = mb.linear(x=h, weight=w2)
        heads = mb.transpose(x=mb.reshape(x=h, shape=[4, 128, 4, 64]), perm=[0, 2, 1, 3])
        scores = mb.softmax(x=mb.matmul(x=heads, y=heads, transpose_y=True), axis=-1)
        context = mb.matmul(x=scores, y=heads)
        out = mb.layer_norm(x=mb.add(x=x, y=mb.reshape(x=mb.transpose(x=context, perm=[0, 2, 1, 3]), shape=[4, 128, hidden])), axes=[-1])
        feature = mb.conv(x=mb.conv(x=image, weight=conv_w, pad_type="same"), weight=point_w)
        return out, feature

    x = RNG.standard_normal((4, 128, hidden)).astype(np.float32)
    image = RNG.standard_normal((2, 16, 48, 48)).astype(np.float32)
    one = reference.ReferenceEvaluator(prog, threads=1).run({"x": x, "image": image})
    assert not shared_work
    two = reference.ReferenceEvaluator(prog, threads=2).run({"x": x, "image": image})
    assert len(shared_work) >= 5
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("count", [1, 2])
def test_a_batch_of_small_products_broadcast_from_the_second_operand(count: int) -> None:
    """x has a batch of one, y a batch of eight: the result has y's batch (row blocks or shares)."""
    x = RNG.standard_normal((1, 128, 64)).astype(np.float32)
    y = RNG.standard_normal((8, 64, 128)).astype(np.float32)
    with threads.running(count):
        got = ops_nn.matmul(x, y)
    assert got.shape == (8, 128, 128)
    np.testing.assert_allclose(got, np.matmul(x.astype(np.float64), y), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("layer", ["rnn", "lstm", "gru"])
def test_recurrent_step_products_are_shared_in_a_threaded_run(shared_work: list[int], layer: str) -> None:
    """A threaded run pins the BLAS to one thread, so a large step product (h @ W_hh) must be
    shared among the run's threads like any other product; the states equal a one-thread run."""
    steps, batch, inputs, hidden = 3, 8, 32, 512
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[layer]
    weight_ih = (RNG.standard_normal((gates * hidden, inputs)) * 0.1).astype(np.float32)
    weight_hh = (RNG.standard_normal((gates * hidden, hidden)) * 0.05).astype(np.float32)
    assert batch * hidden * gates * hidden >= ops_nn.SPLIT_PRODUCT
    build = {"rnn": mb.rnn, "lstm": mb.lstm, "gru": mb.gru}[layer]

    @mb.program(input_specs=[mb.TensorSpec(shape=(steps, batch, inputs))], opset_version=ct.target.iOS17)
    def prog(x: Any) -> Any:
        initial = np.zeros((batch, hidden), np.float32)
        extra = {"initial_c": initial} if layer == "lstm" else {}
        return build(x=x, initial_h=initial, weight_ih=weight_ih, weight_hh=weight_hh, output_sequence=True, **extra)

    x = RNG.standard_normal((steps, batch, inputs)).astype(np.float32)
    one = reference.ReferenceEvaluator(prog, threads=1).run({"x": x})
    assert not shared_work
    two = reference.ReferenceEvaluator(prog, threads=2).run({"x": x})
    assert len(shared_work) >= steps
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6)
