"""Palettization of a pruned weight's kept values: a 2**nbits look-up table and one index each.

:func:`kept_value_lut` fits the table to the nonzero values only (the zeros are the sparse
mask's, so no table entry is spent on them), by 1-D k-means (Lloyd's algorithm):

1. the distinct kept values (float32) and their counts, sorted; at most k of them: the table
   holds them all;
2. start from k distinct values at the count-weighted quantiles (i + 0.5) / k;
3. repeat: the boundaries between clusters are the midpoints of neighbouring centroids, found
   among the sorted distinct values by binary search; each centroid moves to its cluster's mean
   (from prefix sums of counts and of count x value; an empty cluster keeps its centroid); stop
   when no boundary moves, or after ``max_iterations``.

In one dimension the clusters of Lloyd's algorithm are contiguous runs of the sorted values, so
an iteration costs one binary search per centroid, with no distance matrix and no pass over
the elements. The table is returned ascending in the values' dtype; every index (zeros included, whose
index is the nearest entry to 0 and is never read through the mask) points at the nearest
entry. With at most 2**nbits distinct kept values the table holds them all and the palettized
values equal the input exactly.

Storage (:func:`joint_nbytes`): a 1-bit mask per element, ``nbits`` per kept value, and the
table. This is coremltools' ``constexpr_lut_to_sparse`` + ``constexpr_sparse_to_dense`` (iOS18).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.kernels.packing import nonzero_mask, packed_nbytes

#: the index widths Core ML's ``constexpr_lut_to_sparse`` stores (as coremltools' palettizer)
PALETTE_NBITS = (1, 2, 3, 4, 6, 8)

# Elements per chunk when indexing the whole tensor: the int64 search result stays 2 MB.
_INDEX_CHUNK = 1 << 18


def check_nbits(nbits: Any, field: str = "nbits") -> int:
    """``nbits`` as an int of :data:`PALETTE_NBITS`, or ValueError naming ``field``."""
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or int(nbits) not in PALETTE_NBITS:
        raise InvalidInputError(f"{field} must be one of {PALETTE_NBITS}, got {nbits!r}")
    return int(nbits)


def kmeans_1d(values: NDArray[Any], entries: int, max_iterations: int = 100) -> NDArray[np.float32]:
    """``entries`` ascending centroids of ``values`` (any shape, not empty) by 1-D Lloyd k-means.

    Works on the distinct values and their counts (a float16 weight has at most 65,536), with
    prefix sums of count and count x value: an iteration is one binary search per centroid.
    With at most ``entries`` distinct values the centroids are those values (the last repeated).
    """
    distinct, counts = np.unique(values.astype(np.float32, copy=False).reshape(-1), return_counts=True)
    if distinct.size == 0:
        raise InvalidInputError("values: k-means needs at least one value, got none")
    if distinct.size <= entries:
        return np.concatenate([distinct, np.full(entries - distinct.size, distinct[-1], np.float32)])
    cumulative_count = np.concatenate(([0], np.cumsum(counts)))
    cumulative_sum = np.concatenate(([0.0], np.cumsum(distinct * counts.astype(np.float64))))
    centroids = distinct[_starting_positions(cumulative_count, entries)]
    bounds = np.zeros(entries + 1, dtype=np.intp)
    for _ in range(max_iterations):
        midpoints = centroids[1:] * np.float32(0.5) + centroids[:-1] * np.float32(0.5)
        new_bounds = np.concatenate(([0], np.searchsorted(distinct, midpoints, side="right"), [distinct.size]))
        if np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        sizes = np.diff(cumulative_count[bounds])
        sums = np.diff(cumulative_sum[bounds])
        centroids = np.where(sizes > 0, sums / np.maximum(sizes, 1), centroids).astype(np.float32)
    return np.sort(centroids)


def _starting_positions(cumulative_count: NDArray[np.intp], entries: int) -> NDArray[np.intp]:
    """``entries`` distinct positions among the distinct values: the count-weighted quantiles
    (i + 0.5) / entries, then, where those coincide, the evenly spaced positions not yet taken."""
    distinct_count = cumulative_count.size - 1
    targets = (np.arange(entries) + 0.5) * (cumulative_count[-1] / entries)
    chosen = np.unique(np.searchsorted(cumulative_count, targets, side="right") - 1)
    if chosen.size < entries:
        spread = np.linspace(0, distinct_count - 1, entries + chosen.size).round().astype(np.intp)
        others = np.setdiff1d(np.unique(spread), chosen)[: entries - chosen.size]
        if others.size < entries - chosen.size:
            others = np.setdiff1d(np.arange(distinct_count), chosen)[: entries - chosen.size]
        chosen = np.sort(np.concatenate([chosen, others]))
    return chosen


def nearest_entry(values: NDArray[Any], lut: NDArray[Any]) -> NDArray[np.uint8]:
    """For every element of ``values`` (flattened), the index of the nearest entry of the
    ascending table ``lut`` (ties: the lower entry), as uint8."""
    table = lut.astype(np.float32)
    midpoints = table[1:] * np.float32(0.5) + table[:-1] * np.float32(0.5)
    flat = values.reshape(-1)
    indices = np.empty(flat.size, dtype=np.uint8)
    for start in range(0, flat.size, _INDEX_CHUNK):
        chunk = flat[start : start + _INDEX_CHUNK].astype(np.float32, copy=False)
        indices[start : start + _INDEX_CHUNK] = np.searchsorted(midpoints, chunk, side="left")
    return indices


def kept_value_lut(weight: NDArray[Any], nbits: int) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    """The table (2**nbits entries, ascending, ``weight``'s dtype) fitted to ``weight``'s nonzero
    values, and every element's index into it (flattened, uint8). A weight with no nonzero
    value gets an all-zero table."""
    nbits = check_nbits(nbits)
    if weight.dtype.kind != "f":
        raise InvalidInputError(f"weight: palettization takes a float weight, got dtype {weight.dtype}")
    entries = 1 << nbits
    kept = weight[nonzero_mask(weight)]
    if not np.isfinite(kept).all():
        raise InvalidInputError("weight: palettization needs finite values, got NaN or infinity")
    if kept.size == 0:
        lut = np.zeros(entries, dtype=weight.dtype)
    else:
        lut = kmeans_1d(kept, entries).astype(weight.dtype)
    return lut, nearest_entry(weight, lut)


def palettized_kept_values(weight: NDArray[Any], nbits: int, mask: NDArray[np.bool_]) -> NDArray[Any]:
    """The dense value the joint sparse + palettized form of ``weight`` decompresses to: where
    ``mask`` (the sparse mask, ``weight``'s shape) is set, the table entry of the element (the
    table of :func:`kept_value_lut`); zero elsewhere."""
    if mask.shape != weight.shape:
        raise InvalidInputError(f"mask: shape {mask.shape} differs from the weight's {weight.shape}")
    lut, indices = kept_value_lut(weight, nbits)
    return np.where(mask, lut[indices].reshape(weight.shape), np.zeros((), dtype=weight.dtype))


def joint_nbytes(nonzero_count: int, size: int, nbits: int, lut_itemsize: int) -> int:
    """Bytes of the joint form: ``nbits`` per kept value, a 1-bit mask per element, the table."""
    return (nonzero_count * nbits + 7) // 8 + (size + 7) // 8 + (1 << nbits) * lut_itemsize


def pruned_nbytes(kept: int, size: int, itemsize: int, palettize_nbits: Optional[int]) -> int:
    """Bytes of a pruned weight as stored: the sparse form (:func:`packed_nbytes`), or the joint
    sparse + palettized form (:func:`joint_nbytes`) when ``palettize_nbits`` is given."""
    if palettize_nbits is None:
        return packed_nbytes(kept, size, itemsize)
    return joint_nbytes(kept, size, palettize_nbits, itemsize)
