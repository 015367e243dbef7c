"""Exact "k smallest keys" selection, shared by every pattern that prunes a fixed count.

Keys are unsigned integers (magnitude keys of weights or of non-negative scores, see
:mod:`mil_sparsity.kernels.masks`), so "the k smallest" is one total order once ties are broken
by position: among equal keys the lower row-major index is selected first. A selection is then
fully described by a :class:`KthKey`: the k-th smallest key ``key`` and how many of the keys
equal to it are taken (``take``, the first ones in row-major order). Every caller turns a
``KthKey`` into a mask the same way (:func:`select_with_ties`, or chunk by chunk with
:class:`TieCarry`), so whole-array, chunked and per-row selections agree bit for bit.

Ways to find the ``KthKey``:

* :func:`kth_key` (one array in memory): a fixed-seed random sample bounds the k-th key between
  two sample keys (Floyd-Rivest style), and two counting passes check the bounds. A narrow key
  range between them (always for fp16 keys: ~100 key values) is then binary-searched by
  counting probes, ``count(keys <= v)``, one compare + popcount pass each (~7 for fp16); a wide
  range (fp32 keys) by extracting the ~3% of keys inside the bounds and partitioning them (or by
  probes again when a long tie run puts over 1/8 of the keys inside). No partition or copy of
  the whole array. Falls back to the radix selection when the bounds miss
  (probability ~1e-9 per call on any data; the result is exact either way).
* :func:`radix_kth_key` (a re-readable sequence of chunks): most-significant-digit radix
  selection with 16-bit digits. Each level is one pass over the chunks that histograms the next
  digit of the keys matching the prefix found so far: one level for fp16 keys, two for fp32,
  four for fp64. Memory: one 65536-bin histogram plus one chunk's temporaries.
* :func:`row_kth_keys` (a 2-D array, one selection per row): ``np.partition`` along the rows,
  ties ranked by a narrow cumulative count (:func:`row_select_with_ties`).
* :func:`spread_row_kth_keys` (rows spread over chunks, e.g. a ``[in, out]`` weight read in
  row-major chunks with one selection per output column): per-row radix selection with 8-bit
  digits, masks by :class:`RowTieCarry`.
"""

from __future__ import annotations

from typing import Any, Callable, Final, Iterable

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError

BoolArray = NDArray[np.bool_]
KeyArray = NDArray[np.unsignedinteger[Any]]

# Sample size of the sampled selection and the half-width of its rank window, in samples.
# With 2**15 samples the k-th key's rank in the sample has a standard deviation below 91, so a
# window of +-6 sigma misses with probability ~1e-9; the keys inside it are ~3.3% of the array.
_SAMPLE: Final = 1 << 15
_WINDOW: Final = 544
# 16-bit keys, and wider key ranges narrower than this, are searched by counting probes (at
# most 16, resp. 12); other ranges by extracting and partitioning the keys inside them, unless
# more than 1/_CANDIDATES_MAX_SHARE of the keys are inside (then probes again: no big copy).
_PROBE_RANGE: Final = 1 << 12
_CANDIDATES_MAX_SHARE: Final = 8
# Below this many keys a plain partition of a copy beats sampling.
_SAMPLED_MIN: Final = 1 << 18
# Fixed seed: the sample only affects speed, never the result.
_SEED: Final = 0x5EED_C0DE
# Chunk length used to locate the n-th tie without an index array of the tensor's size.
_TIE_CHUNK: Final = 1 << 18

_DIGIT_BITS: Final = 16
_DIGIT_BINS: Final = 1 << _DIGIT_BITS


@attrs.frozen
class KthKey:
    """A selection of exactly ``count_below + take`` keys: every key below ``key`` and the
    first ``take`` keys equal to ``key`` in row-major order."""

    key: int
    take: int


def target_count(target_sparsity: float, total: int) -> int:
    """``round(target_sparsity * total)`` with Python's round-half-to-even, clipped to range."""
    if not 0.0 <= target_sparsity <= 1.0:
        raise InvalidInputError(f"target_sparsity must be in [0, 1], got {target_sparsity!r}")
    return min(total, max(0, round(target_sparsity * total)))


# ---- whole array ---------------------------------------------------------------------------


