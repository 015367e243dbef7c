"""Streaming's path for weights larger than :data:`CHUNKED_ABOVE_BYTES`: prune and write them
chunk by chunk, bit-identical to the whole-array handlers.

A selected config becomes a chunked kernel pattern (:mod:`mil_sparsity.kernels.chunked`):
threshold -> ``Threshold``, magnitude -> ``Magnitude`` (activation scoring: ``RowLowest`` over
the output rows), block -> ``Block``, n:m -> ``NM``, pack -> ``Pack``. The weight is read through
positioned reads of the source blob (no mmap), at most :data:`CHUNK_BYTES` at a time.

1. :func:`decide_selected` runs the counting passes: the exact number of stored values is
   known before anything is written, so the handlers' skips (threshold and pack minimums) are
   decided as they would be on the whole array, and the outcome, a :class:`ChunkedSparse`,
   carries what the report needs.
2. :func:`write_chunked` runs the writing pass: each chunk's stored values go straight into the
   ``nonzero_data`` blob; its mask bits collect in a buffer of ``ceil(size / 8)`` bytes (1/16 of an
   fp16 weight) that becomes the ``mask`` blob (packed uint8 or uint1: the same bytes).

Configs the chunked kernels do not cover (activation scoring over several row axes or with a
per-element scale: grouped convs and batched matmul consts) run whole, as before.
"""

from __future__ import annotations

from typing import Any, Callable, Final, Optional

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.format.blob import BlobInfo, BlobReader, BlobWriter, encode
from mil_sparsity.configs import NMConfig, PackConfig, ThresholdConfig, is_activation_scored
from mil_sparsity.plan.handlers import Skip, chunked_pattern, method_of, nm_skip, pack_skip, resolved_dim, threshold_skip
from mil_sparsity.kernels import (
    ChunkedPruner,
    MaskBitPacker,
    SparseCounts,
    activation_scores,
    dense_nbytes,
    normalize_dim,
    packed_nbytes,
)
from mil_sparsity.kernels.chunked import Pattern
from mil_sparsity.model.inventory import Weight
from mil_sparsity.plan.rules import Decision, Selected, run_selected
from mil_sparsity.plan.scoring import ScoreContext
from mil_sparsity.format.sparse_format import SparseForm, SparseTensor, sparse_tensor_layout
from mil_sparsity.model.weight_roles import scoring_of

#: weights stored in more bytes than this are pruned and written chunk by chunk
CHUNKED_ABOVE_BYTES: Final = 64 << 20
#: bytes of the weight read per chunk
CHUNK_BYTES: Final = 8 << 20

Reader = Callable[[int, int], NDArray[Any]]


