"""Chunked kernels: prune and pack one weight in bounded memory, bit-identical to the whole-array
kernels.

The weight is read through ``read(start, stop)``, which returns its flat row-major elements
``[start, stop)`` as a 1-D array (a positioned read of the weight file, or a slice). A
:class:`ChunkedPruner` reads it in two phases:

1. :meth:`ChunkedPruner.count` -- counting passes. For patterns that prune a global count
   (magnitude, block) it first finds the selection's k-th key by radix selection over the
   chunks (one pass for fp16 keys, two for fp32, see
   :func:`~mil_sparsity.kernels.selection.radix_kth_key`); then it counts the values that stay
   stored. The result, :class:`SparseCounts`, holds everything a blob header needs: the number of
   nonzero values and the bytes of the packed mask.
2. :meth:`ChunkedPruner.chunks` -- one pass yielding a :class:`SparseChunk` per chunk: its
   unpacked mask bits (1 = stored value) and its stored values, in row-major order.

Concatenating the chunks' values gives ``pack_sparse(weight, whole_mask).nonzero_data``; feeding
their masks to a :class:`MaskBitPacker` and appending :meth:`MaskBitPacker.finish` gives
``pack_mask_bits(whole_mask)``, whatever the chunk lengths (the packer carries up to 7 bits).

Chunks (:func:`chunk_bounds`) hold at most ``max_elements`` elements, except when the pattern's
smallest unit is larger: a score row (``RowLowest``) or one group of ``block_size``/``m`` slices
along ``dim`` (``m * prod(shape[dim+1:])`` elements) is never split.

Writer sketch::

    pruner = ChunkedPruner(shape, dtype, Magnitude(0.5), read, max_elements=1 << 22)
    counts = pruner.count()                      # header: counts.nonzero_count, counts.mask_nbytes
    bits = MaskBitPacker()
    for chunk in pruner.chunks():
        mask_file.write(bits.push(chunk.mask)); data_file.write(chunk.values)
    mask_file.write(bits.finish())
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Union

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.kernels.masks import (
    block_score_keys,
    check_block_size,
    expand_blocks,
    magnitude_keys,
    nm_prune_mask,
    normalize_dim,
    split_at,
    threshold_prune_mask,
)
from mil_sparsity.kernels.packing import gather, nonzero_mask
from mil_sparsity.kernels.selection import (
    KthKey,
    RowTieCarry,
    TieCarry,
    radix_kth_key,
    row_lowest_k_mask,
    spread_row_kth_keys,
    target_count,
)

BoolArray = NDArray[np.bool_]
Reader = Callable[[int, int], NDArray[Any]]


# ---- patterns --------------------------------------------------------------------------------


@attrs.frozen
class Threshold:
    """Prune ``|w| <= threshold`` (:func:`threshold_prune_mask`)."""

    threshold: float


@attrs.frozen
class Magnitude:
    """Prune exactly ``round(target_sparsity * size)`` lowest magnitudes (or scores)."""

    target_sparsity: float


@attrs.frozen
class Block:
    """:func:`block_prune_mask` (or its score variant)."""

    target_sparsity: float
    block_size: int
    dim: int


@attrs.frozen
class NM:
    """:func:`nm_prune_mask` (or its score variant)."""

    n: int
    m: int
    dim: int


@attrs.frozen
class Pack:
    """No pruning: store every nonzero (:func:`pack_sparse` without a mask)."""


@attrs.frozen
class RowLowest:
    """:func:`score_row_prune_mask`: exactly ``round(target_sparsity * row_length)`` lowest
    scores per output row.

    ``output_axis=0`` keeps every row contiguous: chunks hold whole rows and each is selected
    alone. Another output axis spreads each row over many chunks: a per-row radix selection
    (:func:`~mil_sparsity.kernels.selection.spread_row_kth_keys`) runs in the counting phase,
    one pass per 8-bit digit, holding 2 KB per output row.
    """

    target_sparsity: float
    output_axis: int = 0


Pattern = Union[Threshold, Magnitude, Block, NM, Pack, RowLowest]
_SCORED = (Magnitude, Block, NM, RowLowest)


@attrs.frozen
class SparseCounts:
    """What a blob header needs before any chunk is written."""

    size: int
    nonzero_count: int

    @property
    def mask_nbytes(self) -> int:
        return (self.size + 7) // 8


@attrs.frozen
class SparseChunk:
    """Elements ``[start, stop)`` of the weight: ``mask`` (1-D bool, True = stored) and the
    stored ``values`` in row-major order."""

    start: int
    stop: int
    mask: BoolArray
    values: NDArray[Any]


class MaskBitPacker:
    """Packs consecutive mask chunks of any lengths into the iOS16 layout (LSB first).

    ``push`` returns the whole bytes available so far and keeps the remaining < 8 bits;
    ``finish`` returns the last, zero-padded byte (empty when the bits ended on a byte).
    """

    def __init__(self) -> None:
        self._carry: BoolArray = np.zeros(0, dtype=np.bool_)

    def push(self, mask: BoolArray) -> NDArray[np.uint8]:
        flat = mask.reshape(-1)
        if self._carry.size:
            flat = np.concatenate([self._carry, flat])
        whole = flat.size // 8 * 8
        self._carry = flat[whole:].copy()
        return np.packbits(flat[:whole], bitorder="little")

    def finish(self) -> NDArray[np.uint8]:
        bits = np.packbits(self._carry, bitorder="little")
        self._carry = np.zeros(0, dtype=np.bool_)
        return bits


# ---- chunk layout ----------------------------------------------------------------------------


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _group_len(pattern: Pattern) -> int:
    return pattern.block_size if isinstance(pattern, Block) else pattern.m if isinstance(pattern, NM) else 1


def _grouped_axis(shape: tuple[int, ...], pattern: Pattern) -> int | None:
    """The axis whose slices a chunk must not split mid-group (None: cut anywhere / by rows)."""
    if isinstance(pattern, (Block, NM)):
        return normalize_dim(pattern.dim, len(shape))
    if isinstance(pattern, RowLowest):
        axis = normalize_dim(pattern.output_axis, len(shape))
        return axis if axis else None
    return None


def check_pattern(shape: tuple[int, ...], pattern: Pattern) -> None:
    """Raise ValueError naming the field for a pattern the whole-array kernel would reject."""
    if isinstance(pattern, (Magnitude, Block, RowLowest)):
        target_count(pattern.target_sparsity, 1)
    if isinstance(pattern, Block):
        check_block_size(pattern.block_size)
    if isinstance(pattern, NM) and (not 0 <= pattern.n <= pattern.m or pattern.m < 1):
        raise InvalidInputError(f"n:m must satisfy 0 <= n <= m and m >= 1, got {pattern.n}:{pattern.m}")
    if isinstance(pattern, (Block, NM)):
        normalize_dim(pattern.dim, len(shape))
    if isinstance(pattern, RowLowest):
        normalize_dim(pattern.output_axis, len(shape), "output_axis")
    if isinstance(pattern, Threshold) and np.isnan(pattern.threshold):
        raise InvalidInputError("threshold must not be NaN")


def chunk_bounds(shape: tuple[int, ...], pattern: Pattern, max_elements: int) -> list[tuple[int, int]]:
    """Row-major ``(start, stop)`` element ranges covering the weight, aligned to the pattern.

    Elementwise and global patterns cut every ``max_elements`` rounded down to a multiple of 8
    (byte-aligned mask bits). ``RowLowest`` with ``output_axis=0`` cuts between rows.
    ``Block``/``NM`` (along ``dim``) and ``RowLowest`` (along another output axis, groups of 1)
    cut between whole (pre, length, post) slices when one fits, else between groups inside a
    slice (group starts counted from the slice start, so each chunk's groups are the whole
    kernel's).
    """
    if max_elements < 1:
        raise InvalidInputError(f"max_elements must be >= 1, got {max_elements}")
    check_pattern(shape, pattern)
    size = _size(shape)
    if size == 0:
        return []
    axis = _grouped_axis(shape, pattern)
    if isinstance(pattern, RowLowest) and axis is None:
        row = size // shape[0]
        step = max(1, max_elements // row) * row
        return [(start, min(size, start + step)) for start in range(0, size, step)]
    if axis is None:
        step = max(8, max_elements // 8 * 8)
        return [(start, min(size, start + step)) for start in range(0, size, step)]
    pre, length, post = split_at(shape, axis)
    slice_len = length * post
    if slice_len <= max_elements:
        step = max_elements // slice_len * slice_len
        return [(start, min(size, start + step)) for start in range(0, size, step)]
    group = _group_len(pattern) * post
    step = max(1, max_elements // group) * group
    return [
        (base + start, base + min(slice_len, start + step))
        for base in range(0, size, slice_len)
        for start in range(0, slice_len, step)
    ]


def _as_slices(shape: tuple[int, ...], axis: int, start: int, stop: int) -> tuple[int, int, int]:
    """A :func:`chunk_bounds` range of a grouped pattern as a (pre, length, post) array shape."""
    _, length, post = split_at(shape, axis)
    slice_len = length * post
    if start % slice_len == 0 and (stop - start) % slice_len == 0:
        return (stop - start) // slice_len, length, post
    return 1, (stop - start) // post, post


# ---- the pruner ------------------------------------------------------------------------------


class ChunkedPruner:
    """Prune and pack one weight of ``shape``/``dtype`` chunk by chunk (see the module doc).

    ``read_scores``, for the score-based patterns, reads the float scores (non-negative, same
    shape, dtype ``scores_dtype``) the same way ``read`` reads the weight; the selection then
    ranks scores, while the nonzero test and the stored values use the weight.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype[Any] | type,
        pattern: Pattern,
        read: Reader,
        max_elements: int,
        read_scores: Optional[Reader] = None,
        scores_dtype: np.dtype[Any] | type = np.float32,
    ) -> None:
        if read_scores is not None and not isinstance(pattern, _SCORED):
            raise InvalidTypeError(f"{type(pattern).__name__} takes no scores")
        self.shape = tuple(int(side) for side in shape)
        self.dtype = np.dtype(dtype)
        self.pattern = pattern
        self.read = read
        self.read_scores = read_scores
        self.scores_dtype = np.dtype(scores_dtype)
        self.size = _size(self.shape)
        self.bounds = chunk_bounds(self.shape, pattern, max_elements)
        self._selection: Optional[KthKey] = None
        self._row_selection: Optional[tuple[NDArray[np.unsignedinteger[Any]], NDArray[np.int64]]] = None
        self._counts: Optional[SparseCounts] = None

    # ---- phase 1 ----

    def _ranked(self, start: int, stop: int) -> NDArray[Any]:
        reader = self.read_scores if self.read_scores is not None else self.read
        return reader(start, stop)

    def _block_keys(self, pattern: Block, start: int, stop: int) -> NDArray[np.unsignedinteger[Any]]:
        axis = normalize_dim(pattern.dim, len(self.shape))
        chunk = self._ranked(start, stop).reshape(_as_slices(self.shape, axis, start, stop))
        return block_score_keys(chunk, pattern.block_size, 1)

    def _select(self) -> Optional[KthKey]:
        """The global selection of Magnitude/Block patterns (None: nothing or everything)."""
        pattern = self.pattern
        if isinstance(pattern, Magnitude):
            total = self.size
            key_dtype = magnitude_keys(np.zeros(0, self._ranked_dtype())).dtype

            def key_chunks() -> Iterator[NDArray[np.unsignedinteger[Any]]]:
                for start, stop in self.bounds:
                    yield magnitude_keys(self._ranked(start, stop))

        elif isinstance(pattern, Block):
            axis = normalize_dim(pattern.dim, len(self.shape))
            pre, length, post = split_at(self.shape, axis)
            total = pre * -(-length // pattern.block_size) * post
            key_dtype = np.dtype(np.uint32 if self._ranked_dtype() == np.float16 else np.uint64)

            def key_chunks() -> Iterator[NDArray[np.unsignedinteger[Any]]]:
                for start, stop in self.bounds:
                    yield self._block_keys(pattern, start, stop)

        else:
            return None
        k = target_count(pattern.target_sparsity, total)
        if k <= 0:
            return KthKey(key=0, take=0)
        if k >= total:
            return KthKey(key=int(np.iinfo(key_dtype).max), take=total)
        return radix_kth_key(key_chunks, k, key_dtype)

    def _ranked_dtype(self) -> np.dtype[Any]:
        return self.dtype if self.read_scores is None else self.scores_dtype

    def _spread_chunk(self, axis: int, start: int, stop: int) -> tuple[int, NDArray[np.unsignedinteger[Any]]]:
        """(first row, keys (pre, rows, post)) of a chunk of a RowLowest with a non-leading axis."""
        post = split_at(self.shape, axis)[2]
        first = start % (self.shape[axis] * post) // post
        layout = _as_slices(self.shape, axis, start, stop)
        return first, magnitude_keys(self._ranked(start, stop).reshape(layout))

    def _select_rows(self) -> Optional[tuple[NDArray[np.unsignedinteger[Any]], NDArray[np.int64]]]:
        """Per-row selection of a RowLowest whose rows are spread over chunks (else None)."""
        pattern = self.pattern
        if not isinstance(pattern, RowLowest) or self.size == 0:
            return None
        axis = _grouped_axis(self.shape, pattern)
        if axis is None:
            return None
        rows = self.shape[axis]
        k = target_count(pattern.target_sparsity, self.size // rows)
        key_dtype = magnitude_keys(np.zeros(0, self._ranked_dtype())).dtype
        if k <= 0:
            return np.zeros(rows, key_dtype), np.zeros(rows, np.int64)
        return spread_row_kth_keys(
            lambda: (self._spread_chunk(axis, start, stop) for start, stop in self.bounds), rows, k, key_dtype
        )

    def count(self) -> SparseCounts:
        """Counting passes: the global selection (if any), then the stored-value count."""
        self._selection = self._select()
        self._row_selection = self._select_rows()
        pattern = self.pattern
        if (
            isinstance(pattern, Magnitude)
            and self.read_scores is None
            and self._selection is not None
            and self._selection.key > 0
        ):
            # every zero has key 0 < the k-th key, so it is among the pruned: the rest is stored
            nonzero = self.size - target_count(pattern.target_sparsity, self.size)
        else:
            nonzero = sum(int(np.count_nonzero(stored)) for _, _, stored, _ in self._masks())
        self._counts = SparseCounts(size=self.size, nonzero_count=nonzero)
        return self._counts

    # ---- phase 2 ----

    def _masks(self) -> Iterator[tuple[int, int, BoolArray, NDArray[Any]]]:
        """(start, stop, stored-mask, weight chunk) per chunk, in order."""
        pattern = self.pattern
        carry = TieCarry(self._selection) if self._selection is not None else None
        row_carry = RowTieCarry(*self._row_selection) if self._row_selection is not None else None
        for start, stop in self.bounds:
            weight = self.read(start, stop).reshape(-1)
            if weight.size != stop - start or weight.dtype != self.dtype:
                raise InvalidInputError(
                    f"read({start}, {stop}) returned {weight.size} {weight.dtype} elements; "
                    f"expected {stop - start} {self.dtype}"
                )
            if isinstance(pattern, Pack):
                yield start, stop, nonzero_mask(weight), weight
                continue
            if isinstance(pattern, Threshold):
                keep = threshold_prune_mask(weight, pattern.threshold)
                np.logical_not(keep, out=keep)
                yield start, stop, keep & nonzero_mask(weight), weight
                continue
            if row_carry is not None and isinstance(pattern, RowLowest):
                first, keys = self._spread_chunk(normalize_dim(pattern.output_axis, len(self.shape)), start, stop)
                pruned = row_carry.mask(first, keys).reshape(-1)
            else:
                pruned = self._pruned(pattern, carry, start, stop)
            stored = nonzero_mask(weight)
            np.greater(stored, pruned, out=stored)
            yield start, stop, stored, weight

    def _pruned(self, pattern: Pattern, carry: Optional[TieCarry], start: int, stop: int) -> BoolArray:
        """The chunk's prune mask (1-D) for a pruning pattern."""
        if isinstance(pattern, (Magnitude, Block)):
            if carry is None:
                raise RuntimeError("the selection runs in count() before any mask")
            if isinstance(pattern, Magnitude):
                return carry.mask(magnitude_keys(self._ranked(start, stop).reshape(-1)))
            length = _as_slices(self.shape, normalize_dim(pattern.dim, len(self.shape)), start, stop)[1]
            blocks = carry.mask(self._block_keys(pattern, start, stop))
            return expand_blocks(blocks, length, pattern.block_size).reshape(-1)
        if isinstance(pattern, NM):
            axis = normalize_dim(pattern.dim, len(self.shape))
            chunk = self._ranked(start, stop).reshape(_as_slices(self.shape, axis, start, stop))
            return nm_prune_mask(chunk, pattern.n, pattern.m, 1).reshape(-1)
        if not isinstance(pattern, RowLowest):
            raise InvalidTypeError(f"{type(pattern).__name__} does not prune")
        row = self.size // self.shape[0]
        rows = self._ranked(start, stop).reshape(-1, row)
        k = target_count(pattern.target_sparsity, row)
        return row_lowest_k_mask(magnitude_keys(rows), k).reshape(-1)

    def chunks(self) -> Iterator[SparseChunk]:
        """Writing pass: each chunk's stored mask and values (after :meth:`count`)."""
        if self._counts is None:
            raise InvalidInputError("ChunkedPruner.count() must run before chunks()")
        for start, stop, stored, weight in self._masks():
            yield SparseChunk(start=start, stop=stop, mask=stored, values=gather(weight, stored))
