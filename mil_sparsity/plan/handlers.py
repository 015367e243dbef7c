"""Config type -> handler. A handler turns one weight array into its sparse form or a skip.

The outcome contract is **mask + values**: a :class:`~mil_sparsity.kernels.SparseWeight`
holds which elements are stored (``mask``) and the values stored for them
(``nonzero_data``, row-major). Today's handlers store the kept weights as they were
(method ``"prune"``; ``"pack"`` stores every value as it was); a reconstruction handler may
store new values for the kept weights (SparseGPT, ADMM), as long as none of them is zero.
Nothing downstream (the rewriters, the streaming cache, blob de-duplication, the report,
``sweep``) assumes the stored values equal the original ones.

Handlers are pure numpy (they call the kernels) and never touch the program, so the passes can
compute every replacement before rewriting anything. Add a new sparsity scheme by adding a
config class and registering a handler for it here.

A handler gets an optional :class:`~mil_sparsity.plan.scoring.ScoreContext` resolved by the selection
from the ops that read the weight: the axis of a block / n:m config with ``dim=None``, and for
``scoring="activation"`` the channel scale: the handler then ranks
``activation_scores(weight, scale)`` instead of ``|w|`` (unstructured: per output row); for
``method="sparsegpt"`` / ``"admm"`` the Gram matrix and its layout: the handler runs the
reconstruction kernel (:mod:`mil_sparsity.kernels.reconstruction`) on the weight as ``[out, in]``
(one call per conv group) and stores its new values.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar, Union

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.configs import BlockConfig, MagnitudeConfig, NMConfig, PackConfig, ThresholdConfig
from mil_sparsity.configs import SPARSEGPT_METHOD, SparsityConfig, is_activation_scored, is_reconstruction
from mil_sparsity.kernels import (
    SparseWeight,
    activation_scores,
    block_prune_mask,
    magnitude_prune_mask,
    nm_prune_mask,
    normalize_dim,
    pack_kept,
    pack_sparse,
    score_block_prune_mask,
    score_nm_prune_mask,
    threshold_prune_mask,
)
from mil_sparsity.kernels.chunked import NM, Block, Magnitude, Pack, Pattern, RowLowest, Threshold
from mil_sparsity.kernels.reconstruction import admm, sparsegpt
from mil_sparsity.kernels.selection import target_count
from mil_sparsity.plan.scoring import RowLayout, ScoreContext, from_rows, row_prune_mask, to_rows


@attrs.frozen
class Skip:
    """The weight stays as it is, for ``reason``; ``sparsity`` is what it has or would have had."""

    reason: str
    sparsity: float | None = None


Outcome = Union[SparseWeight, Skip]
Handler = Callable[[NDArray[Any], Any, Optional[ScoreContext]], Outcome]
C = TypeVar("C")
TypedHandler = Callable[[NDArray[Any], C, Optional[ScoreContext]], Outcome]

HANDLERS: dict[type, Handler] = {}
#: the same algorithm over row-major chunks (streaming's weights above ``chunked_above_bytes``):
#: ``(config, context, shape, scored)`` -> a :mod:`~mil_sparsity.kernels.chunked` pattern, or
#: None where the config can only run on the whole weight. ``scored``: chunks carry activation
#: scores instead of magnitudes.
ChunkedPatternOf = Callable[[Any, Optional[ScoreContext], tuple[int, ...], bool], Optional[Pattern]]
CHUNKED_PATTERNS: dict[type, ChunkedPatternOf] = {}


def register_handler(
    config_type: type[C], chunked: Optional[ChunkedPatternOf] = None
) -> Callable[[TypedHandler[C]], TypedHandler[C]]:
    """Register the handler of ``config_type`` and, if it has one, its chunked pattern: one
    place maps a config type to its algorithm, whole or in chunks."""

    def register(handler: TypedHandler[C]) -> TypedHandler[C]:
        HANDLERS[config_type] = handler
        if chunked is not None:
            CHUNKED_PATTERNS[config_type] = chunked
        return handler

    return register


def chunked_pattern(
    config: SparsityConfig, context: Optional[ScoreContext], shape: tuple[int, ...], scored: bool
) -> Optional[Pattern]:
    """The chunked pattern of ``config`` (None: run on the whole weight). Reconstruction
    methods need the whole weight and its Gram matrix: never chunked."""
    pattern_of = CHUNKED_PATTERNS.get(type(config))
    if pattern_of is None or method_of(config) not in (PRUNE_METHOD, PACK_METHOD):
        return None
    return pattern_of(config, context, shape, scored)


def _magnitude_pattern(
    config: MagnitudeConfig, context: Optional[ScoreContext], shape: tuple[int, ...], scored: bool
) -> Optional[Pattern]:
    if not scored:
        return Magnitude(config.target_sparsity)
    rows = context.rows if context is not None else None
    if rows is None or rows.view_shape != shape or len(rows.row_axes) != 1:
        return None
    return RowLowest(config.target_sparsity, rows.row_axes[0])


def _block_pattern(
    config: BlockConfig, context: Optional[ScoreContext], shape: tuple[int, ...], scored: bool
) -> Pattern:
    dim = resolved_dim(config, context)
    normalize_dim(dim, len(shape), "BlockConfig.dim")
    return Block(config.target_sparsity, config.block_size, dim)


def run_handler(weight: NDArray[Any], config: SparsityConfig, context: Optional[ScoreContext] = None) -> Outcome:
    """Dispatch on the config's type."""
    try:
        handler = HANDLERS[type(config)]
    except KeyError:
        raise InvalidTypeError(f"no handler registered for {type(config).__name__}") from None
    return handler(weight, config, context)


