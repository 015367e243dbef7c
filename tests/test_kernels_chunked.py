"""Chunked kernels (mil_sparsity.kernels.chunked): bit-identical to the whole-array kernels for
every pattern, chunk size and hostile value, and the chunk layout's alignment rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_kernels import PROPERTY, as_f64, bits, long_axis_shapes, sparsities, weights

from mil_sparsity.kernels import (
    block_prune_mask,
    magnitude_prune_mask,
    nm_prune_mask,
    pack_mask_bits,
    pack_sparse,
    threshold_prune_mask,
)
from mil_sparsity.kernels.chunked import (
    NM,
    Block,
    ChunkedPruner,
    Magnitude,
    MaskBitPacker,
    Pack,
    Pattern,
    RowLowest,
    Threshold,
    chunk_bounds,
)
from mil_sparsity.kernels.scores import score_row_prune_mask

max_elements = st.one_of(st.integers(1, 40), st.integers(41, 1200))


def whole_prune_mask(w: np.ndarray, pattern: Pattern, ranked: np.ndarray) -> np.ndarray | None:
    """The whole-array kernel's prune mask for ``pattern`` (None: nothing pruned)."""
    if isinstance(pattern, Threshold):
        return threshold_prune_mask(w, pattern.threshold)
    if isinstance(pattern, Magnitude):
        return magnitude_prune_mask(ranked, pattern.target_sparsity)
    if isinstance(pattern, Block):
        return block_prune_mask(ranked, pattern.target_sparsity, pattern.block_size, pattern.dim)
    if isinstance(pattern, NM):
        return nm_prune_mask(ranked, pattern.n, pattern.m, pattern.dim)
    if isinstance(pattern, RowLowest):
        return score_row_prune_mask(ranked, pattern.target_sparsity, pattern.output_axis)
    return None


def run_chunked(
    w: np.ndarray, pattern: Pattern, limit: int, scores: np.ndarray | None = None
) -> tuple[Any, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(counts, packed mask bytes, concatenated values, chunk ranges) of a chunked run."""
    flat = np.ascontiguousarray(w).reshape(-1)
    flat_scores = None if scores is None else np.ascontiguousarray(scores).reshape(-1)
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return flat[start:stop].copy()

    pruner = ChunkedPruner(
        w.shape,
        w.dtype,
        pattern,
        read,
        limit,
        read_scores=None if flat_scores is None else (lambda a, b: flat_scores[a:b].copy()),
        scores_dtype=np.float32 if scores is None else scores.dtype,
    )
    counts = pruner.count()
    packer = MaskBitPacker()
    mask_bytes, values, ranges = [], [], []
    for chunk in pruner.chunks():
        mask_bytes.append(pruner_bits := packer.push(chunk.mask))
        assert pruner_bits.dtype == np.uint8
        values.append(chunk.values)
        ranges.append((chunk.start, chunk.stop))
    mask_bytes.append(packer.finish())
    assert set(reads) <= set(pruner.bounds)
    return counts, np.concatenate(mask_bytes), np.concatenate(values) if values else flat[:0], ranges


def check_identical(w: np.ndarray, pattern: Pattern, limit: int, scores: np.ndarray | None = None) -> None:
    ranked = w if scores is None else scores
    expected = pack_sparse(w, whole_prune_mask(w, pattern, ranked))
    counts, mask_bytes, values, ranges = run_chunked(w, pattern, limit, scores)
    assert counts.size == w.size
    assert counts.nonzero_count == expected.nonzero_data.size
    assert counts.mask_nbytes == (w.size + 7) // 8
    assert np.array_equal(mask_bytes, pack_mask_bits(expected.mask))
    assert values.dtype == w.dtype
    assert np.array_equal(bits(values), bits(expected.nonzero_data))
    assert ranges == chunk_bounds(w.shape, pattern, limit)


# ---- every pattern -------------------------------------------------------------------------


@PROPERTY
@given(w=weights(), t=st.sampled_from([0.0, 0.5, 1.0, 1e-30, 1e30, np.inf]), limit=max_elements)
def test_threshold_chunked(w: np.ndarray, t: float, limit: int) -> None:
    check_identical(w, Threshold(t), limit)


@PROPERTY
@given(w=weights(), limit=max_elements)
def test_pack_chunked(w: np.ndarray, limit: int) -> None:
    check_identical(w, Pack(), limit)


@PROPERTY
@given(w=weights(), s=sparsities, limit=max_elements)
def test_magnitude_chunked(w: np.ndarray, s: float, limit: int) -> None:
    check_identical(w, Magnitude(s), limit)


@st.composite
def dim_args(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    long_axis = draw(st.booleans())
    w = draw(weights(shape_strategy=long_axis_shapes() if long_axis else None))
    dim = int(np.argmax(w.shape)) if long_axis else draw(st.integers(0, w.ndim - 1))
    return w, dim - draw(st.sampled_from([0, w.ndim]))


@PROPERTY
@given(args=dim_args(), s=sparsities, block_size=st.integers(1, 7), limit=max_elements)
def test_block_chunked(args: tuple[np.ndarray, int], s: float, block_size: int, limit: int) -> None:
    w, dim = args
    with np.errstate(over="ignore", invalid="ignore"):
        check_identical(w, Block(s, block_size, dim), limit)


@PROPERTY
@given(args=dim_args(), data=st.data(), limit=max_elements)
def test_nm_chunked(args: tuple[np.ndarray, int], data: st.DataObject, limit: int) -> None:
    w, dim = args
    m = data.draw(st.integers(1, 12))
    check_identical(w, NM(data.draw(st.integers(0, m)), m, dim), limit)


# ---- score variants ------------------------------------------------------------------------


@st.composite
def weight_and_scores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A weight and float scores of its shape: non-negative, with ties, zeros, inf and NaN."""
    w = draw(weights())
    kind = draw(st.sampled_from(["abs", "ties", "random"]))
    with np.errstate(invalid="ignore", over="ignore"):
        if kind == "abs":
            scores = np.abs(as_f64(w)).astype(np.float32)
        elif kind == "ties":
            pool = np.array([0.0, 1.0, 2.0, np.inf, np.nan], np.float32)
            scores = pool[np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 5, w.shape)]
        else:
            scores = draw(hnp.arrays(np.float32, w.shape, elements=st.floats(0, 1e6, width=32)))
    return w, np.ascontiguousarray(scores)


