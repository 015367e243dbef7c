"""The kept-value palettization kernel (mil_sparsity.kernels.palettize) alone: the table's
shape and order, nearest-entry indices, exactness for few distinct values, Lloyd's fixed point
and its improvement on the starting table, the joint byte count, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_kernels import PROPERTY

from mil_sparsity.kernels.palettize import (
    PALETTE_NBITS,
    joint_nbytes,
    kept_value_lut,
    kmeans_1d,
    nearest_entry,
    palettized_kept_values,
)


@st.composite
def pruned_weights(draw: st.DrawFn) -> np.ndarray:
    """Finite float16/float32 weights of rank 1-3 with zeros (and -0.0) among the values."""
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    values = st.floats(-1e4, 1e4, allow_nan=False, width=np.dtype(dtype).itemsize * 8)
    weight = draw(hnp.arrays(dtype, shape, elements=values))
    zeros = draw(hnp.arrays(np.bool_, shape))
    weight[zeros] = draw(st.sampled_from([0.0, -0.0]))
    return weight


def sse(values: np.ndarray, lut: np.ndarray) -> float:
    chosen = lut.astype(np.float64)[nearest_entry(values, lut)]
    return float(np.sum((values.astype(np.float64).reshape(-1) - chosen) ** 2))


@PROPERTY
@given(weight=pruned_weights(), nbits=st.sampled_from(PALETTE_NBITS))
def test_the_table_is_ascending_and_every_index_is_the_nearest_entry(weight: np.ndarray, nbits: int) -> None:
    lut, indices = kept_value_lut(weight, nbits)
    assert lut.shape == (1 << nbits,) and lut.dtype == weight.dtype
    assert indices.shape == (weight.size,) and indices.dtype == np.uint8
    assert np.all(np.diff(lut.astype(np.float64)) >= 0)
    distances = np.abs(weight.astype(np.float64).reshape(-1, 1) - lut.astype(np.float64).reshape(1, -1))
    chosen = distances[np.arange(weight.size), indices]
    np.testing.assert_allclose(chosen, distances.min(axis=1), rtol=1e-6, atol=1e-6)


@PROPERTY
@given(weight=pruned_weights(), nbits=st.sampled_from(PALETTE_NBITS))
def test_zeros_stay_zero_and_kept_values_take_table_entries(weight: np.ndarray, nbits: int) -> None:
    mask = weight != 0
    palettized = palettized_kept_values(weight, nbits, mask)
    assert palettized.dtype == weight.dtype and palettized.shape == weight.shape
    assert np.all(palettized[~mask] == 0)
    lut, _ = kept_value_lut(weight, nbits)
    assert np.isin(palettized[mask], lut).all()


@PROPERTY
@given(data=st.data(), nbits=st.sampled_from(PALETTE_NBITS))
def test_at_most_two_to_the_nbits_distinct_kept_values_come_back_exactly(data: st.DataObject, nbits: int) -> None:
    distinct = data.draw(st.lists(st.floats(-100, 100, width=16).filter(lambda v: v != 0), min_size=1, max_size=1 << nbits, unique=True))
    picks = data.draw(hnp.arrays(np.intp, data.draw(st.integers(1, 60)), elements=st.integers(0, len(distinct) - 1)))
    weight = np.asarray(distinct, dtype=np.float16)[picks]
    weight[data.draw(hnp.arrays(np.bool_, weight.shape))] = 0
    np.testing.assert_array_equal(palettized_kept_values(weight, nbits, weight != 0), weight)


@PROPERTY
@given(values=hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(-10, 10, width=32)), nbits=st.sampled_from((1, 2, 3, 4)))
def test_lloyd_ends_at_a_fixed_point_no_worse_than_its_start(values: np.ndarray, nbits: int) -> None:
    start = kmeans_1d(values, 1 << nbits, max_iterations=0)
    fitted = kmeans_1d(values, 1 << nbits, max_iterations=10_000)
    assert sse(values, fitted) <= sse(values, start) * (1 + 1e-6) + 1e-9
    # at the fixed point every non-empty cluster's centroid is its members' mean
    members = nearest_entry(values, fitted)
    for entry in np.unique(members):
        np.testing.assert_allclose(fitted[entry], values[members == entry].astype(np.float64).mean(), rtol=1e-4, atol=1e-5)


def test_the_table_fits_the_kept_values_better_than_a_uniform_grid() -> None:
    """Gaussian kept values (a pruned weight's shape): k-means puts entries where values are."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal(20_000).astype(np.float16)
    weight[np.abs(weight) < 0.6] = 0  # magnitude pruning: a gap around zero
    kept = weight[weight != 0]
    lut, _ = kept_value_lut(weight, 3)
    grid = np.linspace(kept.min(), kept.max(), 8).astype(np.float16)
    assert sse(kept, lut) < 0.5 * sse(kept, grid)
    assert not np.any(np.abs(lut.astype(np.float32)) < 0.59)  # no entry spent inside the gap


def test_a_weight_with_no_kept_value_gets_a_zero_table() -> None:
    lut, indices = kept_value_lut(np.zeros((3, 4), np.float16), 2)
    assert np.all(lut == 0) and np.all(indices < 4)


def test_joint_bytes_count_indices_mask_and_table() -> None:
    # 1000 kept of 4096 at 4 bits: 500 bytes of indices, 512 of mask, 16 fp16 entries
    assert joint_nbytes(1000, 4096, 4, 2) == 500 + 512 + 32
    assert joint_nbytes(3, 9, 3, 4) == 2 + 2 + 32


@pytest.mark.parametrize(
    "weight, nbits, words",
    [
        (np.ones(4, np.float32), 5, ["nbits", "(1, 2, 3, 4, 6, 8)", "5"]),
        (np.ones(4, np.float32), True, ["nbits", "True"]),
        (np.ones(4, np.int8), 4, ["float", "int8"]),
        (np.array([1.0, np.nan], np.float32), 4, ["finite"]),
        (np.array([1.0, np.inf], np.float32), 4, ["finite"]),
    ],
)
def test_bad_input_names_the_problem(weight: np.ndarray, nbits: object, words: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        kept_value_lut(weight, nbits)  # type: ignore[arg-type]
    for word in words:
        assert word in str(raised.value)


def test_a_mask_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="mask"):
        palettized_kept_values(np.ones((2, 3), np.float32), 2, np.ones(6, bool))