#: how a handler chooses the values it stores (the report's ``method`` column)
PRUNE_METHOD = "prune"
PACK_METHOD = "pack"


def method_of(config: SparsityConfig) -> str:
    """The config's method: its own ``method`` field if it has one, else ``"pack"`` for pack
    configs and ``"prune"`` (the kept weights unchanged) for the others."""
    own = getattr(config, "method", None)
    if isinstance(own, str):
        return own
    return PACK_METHOD if isinstance(config, PackConfig) else PRUNE_METHOD


def resolved_dim(config: Union[BlockConfig, NMConfig], context: Optional[ScoreContext]) -> int:
    """The config's dim, or for ``dim=None`` the reduction axis the selection resolved."""
    if config.dim is not None:
        return config.dim
    if context is None or context.axis is None:
        raise InvalidInputError(
            f"{type(config).__name__}.dim=None means the reduction axis of the op reading the "
            "weight, which only a pass knows: run the config through a pass, or set dim"
        )
    return context.axis


def _activation_scores(
    weight: NDArray[Any], config: SparsityConfig, context: Optional[ScoreContext]
) -> tuple[NDArray[Any], RowLayout]:
    """Wanda scores ``|w| * scale`` from the selection's context, and the output rows."""
    if context is None or context.scale is None or context.rows is None:
        raise InvalidInputError(
            f"{type(config).__name__}(scoring='activation') needs calibration statistics: run it "
            "through prune_by_magnitude with the pass option 'calibration'"
        )
    return activation_scores(weight, context.scale, context.scale_axis), context.rows


def _is_activation(config: Union[MagnitudeConfig, BlockConfig, NMConfig]) -> bool:
    return is_activation_scored(config)