def check_chunked_above_bytes(value: object) -> int:
    """``chunked_above_bytes`` as given, or TypeError/ValueError naming it and the range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"chunked_above_bytes must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise InvalidInputError(f"chunked_above_bytes must be >= 0 (0: every weight chunked), got {value}")
    return value


@attrs.frozen
class ChunkedSparse:
    """A weight pruned chunk by chunk: the counting passes ran, nothing is written yet."""

    pruner: ChunkedPruner = attrs.field(eq=False)
    counts: SparseCounts
    dtype_name: str  # MIL name of the weight's dtype

    @property
    def sparsity(self) -> float:
        size = self.counts.size
        return 0.0 if size == 0 else 1.0 - self.counts.nonzero_count / size

    @property
    def packed_nbytes(self) -> int:
        return packed_nbytes(self.counts.nonzero_count, self.counts.size, self.pruner.dtype.itemsize)

    @property
    def dense_nbytes(self) -> int:
        return dense_nbytes(self.counts.size, self.pruner.dtype.itemsize)


def _scale_reader(read: Reader, shape: tuple[int, ...], context: ScoreContext) -> Optional[Reader]:
    """``read_scores``: float32 ``|w| * scale`` of elements ``[start, stop)``, the scale repeated
    along ``context.scale_axis`` as :func:`activation_scores` broadcasts it. None when the scale is
    not 1-D (per-element scales of grouped convs)."""
    scale = context.scale
    if scale is None or scale.ndim != 1:
        return None
    axis = normalize_dim(context.scale_axis, len(shape), "input_axis")
    probe = [shape[axis] if index == axis else 1 for index in range(len(shape))]
    activation_scores(np.zeros(probe, np.float16), scale, axis)  # the kernel's own checks, once
    length = shape[axis]
    post = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    scale32 = np.asarray(scale, dtype=np.float32)

    def read_scores(start: int, stop: int) -> NDArray[Any]:
        first, last = start // post, -(-stop // post)
        per_slice = np.resize(np.roll(scale32, -(first % length)), last - first)
        expanded = np.repeat(per_slice, post)[start - first * post : stop - first * post]
        magnitudes = np.abs(read(start, stop)).astype(np.float32, copy=False)
        scores: NDArray[np.float32] = np.multiply(magnitudes, expanded, dtype=np.float32)
        return scores

    return read_scores


def _pattern(
    selected: Selected, shape: tuple[int, ...], read: Reader
) -> Optional[tuple[Pattern, Optional[Reader]]]:
    """The chunked pattern of a selected config (and its scores reader), or None: run whole."""
    config, context = selected.config, selected.context
    read_scores: Optional[Reader] = None
    if is_activation_scored(config):
        if context is None or context.rows is None:
            return None
        read_scores = _scale_reader(read, shape, context)
        if read_scores is None:
            return None
    pattern = chunked_pattern(config, context, shape, scored=read_scores is not None)
    return None if pattern is None else (pattern, read_scores)


def decide_selected(
    selected: Selected,
    weight: Weight,
    info: BlobInfo,
    reader: BlobReader,
    load: Callable[[], NDArray[Any]],
    chunked_above_bytes: int,
) -> Decision:
    """:func:`mil_sparsity.plan.rules.run_selected`, chunked when the weight is larger than
    ``chunked_above_bytes`` and its config has a chunked pattern (then the outcome is a
    :class:`ChunkedSparse` or a Skip; else the whole weight is loaded)."""
    if weight.nbytes <= chunked_above_bytes or info.bits < 8:
        return run_selected(selected, load())
    config = selected.config
    if isinstance(config, NMConfig):
        too_short = nm_skip(config, weight.shape, resolved_dim(config, selected.context))
        if too_short is not None:
            return Decision(too_short, config, selected.source, selected.axis, scoring_of(config))
    shape = weight.shape

    def read(start: int, stop: int) -> NDArray[Any]:
        return reader.read_elements(info, start, stop)

    plan = _pattern(selected, shape, read)
    if plan is None:
        return run_selected(selected, load())
    pattern, read_scores = plan
    dtype = np.dtype(weight.dtype)
    pruner = ChunkedPruner(shape, dtype, pattern, read, max(8, CHUNK_BYTES // dtype.itemsize), read_scores)
    outcome = ChunkedSparse(pruner, pruner.count(), info.dtype_name)
    skip: Optional[Skip] = None
    if isinstance(config, ThresholdConfig):
        skip = threshold_skip(config, outcome.sparsity)
    elif isinstance(config, PackConfig):
        skip = pack_skip(config, outcome.sparsity, outcome.packed_nbytes, outcome.dense_nbytes, str(dtype))
    return Decision(
        outcome if skip is None else skip, config, selected.source, selected.axis, scoring_of(config), method_of(config)
    )


def write_chunked(
    writer: BlobWriter, sparse: ChunkedSparse, form: SparseForm
) -> tuple[tuple[SparseTensor, Optional[int]], ...]:
    """Writing pass: append ``nonzero_data`` then ``mask`` to the new weight file; each tensor
    with its blob offset (None: inline in the spec, the iOS16/17 shape)."""
    counts = sparse.counts
    shape = sparse.pruner.shape
    layout = sparse_tensor_layout(sparse.dtype_name, counts.nonzero_count, shape, form)
    nonzero_sink = writer.begin(sparse.dtype_name, counts.nonzero_count)
    bits = np.empty(counts.mask_nbytes, dtype=np.uint8)
    packer = MaskBitPacker()
    filled = 0
    for chunk in sparse.pruner.chunks():
        nonzero_sink.append(encode(sparse.dtype_name, chunk.values))
        packed = packer.push(chunk.mask)
        bits[filled : filled + packed.size] = packed
        filled += packed.size
    tail = packer.finish()
    bits[filled : filled + tail.size] = tail
    offsets: dict[str, int] = {layout[0].input_name: nonzero_sink.close()}
    mask = layout[1]
    mask_sink = writer.begin(mask.dtype, int(np.prod(mask.shape, dtype=np.int64)))
    mask_sink.append(bits)  # uint8 packed bits and uint1 storage are the same bytes
    offsets[mask.input_name] = mask_sink.close()
    return tuple((tensor, None if tensor.inline else offsets[tensor.input_name]) for tensor in layout)
