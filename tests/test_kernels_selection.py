"""Exact k-smallest selection (mil_sparsity.kernels.selection): every path against a stable sort.

The sampled path only runs on large arrays; the tests lower its size limit (and shrink its
window, to force the fallback) so hypothesis' small hostile arrays go through it too.
"""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_kernels import PROPERTY, Unchanged, ref_keys, sparsities, weights

from _reference import ref_lowest_k
from mil_sparsity.kernels import magnitude_prune_mask, selection
from mil_sparsity.kernels.selection import (
    KthKey,
    TieCarry,
    kth_key,
    lowest_k_mask,
    radix_kth_key,
    row_lowest_k_mask,
    select_with_ties,
)

KEY_DTYPES = [np.uint16, np.uint32, np.uint64]


@contextlib.contextmanager
def sampled_path(window: int | None = None) -> Iterator[None]:
    """Route every array through the sampled selection (optionally with another window), with
    5-element tie-scan sub-chunks so the tie search crosses sub-chunks on small arrays."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selection, "_SAMPLED_MIN", 1)
        patch.setattr(selection, "_TIE_CHUNK", 5)
        if window is not None:
            patch.setattr(selection, "_WINDOW", window)
        yield


def ref_kth(keys: np.ndarray, k: int) -> KthKey:
    ordered = np.sort(keys.ravel())
    key = ordered[k - 1]
    return KthKey(key=int(key), take=k - int(np.count_nonzero(ordered < key)))


@st.composite
def key_arrays(draw: st.DrawFn) -> np.ndarray:
    """1-D keys of every width: full range, few distinct values (long tie runs), or near the top."""
    dtype = np.dtype(draw(st.sampled_from(KEY_DTYPES)))
    size = draw(st.integers(1, 400))
    kind = draw(st.sampled_from(["any", "ties", "high"]))
    if kind == "any":
        return draw(hnp.arrays(dtype, size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = int(np.iinfo(dtype).max)
    if kind == "ties":
        pool = np.array(draw(st.lists(st.integers(0, top), min_size=1, max_size=3)), dtype=dtype)
    else:
        pool = np.array([top, top - 1, top >> 1, (top >> 1) + 1, 1 << 15, 0], dtype=dtype)
    return pool[rng.integers(0, pool.size, size=size)]


@PROPERTY
@given(w=weights(), s=sparsities)
def test_magnitude_prune_mask_sampled_path(w: np.ndarray, s: float) -> None:
    with Unchanged(w), sampled_path():
        mask = magnitude_prune_mask(w, s)
    assert np.array_equal(mask, ref_lowest_k(ref_keys(w), round(s * w.size)))


@PROPERTY
@given(w=weights(), s=sparsities)
def test_magnitude_prune_mask_sampled_fallback(w: np.ndarray, s: float) -> None:
    # a zero-width window misses the k-th key most of the time: the radix fallback decides
    with sampled_path(window=0):
        mask = magnitude_prune_mask(w, s)
    assert np.array_equal(mask, ref_lowest_k(ref_keys(w), round(s * w.size)))


@PROPERTY
@given(keys=key_arrays(), data=st.data())
def test_kth_key_every_path(keys: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, keys.size))
    expected = ref_kth(keys, k)
    assert kth_key(keys, k) == expected
    assert selection._partition_kth(keys, k) == expected
    assert selection._sampled_kth(keys, k) in (None, expected)
    assert radix_kth_key(lambda: (keys,), k, keys.dtype) == expected


@PROPERTY
@given(keys=key_arrays(), data=st.data())
def test_radix_and_tie_carry_over_chunks(keys: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, keys.size))
    cuts = sorted(data.draw(st.lists(st.integers(0, keys.size), max_size=6)))
    pieces = np.split(keys, cuts)
    found = radix_kth_key(lambda: iter(pieces), k, keys.dtype)
    assert found == ref_kth(keys, k)
    carry = TieCarry(found)
    chunked = np.concatenate([carry.mask(piece) for piece in pieces])
    assert np.array_equal(chunked, ref_lowest_k(keys, k))
    assert carry.ties_left == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("s", [0.001, 0.3, 0.5, 0.75, 0.999])
def test_sampled_selection_large_with_ties(dtype: Any, s: float) -> None:
    # large enough for the real sampled path; fp16 normals have long tie runs at every key
    rng = np.random.default_rng(int(s * 1000))
    w = rng.standard_normal((600, 701)).astype(dtype)
    w[rng.random(w.shape) < 0.2] = 0
    w[3, :7] = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, np.nan]
    assert w.size >= selection._SAMPLED_MIN
    keys = ref_keys(w)
    k = round(s * w.size)
    assert selection._sampled_kth(keys.ravel(), k) == ref_kth(keys, k)
    assert np.array_equal(magnitude_prune_mask(w, s), ref_lowest_k(keys, k))


def test_select_with_ties_example() -> None:
    keys = np.array([[3, 1, 3], [0, 3, 3]], np.uint16)
    # k = 4: keys 0 and 1, then the first two 3s in row-major order
    assert select_with_ties(keys, KthKey(key=3, take=2)).tolist() == [[True, True, True], [True, False, False]]
    assert lowest_k_mask(keys, 4).tolist() == [[True, True, True], [True, False, False]]


@PROPERTY
@given(
    keys=hnp.arrays(
        st.sampled_from(KEY_DTYPES),
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.integers(0, 4),
    )
    | hnp.arrays(st.sampled_from(KEY_DTYPES), hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)),
    data=st.data(),
)
def test_row_lowest_k_mask(keys: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(-1, keys.shape[1] + 1))
    mask = row_lowest_k_mask(keys, k)
    expected = np.stack([ref_lowest_k(row, min(max(k, 0), row.size)) for row in keys])
    assert np.array_equal(mask, expected)


def test_row_lowest_k_mask_long_rows() -> None:
    # rows longer than 2**16 use a 32-bit tie rank
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 3, size=(2, 70_000)).astype(np.uint32)
    mask = row_lowest_k_mask(keys, 66_000)
    assert np.array_equal(mask, np.stack([ref_lowest_k(row, 66_000) for row in keys]))


def test_kth_key_rejects_out_of_range_k() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        kth_key(np.zeros(3, np.uint16), 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("s", [0.25, 0.5, 0.5000001, 0.75])
def test_sampled_selection_half_zeros_exact_and_without_big_copies(dtype: Any, s: float) -> None:
    # half the weights are zeros: the k-th key sits in (or next to) one huge tie run
    w = np.random.default_rng(5).standard_normal((512, 1024)).astype(dtype)
    w[:, ::2] = 0
    keys = ref_keys(w)
    k = round(s * w.size)
    tracemalloc.start()
    found = selection._sampled_kth(keys.ravel(), k)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert found == ref_kth(keys, k)
    assert peak <= keys.nbytes // 2 + (1 << 20)  # bool temporaries and a small sample, no key copy
    assert np.array_equal(magnitude_prune_mask(w, s), ref_lowest_k(keys, k))