def _partition_kth(flat: KeyArray, k: int, below: int = 0, in_place: bool = False) -> KthKey:
    """The ``k``-th smallest of ``flat`` (1-based) by one partition (of a copy unless
    ``in_place``), plus ``below`` smaller keys not in ``flat``."""
    scratch = flat if in_place else flat.copy()
    scratch.partition(k - 1)
    key = scratch[k - 1]
    smaller = below + int(np.count_nonzero(scratch[: k - 1] < key))
    return KthKey(key=int(key), take=below + k - smaller)


def _count_search(flat: KeyArray, k: int, low: int, high: int, below_low: int) -> KthKey:
    """Binary search of the key value: the smallest ``v`` in [low, high] with count(<= v) >= k.

    Needs ``count(< low) == below_low < k <= count(<= high)``. Each probe is one compare and one
    count over the keys (into a reused buffer); ``count(< v)`` falls out of the last probe below.
    """
    scratch = np.empty(flat.shape, dtype=np.bool_)
    below = below_low
    while low < high:
        middle = (low + high) // 2
        at_most = int(np.count_nonzero(np.less_equal(flat, middle, out=scratch)))
        if at_most >= k:
            high = middle
        else:
            low, below = middle + 1, at_most
    return KthKey(key=low, take=k - below)


def _sampled_kth(flat: KeyArray, k: int) -> KthKey | None:
    """Bound the k-th key by a random sample, then search only between the bounds.

    A narrow key range (always for fp16 keys) is searched by counting probes; a wide one
    (fp32/fp64 keys) by extracting the keys inside the bounds and partitioning them. Returns
    None when the k-th key falls outside the bounds (the caller falls back).
    """
    rng = np.random.default_rng(_SEED)
    sample = np.sort(flat[rng.integers(0, flat.size, size=_SAMPLE)])
    rank = k * _SAMPLE // flat.size
    low_index, high_index = rank - _WINDOW, rank + _WINDOW
    low = int(sample[low_index]) if low_index > 0 else 0
    high = int(sample[high_index]) if high_index < _SAMPLE else int(np.iinfo(flat.dtype).max)
    below_low = int(np.count_nonzero(flat < low)) if low > 0 else 0
    if below_low >= k or (high_index < _SAMPLE and int(np.count_nonzero(flat <= high)) < k):
        return None
    if flat.dtype.itemsize <= 2 or high - low < _PROBE_RANGE:
        return _count_search(flat, k, low, high, below_low)
    inside: BoolArray = np.greater_equal(flat, low)
    inside &= np.less_equal(flat, high)
    if int(np.count_nonzero(inside)) > flat.size // _CANDIDATES_MAX_SHARE:
        # a long run of equal keys inside the bounds (e.g. many zeros): probes need no copy
        del inside
        return _count_search(flat, k, low, high, below_low)
    candidates = np.compress(inside, flat)
    del inside
    return _partition_kth(candidates, k - below_low, below_low, in_place=True)


def kth_key(keys: KeyArray, k: int) -> KthKey:
    """The selection of the ``k`` smallest of ``keys`` (1 <= k <= keys.size), any shape."""
    flat = keys.reshape(-1)
    if not 1 <= k <= flat.size:
        raise InvalidInputError(f"k must be in [1, {flat.size}], got {k}")
    if flat.size < _SAMPLED_MIN:
        return _partition_kth(flat, k)
    found = _sampled_kth(flat, k)
    if found is None:
        found = radix_kth_key(lambda: (flat,), k, flat.dtype)
    return found


def chunk_counts(flags: BoolArray, chunk: int) -> NDArray[np.intp]:
    """Number of Trues in each ``chunk``-long slice of a 1-D bool array (last one may be short).

    One flat ``count_nonzero`` per slice (a loop over chunks, not elements): the flat count is
    a vectorised popcount, ~20x faster than ``count_nonzero(axis=1)``, which sums in intp.
    """
    counts = [np.count_nonzero(flags[start : start + chunk]) for start in range(0, flags.size, chunk)]
    return np.array(counts, dtype=np.intp)


