"""Pure numpy kernels: weight array in, prune mask or packed arrays out.

Nothing here imports MIL. Every kernel works on the whole tensor at once (no Python loop over
elements, bytes or groups) and keeps its temporaries in the weight's own width or narrower
(bool, uint8/uint16 keys), so a 2**24-element fp16 weight needs a few tens of MB, not hundreds.

Modules: ``masks`` (threshold, magnitude, block, n:m masks), ``selection`` (the exact k-smallest
selection they share: whole array, per row, over chunks), ``scores`` (the same patterns ranking
activation scores instead of magnitudes), ``packing`` (bitmask + nonzero values) and
``chunked`` (every pattern over row-major chunks in bounded memory, bit-identical) and
``reconstruction`` (SparseGPT and ADMM: a mask plus new values for the kept weights, from the
layer's Gram matrix X^T X; float32/float64 work arrays of the weight's size, not narrower).
"""

from mil_sparsity.kernels.masks import (
    block_prune_mask,
    magnitude_keys,
    magnitude_keys_in_place,
    magnitude_prune_mask,
    nm_prune_mask,
    normalize_dim,
    threshold_prune_mask,
)
from mil_sparsity.kernels.selection import KthKey, lowest_k_mask, row_lowest_k_mask
from mil_sparsity.kernels.scores import (
    activation_scores,
    score_block_prune_mask,
    score_nm_prune_mask,
    score_row_prune_mask,
)
from mil_sparsity.kernels.chunked import (
    NM,
    Block,
    ChunkedPruner,
    Magnitude,
    MaskBitPacker,
    Pack,
    RowLowest,
    SparseChunk,
    SparseCounts,
    Threshold,
    chunk_bounds,
)
from mil_sparsity.kernels.reconstruction import Reconstruction, admm, sparsegpt
from mil_sparsity.kernels.packing import (
    SparseWeight,
    dense_nbytes,
    nonzero_mask,
    pack_kept,
    pack_mask_bits,
    pack_sparse,
    packed_nbytes,
    unpack_mask_bits,
    unpack_sparse,
    zero_fraction,
)

__all__ = [
    "NM",
    "Block",
    "ChunkedPruner",
    "KthKey",
    "Magnitude",
    "MaskBitPacker",
    "Pack",
    "Reconstruction",
    "RowLowest",
    "SparseChunk",
    "SparseCounts",
    "SparseWeight",
    "Threshold",
    "activation_scores",
    "admm",
    "chunk_bounds",
    "row_lowest_k_mask",
    "score_block_prune_mask",
    "score_nm_prune_mask",
    "sparsegpt",
    "score_row_prune_mask",
    "block_prune_mask",
    "dense_nbytes",
    "nonzero_mask",
    "lowest_k_mask",
    "magnitude_keys",
    "magnitude_keys_in_place",
    "magnitude_prune_mask",
    "nm_prune_mask",
    "normalize_dim",
    "pack_kept",
    "pack_mask_bits",
    "pack_sparse",
    "packed_nbytes",
    "threshold_prune_mask",
    "unpack_mask_bits",
    "unpack_sparse",
    "zero_fraction",
]
