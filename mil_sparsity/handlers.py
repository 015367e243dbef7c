"""Config type -> handler. A handler turns one weight array into its sparse form or a skip.

Handlers are pure numpy (they call the kernels) and never touch the program, so the passes can
compute every replacement before rewriting anything. Add a new sparsity scheme by adding a
config class and registering a handler for it here.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar, Union

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity.configs import (
    BlockConfig,
    MagnitudeConfig,
    NMConfig,
    PackConfig,
    SparsityConfig,
    ThresholdConfig,
)
from mil_sparsity.kernels import (
    SparseWeight,
    block_prune_mask,
    magnitude_prune_mask,
    nm_prune_mask,
    normalize_dim,
    pack_kept,
    pack_sparse,
    threshold_prune_mask,
)


@attrs.frozen
class Skip:
    """The weight stays as it is, for ``reason``; ``sparsity`` is what it has or would have had."""

    reason: str
    sparsity: float | None = None


Outcome = Union[SparseWeight, Skip]
Handler = Callable[[NDArray[Any], Any], Outcome]
C = TypeVar("C")

HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type[C]) -> Callable[[Callable[[NDArray[Any], C], Outcome]], Callable[[NDArray[Any], C], Outcome]]:
    def register(handler: Callable[[NDArray[Any], C], Outcome]) -> Callable[[NDArray[Any], C], Outcome]:
        HANDLERS[config_type] = handler
        return handler

    return register


def run_handler(weight: NDArray[Any], config: SparsityConfig) -> Outcome:
    """Dispatch on the config's type."""
    try:
        handler = HANDLERS[type(config)]
    except KeyError:
        raise TypeError(f"no handler registered for {type(config).__name__}") from None
    return handler(weight, config)


@register_handler(ThresholdConfig)
def _threshold(weight: NDArray[Any], config: ThresholdConfig) -> Outcome:
    # threshold >= 0 (validated), so every zero is pruned and "not pruned" is exactly the
    # sparse mask: invert in place and pack without a second nonzero test
    keep = threshold_prune_mask(weight, config.threshold)
    np.logical_not(keep, out=keep)
    sparse = pack_kept(weight, keep)
    if sparse.sparsity < config.minimum_sparsity_percentile:
        return Skip(
            f"sparsity {sparse.sparsity:.4f} after threshold {config.threshold:g} is below "
            f"minimum_sparsity_percentile {config.minimum_sparsity_percentile:g}; left dense",
            sparse.sparsity,
        )
    return sparse


@register_handler(MagnitudeConfig)
def _magnitude(weight: NDArray[Any], config: MagnitudeConfig) -> Outcome:
    return pack_sparse(weight, magnitude_prune_mask(weight, config.target_sparsity))


@register_handler(BlockConfig)
def _block(weight: NDArray[Any], config: BlockConfig) -> Outcome:
    normalize_dim(config.dim, weight.ndim, "BlockConfig.dim")
    mask = block_prune_mask(weight, config.target_sparsity, config.block_size, config.dim)
    return pack_sparse(weight, mask)


@register_handler(NMConfig)
def _n_m(weight: NDArray[Any], config: NMConfig) -> Outcome:
    axis = normalize_dim(config.dim, weight.ndim, "NMConfig.dim")
    if weight.shape[axis] < config.m:
        return Skip(
            f"dim {config.dim} has {weight.shape[axis]} elements, fewer than m={config.m}"
        )
    return pack_sparse(weight, nm_prune_mask(weight, config.n, config.m, config.dim))


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


@register_handler(PackConfig)
def _pack(weight: NDArray[Any], config: PackConfig) -> Outcome:
    sparse = pack_sparse(weight)
    skip = pack_skip(config, sparse.sparsity, sparse.packed_nbytes, sparse.dense_nbytes, str(weight.dtype))
    return sparse if skip is None else skip
