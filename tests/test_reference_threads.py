"""Kernels that share work among threads (mil_sparsity.reference.threads) give the same bits
for every thread count; the shares cover the work once; a bad MIL_SPARSITY_THREADS is named."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mil_sparsity.reference import ops_elementwise, ops_nn, threads

RNG = np.random.default_rng(5)


@given(count=st.integers(0, 500), wanted=st.integers(1, 12))
def test_shares_cover_every_piece_once_in_order(count: int, wanted: int) -> None:
    parts = threads.shares(count, wanted)
    assert [i for part in parts for i in part] == list(range(count))
    assert len(parts) <= wanted and all(len(part) > 0 for part in parts)
    if parts:
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("count", ["1", "2", "3", "7"])
def test_gelu_and_batched_products_are_the_same_bits_for_every_thread_count(monkeypatch: pytest.MonkeyPatch, count: str) -> None:
    x = RNG.standard_normal((6, 5, ops_elementwise.BLOCK // 4 + 3)).astype(np.float32)  # 8 blocks and a tail
    scores_x = RNG.standard_normal((5, 12, 128, 64)).astype(np.float32)
    scores_y = RNG.standard_normal((5, 12, 64, 128)).astype(np.float32)
    monkeypatch.setenv("MIL_SPARSITY_THREADS", "1")
    gelu_one = ops_elementwise._unary_blockwise(x, ops_elementwise._gelu_chain, 4)
    product_one = ops_nn.matmul(scores_x, scores_y)
    monkeypatch.setenv("MIL_SPARSITY_THREADS", count)
    np.testing.assert_array_equal(ops_elementwise._unary_blockwise(x, ops_elementwise._gelu_chain, 4), gelu_one)
    np.testing.assert_array_equal(ops_nn.matmul(scores_x, scores_y), product_one)
    np.testing.assert_allclose(product_one, np.matmul(scores_x.astype(np.float64), scores_y), rtol=1e-4, atol=1e-3)


def test_a_failure_in_a_thread_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIL_SPARSITY_THREADS", "3")

    def work(share: range) -> int:
        if 5 in share:
            raise RuntimeError("piece 5")
        return len(share)

    with pytest.raises(RuntimeError, match="piece 5"):
        threads.run_shares(work, 9)
    assert sum(threads.run_shares(lambda share: len(share), 9)) == 9


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_names_the_variable(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("MIL_SPARSITY_THREADS", text)
    with pytest.raises(ValueError) as raised:
        threads.thread_count()
    assert "MIL_SPARSITY_THREADS" in str(raised.value) and repr(text) in str(raised.value)