class TieCarry:
    """Turns a :class:`KthKey` into masks over consecutive row-major chunks of the keys.

    ``mask(chunk)`` is True below the key and at the first ties, counting the ties already
    taken in earlier chunks; a whole array is the single-chunk case.
    """

    def __init__(self, selection: KthKey) -> None:
        self.key = selection.key
        self.ties_left = selection.take

    def mask(self, keys: KeyArray) -> BoolArray:
        """One compare over the chunk plus a fix-up of the ties on the shorter side of the last
        tie taken: ``< key`` then OR the ties before it, or ``<= key`` then clear the ties
        after it. The last tie is found by scanning sub-chunks only as far as it lies."""
        flat = keys.reshape(-1)
        key = flat.dtype.type(self.key)
        if self.ties_left == 0:
            selected: BoolArray = flat < key
        else:
            end, found = _end_of_ties(flat, key, self.ties_left)
            self.ties_left -= found
            if 2 * end <= flat.size:
                selected = flat < key
                selected[:end] |= flat[:end] == key
            else:
                selected = flat <= key
                selected[end:] &= flat[end:] != key
        result: BoolArray = selected.reshape(keys.shape)
        return result


def _end_of_ties(flat: KeyArray, key: Any, wanted: int) -> tuple[int, int]:
    """(index just past the ``wanted``-th key equal to ``key``, ties up to there), scanning
    sub-chunks from the start; (size, all ties) when there are fewer than ``wanted``."""
    seen = 0
    for start in range(0, flat.size, _TIE_CHUNK):
        ties = flat[start : start + _TIE_CHUNK] == key
        count = int(np.count_nonzero(ties))
        if seen + count >= wanted:
            return start + int(np.flatnonzero(ties)[wanted - seen - 1]) + 1, wanted
        seen += count
    return flat.size, seen


def select_with_ties(keys: KeyArray, selection: KthKey) -> BoolArray:
    """Mask of ``keys``' shape selecting what ``selection`` describes (whole array)."""
    return TieCarry(selection).mask(keys)


def lowest_k_mask(keys: KeyArray, k: int) -> BoolArray:
    """True at exactly ``k`` positions: the smallest keys, ties taken in row-major order."""
    if k <= 0:
        return np.zeros(keys.shape, dtype=np.bool_)
    if k >= keys.size:
        return np.ones(keys.shape, dtype=np.bool_)
    return select_with_ties(keys, kth_key(keys, k))


# ---- chunks ----------------------------------------------------------------------------------


