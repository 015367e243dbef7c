"""Score-based masks (mil_sparsity.kernels.scores) against independent references: per-row
lowest-k (Wanda's comparison group), and block / n:m ranking scores instead of magnitudes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_kernels import PROPERTY, Unchanged, as_f64, ref_keys, sparsities, weights

from _reference import ref_block_mask, ref_n_m_mask, ref_row_mask
from mil_sparsity.kernels import block_prune_mask, nm_prune_mask
from mil_sparsity.kernels.scores import (
    activation_scores,
    check_scores,
    score_block_prune_mask,
    score_nm_prune_mask,
    score_row_prune_mask,
)


@st.composite
def score_arrays(draw: st.DrawFn) -> np.ndarray:
    """Non-negative float scores of rank 1-4: many ties, zeros, inf, NaN, subnormals; any layout."""
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7))
    if draw(st.booleans()):
        values = st.sampled_from([0.0, 1.0, 2.0, np.inf, np.nan, float(np.finfo(dtype).smallest_subnormal)])
    else:
        values = st.floats(0, float(np.finfo(dtype).max), width=np.dtype(dtype).itemsize * 8)
    scores = draw(hnp.arrays(dtype, shape, elements=values))
    if draw(st.booleans()) and scores.ndim > 1:
        scores = np.asfortranarray(scores)
    return scores


@PROPERTY
@given(scores=score_arrays(), s=sparsities, data=st.data())
def test_score_row_prune_mask(scores: np.ndarray, s: float, data: st.DataObject) -> None:
    output_axis = data.draw(st.integers(-scores.ndim, scores.ndim - 1))
    with Unchanged(scores):
        mask = score_row_prune_mask(scores, s, output_axis)
    assert mask.shape == scores.shape and mask.dtype == np.bool_
    assert np.array_equal(mask, ref_row_mask(as_f64(scores), s, lambda index: index[output_axis]))
    rows = np.moveaxis(mask, output_axis, 0).reshape(scores.shape[output_axis], -1)
    assert set(rows.sum(axis=1).tolist()) == {round(s * rows.shape[1])}


def test_score_row_prune_mask_example() -> None:
    # linear weight [out=2, in=4]; row 0 ties 1.0 at columns 1 and 3: the lower column goes first
    scores = np.array([[3.0, 1.0, 2.0, 1.0], [np.nan, 0.0, 5.0, 4.0]], np.float32)
    assert score_row_prune_mask(scores, 0.25).tolist() == [[False, True, False, False], [False, True, False, False]]
    assert score_row_prune_mask(scores, 0.75).tolist() == [[False, True, True, True], [False, True, True, True]]
    # matmul const [in=4, out=2]: rows are the columns
    assert np.array_equal(score_row_prune_mask(scores.T.copy(), 0.25, output_axis=1), score_row_prune_mask(scores, 0.25).T)


@PROPERTY
@given(w=weights(kinds=("any", "ties", "random")), s=sparsities, data=st.data())
def test_score_block_and_nm_with_abs_scores_match_magnitude(w: np.ndarray, s: float, data: st.DataObject) -> None:
    # scores = |w| exactly: ranking scores must give the magnitude kernels' masks
    scores = np.abs(w)
    dim = data.draw(st.integers(-w.ndim, w.ndim - 1))
    block_size = data.draw(st.integers(1, 5))
    m = data.draw(st.integers(1, 10))
    n = data.draw(st.integers(0, m))
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.array_equal(
            score_block_prune_mask(scores, s, block_size, dim), block_prune_mask(w, s, block_size, dim)
        )
    assert np.array_equal(score_nm_prune_mask(scores, n, m, dim), nm_prune_mask(w, n, m, dim))


@PROPERTY
@given(scores=score_arrays(), s=sparsities, data=st.data())
def test_score_block_and_nm_against_references(scores: np.ndarray, s: float, data: st.DataObject) -> None:
    dim = data.draw(st.integers(0, scores.ndim - 1))
    m = data.draw(st.integers(1, 10))
    n = data.draw(st.integers(0, m))
    assert np.array_equal(score_nm_prune_mask(scores, n, m, dim), ref_n_m_mask(ref_keys(scores), n, m, dim))
    if scores.dtype == np.float32 and bool(np.all(np.isfinite(scores))) and float(scores.max(initial=0)) < 1e30:
        # finite scores whose squares are exact in float64: the float64 reference ranks alike
        block_size = data.draw(st.integers(1, 5))
        assert np.array_equal(
            score_block_prune_mask(scores, s, block_size, dim), ref_block_mask(scores, s, block_size, dim)
        )


@PROPERTY
@given(w=weights(max_dims=4), data=st.data())
def test_activation_scores(w: np.ndarray, data: st.DataObject) -> None:
    axis = data.draw(st.integers(-w.ndim, w.ndim - 1))
    scale = data.draw(hnp.arrays(np.float32, w.shape[axis], elements=st.floats(0, 1e3, width=32)))
    with np.errstate(invalid="ignore", over="ignore"):
        scores = activation_scores(w, scale, axis)
        shape = [1] * w.ndim
        shape[axis] = -1
        expected = np.abs(w).astype(np.float32) * scale.reshape(shape)
    assert scores.dtype == np.float32 and scores.shape == w.shape
    assert np.array_equal(scores, expected, equal_nan=True)


def test_activation_scores_grouped_scale() -> None:
    # grouped conv: 2 groups of 1 output channel, 2 input channels each, different scales
    w = np.ones((2, 2, 1, 1), np.float16)
    scale = np.array([[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]], np.float32)
    assert activation_scores(w, scale, 1).reshape(2, 2).tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    "scale, message",
    [
        (np.ones(3, np.float32), "channel_scale has 3 entries"),
        (np.array([1.0, -1.0], np.float32), "finite and >= 0"),
        (np.array([1.0, np.nan], np.float32), "finite and >= 0"),
        (np.ones((2, 2, 2), np.float32), "does not broadcast"),
    ],
)
def test_activation_scores_rejects_bad_scale(scale: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        activation_scores(np.ones((4, 2), np.float16), scale, 1)


def test_activation_scores_rejects_bad_axis() -> None:
    with pytest.raises(ValueError, match="input_axis=2"):
        activation_scores(np.ones((4, 2), np.float16), np.ones(2, np.float32), 2)


@pytest.mark.parametrize("kernel", ["row", "block", "nm"])
def test_scores_must_be_non_negative_floats(kernel: str) -> None:
    calls = {
        "row": lambda x: score_row_prune_mask(x, 0.5),
        "block": lambda x: score_block_prune_mask(x, 0.5, 2, 1),
        "nm": lambda x: score_nm_prune_mask(x, 1, 2, 1),
    }
    with pytest.raises(ValueError, match="scores must be >= 0"):
        calls[kernel](np.array([[1.0, -0.5]], np.float32))
    with pytest.raises(TypeError, match="scores must be float16, float32 or float64"):
        calls[kernel](np.array([[1, 2]], np.int32))
    check_scores(np.array([[0.0, np.nan, np.inf]], np.float32))  # NaN and inf are allowed