@PROPERTY
@given(ws=weight_and_scores(), s=sparsities, limit=max_elements, data=st.data())
def test_scored_magnitude_and_rows_chunked(
    ws: tuple[np.ndarray, np.ndarray], s: float, limit: int, data: st.DataObject
) -> None:
    w, scores = ws
    check_identical(w, Magnitude(s), limit, scores)
    # leading output axis: whole rows per chunk; any other: rows spread over the chunks
    check_identical(w, RowLowest(s), limit, scores)
    check_identical(w, RowLowest(s, data.draw(st.integers(-w.ndim, w.ndim - 1))), limit, scores)


@PROPERTY
@given(w=weights(kinds=("any", "ties")), s=sparsities, limit=max_elements, data=st.data())
def test_rows_chunked_on_hostile_weights(w: np.ndarray, s: float, limit: int, data: st.DataObject) -> None:
    # the weights' own magnitudes as scores (fp16/fp32/fp64 keys: 2, 4 or 8 radix digits)
    scores = np.ascontiguousarray(np.abs(w))
    check_identical(w, RowLowest(s, data.draw(st.integers(0, w.ndim - 1))), limit, scores)


@PROPERTY
@given(ws=weight_and_scores(), data=st.data(), limit=max_elements)
def test_scored_block_and_nm_chunked(ws: tuple[np.ndarray, np.ndarray], data: st.DataObject, limit: int) -> None:
    w, scores = ws
    dim = data.draw(st.integers(-w.ndim, w.ndim - 1))
    m = data.draw(st.integers(1, 9))
    with np.errstate(over="ignore", invalid="ignore"):
        check_identical(w, Block(data.draw(sparsities), data.draw(st.integers(1, 5)), dim), limit, scores)
    check_identical(w, NM(data.draw(st.integers(0, m)), m, dim), limit, scores)