def radix_kth_key(
    key_chunks: Callable[[], Iterable[KeyArray]], k: int, key_dtype: np.dtype[Any] | type
) -> KthKey:
    """The selection of the ``k`` smallest keys of a sequence of chunks, read once per level.

    ``key_chunks()`` must yield the same chunks (any shapes, row-major order does not matter
    for the key; ties are resolved later by :class:`TieCarry`) every time it is called.
    Level by level from the most significant 16-bit digit: histogram the digit of the keys whose
    higher digits equal the prefix found so far, and walk the cumulative counts to the bin
    holding the remaining rank.
    """
    bits = np.dtype(key_dtype).itemsize * 8
    levels = max(1, bits // _DIGIT_BITS)
    prefix = 0
    remaining = k
    for level in range(levels):
        shift = bits - _DIGIT_BITS * (level + 1)
        histogram = np.zeros(_DIGIT_BINS, dtype=np.int64)
        for chunk in key_chunks():
            flat = chunk.reshape(-1)
            if level:
                flat = flat[(flat >> flat.dtype.type(shift + _DIGIT_BITS)) == prefix]
            digits = (flat >> flat.dtype.type(shift)).astype(np.uint16) if shift else flat.astype(np.uint16)
            histogram += np.bincount(digits, minlength=_DIGIT_BINS)
        cumulative = np.cumsum(histogram)
        digit = int(np.searchsorted(cumulative, remaining))
        remaining -= int(cumulative[digit] - histogram[digit])
        prefix = (prefix << _DIGIT_BITS) | digit
    return KthKey(key=prefix, take=remaining)


# ---- rows --------------------------------------------------------------------------------------


def row_kth_keys(keys: KeyArray, k: int) -> tuple[KeyArray, NDArray[Any]]:
    """Per row of a 2-D key array: the k-th smallest key (column) and how many ties to take."""
    kth = np.partition(keys, k - 1, axis=1)[:, k - 1 : k].copy()
    count_dtype = np.uint16 if keys.shape[1] < _DIGIT_BINS else np.uint32
    below = np.count_nonzero(keys < kth, axis=1, keepdims=True).astype(count_dtype)
    take = np.subtract(count_dtype(k), below, dtype=count_dtype)
    return kth, take


def row_select_with_ties(keys: KeyArray, kth: KeyArray, take: NDArray[Any]) -> BoolArray:
    """Per row: keys below the row's ``kth`` and its first ``take`` ties (a narrow cumulative
    count along the row ranks the ties)."""
    selected: BoolArray = keys < kth
    ties = keys == kth
    tie_rank = np.cumsum(ties, axis=1, dtype=take.dtype)
    selected |= ties & (tie_rank <= take)
    return selected


def row_lowest_k_mask(keys: KeyArray, k: int) -> BoolArray:
    """Exactly ``k`` lowest keys in every row of a 2-D key array, ties by position in the row."""
    rows, length = keys.shape
    if k <= 0 or length == 0:
        return np.zeros(keys.shape, dtype=np.bool_)
    if k >= length:
        return np.ones(keys.shape, dtype=np.bool_)
    kth, take = row_kth_keys(keys, k)
    return row_select_with_ties(keys, kth, take)


# ---- rows spread over chunks (output axis not leading) ---------------------------------------

_ROW_DIGIT_BITS: Final = 8
_ROW_DIGIT_BINS: Final = 1 << _ROW_DIGIT_BITS

# (first row, keys shaped (pre, rows, post)): a chunk holding, for rows first..first+rows-1,
# the positions pre-major then post (the row-major order of the weight with the row axis moved
# first)
RowChunk = tuple[int, KeyArray]


def spread_row_kth_keys(
    row_chunks: Callable[[], Iterable[RowChunk]], rows: int, k: int, key_dtype: np.dtype[Any] | type
) -> tuple[KeyArray, NDArray[np.int64]]:
    """Per row, the k-th smallest key and the ties to take, for rows spread over many chunks.

    Radix selection with 8-bit digits, one pass over the chunks per digit (2 for fp16 keys, 4
    for fp32): a (rows, 256) histogram of the next digit of the keys matching each row's prefix.
    Memory: 2 KB per row plus one chunk's temporaries. Needs 1 <= k <= row length.
    """
    dtype = np.dtype(key_dtype)
    bits = dtype.itemsize * 8
    prefix = np.zeros(rows, dtype=dtype)
    remaining = np.full(rows, k, dtype=np.int64)
    bins = np.arange(_ROW_DIGIT_BINS, dtype=np.int64)
    for level in range(bits // _ROW_DIGIT_BITS):
        shift = dtype.type(bits - _ROW_DIGIT_BITS * (level + 1))
        histogram = np.zeros((rows, _ROW_DIGIT_BINS), dtype=np.int64)
        for first, keys in row_chunks():
            count = keys.shape[1]
            digits = ((keys >> shift) & dtype.type(_ROW_DIGIT_BINS - 1)).astype(np.intp)
            digits += (np.arange(count, dtype=np.intp) * _ROW_DIGIT_BINS)[None, :, None]
            if level:
                above = dtype.type(shift + _ROW_DIGIT_BITS)
                digits = digits[(keys >> above) == prefix[first : first + count][None, :, None]]
            counts = np.bincount(digits.reshape(-1), minlength=count * _ROW_DIGIT_BINS)
            histogram[first : first + count] += counts.reshape(count, _ROW_DIGIT_BINS)
        cumulative = np.cumsum(histogram, axis=1)
        digit = np.count_nonzero(cumulative < remaining[:, None], axis=1)
        remaining -= np.take_along_axis(cumulative - histogram, digit[:, None], axis=1)[:, 0]
        prefix = (prefix << dtype.type(_ROW_DIGIT_BITS)) | bins[digit].astype(dtype)
    return prefix, remaining


class RowTieCarry:
    """Per-row :class:`TieCarry`: masks of rows spread over chunks, ties taken in row order."""

    def __init__(self, kth: KeyArray, take: NDArray[np.int64]) -> None:
        self.kth = kth
        self.take = take
        self.taken = np.zeros(kth.shape, dtype=np.int64)

    def mask(self, first: int, keys: KeyArray) -> BoolArray:
        """Mask of a (pre, rows, post) chunk holding rows first..first+rows-1."""
        count = keys.shape[1]
        kth = self.kth[first : first + count][None, :, None]
        selected: BoolArray = keys < kth
        ties = np.moveaxis(keys == kth, 1, 0).reshape(count, -1)
        rank = np.cumsum(ties, axis=1, dtype=np.int64)
        rank += self.taken[first : first + count, None]
        picked = ties & (rank <= self.take[first : first + count, None])
        self.taken[first : first + count] += np.count_nonzero(ties, axis=1)
        selected |= np.moveaxis(picked.reshape(count, keys.shape[0], keys.shape[2]), 0, 1)
        return selected
