"""Sparse packing: a dense weight (optionally with a prune mask) -> bitmask + nonzero values.

The sparse form stores a 1-bit mask per element (1 = stored value, 0 = zero) and the stored
values in row-major order. ``-0.0`` counts as zero (it comes back as ``+0.0``); NaN counts as
nonzero and is stored as it is.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

BoolArray = NDArray[np.bool_]


@attrs.frozen
class SparseWeight:
    """The sparse form of one weight: ``nonzero_data`` (1-D) and ``mask`` (bool, weight's shape)."""

    nonzero_data: NDArray[Any]
    mask: BoolArray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def size(self) -> int:
        return int(self.mask.size)

    @property
    def sparsity(self) -> float:
        """Fraction of elements that are zero in the dense form."""
        if self.mask.size == 0:
            return 0.0
        return 1.0 - self.nonzero_data.size / self.mask.size

    @property
    def packed_nbytes(self) -> int:
        return packed_nbytes(self.nonzero_data.size, self.mask.size, self.nonzero_data.dtype.itemsize)

    @property
    def dense_nbytes(self) -> int:
        return dense_nbytes(self.mask.size, self.nonzero_data.dtype.itemsize)


def dense_nbytes(size: int, itemsize: int) -> int:
    return size * itemsize


def packed_nbytes(nonzero_count: int, size: int, itemsize: int) -> int:
    """Bytes of the sparse form: the stored values plus one mask bit per element."""
    return nonzero_count * itemsize + (size + 7) // 8


def zero_fraction(weight: NDArray[Any]) -> float:
    """Fraction of exact zeros (``-0.0`` included, NaN excluded)."""
    if weight.size == 0:
        return 0.0
    return 1.0 - int(np.count_nonzero(weight)) / weight.size


def pack_sparse(weight: NDArray[Any], prune_mask: BoolArray | None = None) -> SparseWeight:
    """Pack ``where(prune_mask, 0, weight)`` without building that dense array.

    mask = (weight != 0) and not prune_mask; nonzero_data = weight[mask].
    """
    mask = np.not_equal(weight, 0)
    if prune_mask is not None:
        if prune_mask.shape != weight.shape:
            raise ValueError(
                f"prune_mask shape {prune_mask.shape} does not match weight shape {weight.shape}"
            )
        # for bools, a > b is a and not b: no temporary for ~prune_mask
        np.greater(mask, prune_mask, out=mask)
    return SparseWeight(nonzero_data=weight[mask], mask=mask)


def pack_mask_bits(mask: BoolArray) -> NDArray[np.uint8]:
    """iOS16 mask layout: bits in row-major order, least significant bit first, zero padded."""
    return np.packbits(mask.reshape(-1), bitorder="little")


def unpack_mask_bits(bits: NDArray[np.uint8], shape: tuple[int, ...]) -> BoolArray:
    """Inverse of :func:`pack_mask_bits`."""
    size = int(np.prod(shape, dtype=np.int64))
    return np.unpackbits(bits, count=size, bitorder="little").astype(np.bool_).reshape(shape)


def unpack_sparse(sparse: SparseWeight) -> NDArray[Any]:
    """The dense array a sparse weight stands for."""
    dense = np.zeros(sparse.mask.shape, dtype=sparse.nonzero_data.dtype)
    dense[sparse.mask] = sparse.nonzero_data
    return dense
