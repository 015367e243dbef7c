"""What ``fit`` may choose for one weight: the patterns per compute unit, the methods, and the
config that one (pattern, sparsity, method) means.

Patterns per ``compute_unit`` (Apple's pruning performance guidance: which sparse layouts each
unit can skip work for):

- ``"all"``: size only, so unstructured sparsity (for the same bytes, no pattern keeps more
  of the weight): 30%, 50%, 70%, 80%, 90%.
- ``"ane"``: what the Neural Engine can skip: unstructured at 75% or more (75%, 80%, 90%), or
  blocks of 2 along the reduction axis at any sparsity (30%, 50%, 70%).
- ``"cpu"``: n:m with m dividing 16 and n/m >= 0.5: 8:16, 10:16, 12:16, 14:16 (m = 16 leaves
  the most freedom among the allowed m).

Methods, best first (:data:`METHODS`): ``"admm"`` and ``"sparsegpt"`` (weight reconstruction;
need Gram statistics for the weight and a product that reads it), ``"activation"`` (Wanda
scores; needs channel statistics), ``"magnitude"`` (always possible). Block patterns have no
reconstruction, so they fall through to activation or magnitude.
"""

from __future__ import annotations

from typing import Optional, Sequence

import attrs

from mil_sparsity.configs import (
    ACTIVATION_SCORING,
    MAGNITUDE_SCORING,
    PRUNE_METHOD,
    RECONSTRUCTION_METHODS,
    BlockConfig,
    MagnitudeConfig,
    NMConfig,
    SparsityConfig,
)
from mil_sparsity.errors import InvalidInputError, InvalidTypeError

METHODS = ("admm", "sparsegpt", "activation", "magnitude")
COMPUTE_UNITS = ("all", "ane", "cpu")
#: the pattern of the unstructured setting; block and n:m patterns are named "block2", "n:m"
UNSTRUCTURED = "unstructured"


@attrs.frozen
class Setting:
    """One candidate for a weight: a pattern at a sparsity. ``n_m``: (n, m) for n:m patterns;
    ``block``: the block size for block patterns."""

    pattern: str
    sparsity: float
    n_m: Optional[tuple[int, int]] = None
    block: Optional[int] = None

    def config(self, method: str) -> Optional[SparsityConfig]:
        """The config of this setting with ``method`` (one of :data:`METHODS`); None when the
        pattern has no such method (block patterns are not reconstructed)."""
        scoring = ACTIVATION_SCORING if method == "activation" else MAGNITUDE_SCORING
        prune = method if method in RECONSTRUCTION_METHODS else PRUNE_METHOD
        if self.block is not None:
            if prune != PRUNE_METHOD:
                return None
            return BlockConfig(target_sparsity=self.sparsity, block_size=self.block, scoring=scoring)
        if self.n_m is not None:
            return NMConfig(n=self.n_m[0], m=self.n_m[1], scoring=scoring, method=prune)
        return MagnitudeConfig(target_sparsity=self.sparsity, scoring=scoring, method=prune)

    @property
    def label(self) -> str:
        return self.pattern if self.n_m is not None else f"{self.pattern} {self.sparsity:.0%}"


def _unstructured(*levels: float) -> list[Setting]:
    return [Setting(UNSTRUCTURED, level) for level in levels]


SETTINGS: dict[str, tuple[Setting, ...]] = {
    "all": tuple(_unstructured(0.3, 0.5, 0.7, 0.8, 0.9)),
    "ane": tuple(
        [Setting("block2", level, block=2) for level in (0.3, 0.5, 0.7)] + _unstructured(0.75, 0.8, 0.9)
    ),
    "cpu": tuple(Setting(f"{n}:16", n / 16, n_m=(n, 16)) for n in (8, 10, 12, 14)),
}


def settings_for(compute_unit: str) -> tuple[Setting, ...]:
    """The candidate settings of ``compute_unit``, by increasing sparsity."""
    if not isinstance(compute_unit, str):
        raise InvalidTypeError(f"compute_unit must be a str, got {type(compute_unit).__name__}")
    if compute_unit not in SETTINGS:
        raise InvalidInputError(f"compute_unit must be one of {list(COMPUTE_UNITS)}, got {compute_unit!r}")
    return tuple(sorted(SETTINGS[compute_unit], key=lambda s: s.sparsity))


def check_methods(methods: Optional[Sequence[str]]) -> tuple[str, ...]:
    """``methods`` as a tuple in the caller's order of preference (default :data:`METHODS`)."""
    if methods is None:
        return METHODS
    if isinstance(methods, str) or not isinstance(methods, Sequence):
        raise InvalidTypeError(f"methods must be a list of method names, got {type(methods).__name__}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidInputError(f"methods must be names from {list(METHODS)}, got {unknown or 'an empty list'}")
    return tuple(dict.fromkeys(methods))