def test_scores_rejected_for_elementwise_patterns() -> None:
    with pytest.raises(TypeError, match="Threshold takes no scores"):
        ChunkedPruner((2, 2), np.float16, Threshold(0.5), lambda a, b: np.zeros(b - a), 4, read_scores=lambda a, b: np.zeros(b - a))


def test_chunks_before_count_rejected() -> None:
    pruner = ChunkedPruner((2, 2), np.float16, Pack(), lambda a, b: np.zeros(b - a, np.float16), 4)
    with pytest.raises(ValueError, match="count"):
        next(pruner.chunks())


@pytest.mark.parametrize(
    "pattern, message",
    [
        (Magnitude(1.5), "target_sparsity"),
        (Block(0.5, 0, 0), "block_size"),
        (NM(3, 2, 0), "n:m"),
        (NM(1, 2, 5), "dim=5"),
        (Threshold(float("nan")), "threshold"),
        (RowLowest(0.5, 2), "output_axis=2"),
    ],
)
def test_bad_patterns_rejected(pattern: Pattern, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkedPruner((4, 4), np.float16, pattern, lambda a, b: np.zeros(b - a, np.float16), 8)


def test_large_fp16_magnitude_chunked() -> None:
    # long tie runs across many chunks, exact count, fp16 keys (one radix level)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((300, 1001)).astype(np.float16)
    w[rng.random(w.shape) < 0.3] = 0
    check_identical(w, Magnitude(0.6), 4099)
    check_identical(w.astype(np.float32), Magnitude(0.6), 65536)


# ---- layout and packer ---------------------------------------------------------------------


@PROPERTY
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9),
    data=st.data(),
    limit=max_elements,
)
def test_chunk_bounds_layout(shape: tuple[int, ...], data: st.DataObject, limit: int) -> None:
    size = int(np.prod(shape))
    dim = data.draw(st.integers(0, len(shape) - 1))
    group = data.draw(st.integers(1, 6))
    pattern = data.draw(
        st.sampled_from([Pack(), Magnitude(0.5), Block(0.5, group, dim), NM(1, group, dim), RowLowest(0.5)])
        | st.just(RowLowest(0.5, dim)).filter(lambda _: dim > 0)
    )
    bounds = chunk_bounds(shape, pattern, limit)
    starts = [start for start, _ in bounds]
    assert starts == sorted(starts)
    assert [stop for _, stop in bounds[:-1]] == starts[1:]
    assert (bounds[0][0], bounds[-1][1]) == (0, size) if size else bounds == []
    if isinstance(pattern, (Pack, Magnitude)):
        assert all(start % 8 == 0 and stop - start <= max(8, limit) for start, stop in bounds)
    elif isinstance(pattern, RowLowest) and pattern.output_axis == 0 and size:
        row = size // shape[0]
        assert all(start % row == 0 and stop - start <= max(row, limit) for start, stop in bounds)
    elif size:
        post = int(np.prod(shape[dim + 1 :]))
        slice_len = shape[dim] * post
        unit = (1 if isinstance(pattern, RowLowest) else group) * post
        for start, stop in bounds:
            inside = start % slice_len
            assert inside % unit == 0
            assert stop - start <= max(limit, unit) or stop - start == slice_len
            assert stop - inside <= start - inside + slice_len or inside == 0


def test_chunk_bounds_rejects_bad_limit() -> None:
    with pytest.raises(ValueError, match="max_elements"):
        chunk_bounds((4,), Pack(), 0)


@PROPERTY
@given(mask=hnp.arrays(np.bool_, st.integers(0, 100)), data=st.data())
def test_mask_bit_packer_any_split(mask: np.ndarray, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, mask.size), max_size=8)))
    packer = MaskBitPacker()
    pieces = [packer.push(piece) for piece in np.split(mask, cuts)]
    packed = np.concatenate(pieces + [packer.finish()])
    assert np.array_equal(packed, pack_mask_bits(mask))


@pytest.mark.parametrize("returned", [np.zeros(3, np.float16), np.zeros(4, np.float32)])
def test_reader_returning_wrong_chunk_rejected(returned: np.ndarray) -> None:
    pruner = ChunkedPruner((2, 2), np.float16, Pack(), lambda a, b: returned, 8)
    with pytest.raises(ValueError, match=r"read\(0, 4\) returned"):
        pruner.count()