def _reconstruct(
    weight: NDArray[Any], config: Union[MagnitudeConfig, NMConfig], context: Optional[ScoreContext]
) -> SparseWeight:
    """The reconstruction kernel of ``config.method`` on the weight as ``[out, in]``, one call
    per group. Unstructured: exactly ``round(s * size)`` pruned over the whole weight (group k
    gets its share rounded down cumulatively, as the kernels' column blocks do). n:m on a conv
    weight with a kernel larger than 1x1: the groups run along the input channels (axis 1, as
    for method "prune"), so the kernel sees the columns tap-major (``[O, kH, kW, C]``) and the
    Gram matrix permuted to match (the selection checked ``C % m == 0``)."""
    if context is None or context.gram is None or context.gram_layout is None:
        raise InvalidInputError(
            f"{type(config).__name__}(method={config.method!r}) needs calibration statistics with "
            "a Gram matrix: run it through prune_by_magnitude with the pass option 'calibration'"
        )
    layout, gram = context.gram_layout, context.gram
    kernel = sparsegpt if config.method == SPARSEGPT_METHOD else admm
    rows = to_rows(weight, layout)
    grams = gram.reshape((-1,) + gram.shape[-2:])
    taps = int(np.prod(weight.shape[2:], dtype=np.int64))
    tap_major = isinstance(config, NMConfig) and weight.ndim > 2 and taps > 1
    if tap_major:
        channels = weight.shape[1]
        rows = np.moveaxis(weight, 1, -1).reshape(weight.shape[0], -1)
        order = np.arange(channels * taps).reshape(channels, taps).T.ravel()  # new column -> old
        grams = grams[:, order][:, :, order]
    groups = layout.groups
    per_group = rows.shape[0] // groups
    group_size = per_group * rows.shape[1]
    if isinstance(config, MagnitudeConfig):
        total = target_count(config.target_sparsity, weight.size)
        marks = [total * k // groups for k in range(groups + 1)]
    values = np.empty(rows.shape, dtype=weight.dtype)
    keep = np.empty(rows.shape, dtype=np.bool_)
    for k in range(groups):
        part = slice(k * per_group, (k + 1) * per_group)
        block = np.ascontiguousarray(rows[part])
        if isinstance(config, MagnitudeConfig):
            share = (marks[k + 1] - marks[k]) / group_size if group_size else 0.0
            result = kernel(block, grams[k], target_sparsity=share)
        else:
            result = kernel(block, grams[k], n=config.n, m=config.m)
        values[part], keep[part] = result.values, result.mask
    if tap_major:
        moved = (weight.shape[0],) + weight.shape[2:] + (weight.shape[1],)
        return pack_kept(
            np.ascontiguousarray(np.moveaxis(values.reshape(moved), -1, 1)),
            np.ascontiguousarray(np.moveaxis(keep.reshape(moved), -1, 1)),
        )
    return pack_kept(from_rows(values, layout, weight.shape), from_rows(keep, layout, weight.shape))


@register_handler(ThresholdConfig, chunked=lambda config, context, shape, scored: Threshold(config.threshold))
def _threshold(weight: NDArray[Any], config: ThresholdConfig, context: Optional[ScoreContext] = None) -> Outcome:
    # threshold >= 0 (validated), so every zero is pruned and "not pruned" is exactly the
    # sparse mask: invert in place and pack without a second nonzero test
    keep = threshold_prune_mask(weight, config.threshold)
    np.logical_not(keep, out=keep)
    sparse = pack_kept(weight, keep)
    skip = threshold_skip(config, sparse.sparsity)
    return sparse if skip is None else skip


def threshold_skip(config: ThresholdConfig, sparsity: float) -> Optional[Skip]:
    """Why a weight thresholded to ``sparsity`` stays dense, or None to pack it."""
    if sparsity < config.minimum_sparsity_percentile:
        return Skip(
            f"sparsity {sparsity:.4f} after threshold {config.threshold:g} is below "
            f"minimum_sparsity_percentile {config.minimum_sparsity_percentile:g}; left dense",
            sparsity,
        )
    return None


def nm_skip(config: NMConfig, shape: tuple[int, ...], dim: int) -> Optional[Skip]:
    """Skip when the n:m axis is shorter than m (None: prune)."""
    axis = normalize_dim(dim, len(shape), "NMConfig.dim")
    if shape[axis] < config.m:
        return Skip(f"dim {dim} has {shape[axis]} elements, fewer than m={config.m}")
    return None


@register_handler(MagnitudeConfig, chunked=_magnitude_pattern)
def _magnitude(weight: NDArray[Any], config: MagnitudeConfig, context: Optional[ScoreContext] = None) -> Outcome:
    if is_reconstruction(config):
        return _reconstruct(weight, config, context)
    if not _is_activation(config):
        return pack_sparse(weight, magnitude_prune_mask(weight, config.target_sparsity))
    scores, rows = _activation_scores(weight, config, context)
    return pack_sparse(weight, row_prune_mask(scores, rows, config.target_sparsity))


@register_handler(BlockConfig, chunked=_block_pattern)
def _block(weight: NDArray[Any], config: BlockConfig, context: Optional[ScoreContext] = None) -> Outcome:
    dim = resolved_dim(config, context)
    normalize_dim(dim, weight.ndim, "BlockConfig.dim")
    if not _is_activation(config):
        mask = block_prune_mask(weight, config.target_sparsity, config.block_size, dim)
    else:
        scores, _ = _activation_scores(weight, config, context)
        mask = score_block_prune_mask(scores, config.target_sparsity, config.block_size, dim)
    return pack_sparse(weight, mask)


@register_handler(NMConfig, chunked=lambda config, context, shape, scored: NM(config.n, config.m, resolved_dim(config, context)))
def _n_m(weight: NDArray[Any], config: NMConfig, context: Optional[ScoreContext] = None) -> Outcome:
    dim = resolved_dim(config, context)
    skip = nm_skip(config, weight.shape, dim)
    if skip is not None:
        return skip
    if is_reconstruction(config):
        return _reconstruct(weight, config, context)
    if not _is_activation(config):
        return pack_sparse(weight, nm_prune_mask(weight, config.n, config.m, dim))
    scores, _ = _activation_scores(weight, config, context)
    return pack_sparse(weight, score_nm_prune_mask(scores, config.n, config.m, dim))


def pack_skip(
    config: PackConfig, sparsity: float, packed_bytes: int, dense_bytes: int, storage: str
) -> Optional[Skip]:
    """Why a weight with this sparsity stays as it is under ``config``, or None to pack it.

    ``minimum_sparsity_percentile=None``: pack exactly when the packed form is smaller than the
    current one (``storage`` names it in the reason, e.g. "float16" or "4-bit").
    """
    if config.minimum_sparsity_percentile is None:
        if packed_bytes >= dense_bytes:
            return Skip(
                f"sparsity {sparsity:.4f} is not above the {storage} break-even: packing would "
                f"not save space ({packed_bytes} >= {dense_bytes} bytes)",
                sparsity,
            )
    elif sparsity < config.minimum_sparsity_percentile:
        return Skip(
            f"sparsity {sparsity:.4f} is below minimum_sparsity_percentile "
            f"{config.minimum_sparsity_percentile:g}",
            sparsity,
        )
    return None


@register_handler(PackConfig, chunked=lambda config, context, shape, scored: Pack())
def _pack(weight: NDArray[Any], config: PackConfig, context: Optional[ScoreContext] = None) -> Outcome:
    sparse = pack_sparse(weight)
    skip = pack_skip(config, sparse.sparsity, sparse.packed_nbytes, sparse.dense_nbytes, str(weight.dtype))
    return sparse if skip is None else skip
