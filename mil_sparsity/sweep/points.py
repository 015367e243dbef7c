"""Sweep points: a pattern label, a sparsity level and the config that prunes at that level.

:func:`sweep_points` builds them from pattern names:

- ``unstructured``: :class:`~mil_sparsity.MagnitudeConfig` at each level;
- ``block:B``: :class:`~mil_sparsity.BlockConfig` with blocks of ``B`` along ``dim``, at each level;
- ``n:m:N:M``: :class:`~mil_sparsity.NMConfig`; its sparsity is fixed at ``N/M``, so one point.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union, cast

import attrs

from mil_sparsity.errors import InvalidTypeError
from mil_sparsity.configs import BlockConfig, MagnitudeConfig, NMConfig

DEFAULT_SPARSITIES = (0.5, 0.75, 0.9)
PATTERN_HELP = "unstructured, block:B (e.g. block:4) or n:m:N:M (e.g. n:m:3:4)"
SweepConfig = Union[MagnitudeConfig, BlockConfig, NMConfig]


class SweepArgumentError(ValueError):
    """A bad argument of :func:`sweep_points`: ``argument`` names it (``sparsities``, ``dim``,
    ``patterns``, or ``patterns block:1`` when one pattern's numbers make an invalid config),
    ``detail`` says what is wrong with the value and what is allowed."""

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(f"{argument}: {detail}")
        self.argument = argument
        self.detail = detail


@attrs.frozen
class SweepPoint:
    """One run of a sweep: ``config`` prunes to ``sparsity``; ``pattern`` labels its curve."""

    pattern: str
    sparsity: float
    config: SweepConfig

    @classmethod
    def of(cls, config: SweepConfig) -> "SweepPoint":
        """The point of a bare config, labelled as :func:`sweep_points` labels its pattern."""
        if isinstance(config, MagnitudeConfig):
            return cls("unstructured", config.target_sparsity, config)
        if isinstance(config, BlockConfig):
            return cls(f"block:{config.block_size}", config.target_sparsity, config)
        if isinstance(config, NMConfig):
            return cls(f"n:m:{config.n}:{config.m}", config.sparsity, config)
        raise InvalidTypeError(
            "a sweep point's config must be a MagnitudeConfig, BlockConfig or NMConfig (the "
            f"configs of prune_by_magnitude), got {type(config).__name__}"
        )


def _build(argument: str, factory: Callable[..., SweepConfig], **values: Any) -> SweepConfig:
    """A config from the values that are set; its validation error names ``argument``."""
    try:
        return factory(**{key: value for key, value in values.items() if value is not None})
    except (TypeError, ValueError) as error:
        raise SweepArgumentError(argument, str(error)) from None


def pattern_points(
    pattern: str,
    sparsities: Sequence[float],
    *,
    dim: Optional[int] = None,
    weight_threshold: Optional[int] = None,
    scoring: Optional[str] = None,
    method: Optional[str] = None,
) -> list[SweepPoint]:
    """The points of one pattern name (see the module docstring); n:m gives one point.

    ``dim`` is the axis of block and n:m patterns (None: the config's default) and is ignored
    by ``unstructured``. ``scoring`` / ``method``: the configs' fields (None: their defaults;
    block patterns take no method other than "prune"). Raises :class:`SweepArgumentError`
    naming ``patterns`` for an unknown name or a config the name's numbers make invalid, and
    ``scoring`` / ``method`` for values the configs reject.
    """
    parts = [part.strip() for part in pattern.lower().split(":")]
    ranking = {"scoring": scoring, "method": method}
    if scoring is not None or method is not None:
        _build("scoring/method", MagnitudeConfig, target_sparsity=0.5, **ranking)
    if parts in (["unstructured"], ["magnitude"]):
        return [
            SweepPoint(
                "unstructured",
                level,
                _build("sparsities", MagnitudeConfig, target_sparsity=level,
                       weight_threshold=weight_threshold, **ranking),
            )
            for level in sparsities
        ]
    if len(parts) == 2 and parts[0] == "block" and parts[1].isdigit():
        label = f"block:{int(parts[1])}"
        if method not in (None, "prune"):
            raise SweepArgumentError(
                "method", f"pattern {label} with method={method!r}: block configs have no method "
                "(the reconstruction kernels prune unstructured or n:m patterns only)"
            )
        values = {"block_size": int(parts[1]), "dim": dim, "weight_threshold": weight_threshold,
                  "scoring": scoring}
        _build(f"patterns {label}", BlockConfig, target_sparsity=0.5, **values)
        return [
            SweepPoint(
                label, level, _build("sparsities", BlockConfig, target_sparsity=level, **values)
            )
            for level in sparsities
        ]
    if len(parts) == 4 and parts[:2] == ["n", "m"] and parts[2].isdigit() and parts[3].isdigit():
        label = f"n:m:{int(parts[2])}:{int(parts[3])}"
        config = cast(NMConfig, _build(f"patterns {label}", NMConfig, n=int(parts[2]),
                                       m=int(parts[3]), dim=dim, weight_threshold=weight_threshold,
                                       **ranking))
        return [SweepPoint(label, config.sparsity, config)]
    raise SweepArgumentError("patterns", f"unknown pattern {pattern!r}; use {PATTERN_HELP}")


def sweep_points(
    patterns: Sequence[str] = ("unstructured",),
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    dim: Optional[int] = None,
    weight_threshold: Optional[int] = None,
    scoring: Optional[str] = None,
    method: Optional[str] = None,
) -> list[SweepPoint]:
    """Every pattern at every level, in that order; a repeated pattern runs once
    (``scoring`` / ``method``: as :func:`pattern_points`).

    Every level is checked (a fraction in [0, 1]) even if only n:m patterns are given; ``dim``
    needs at least one block or n:m pattern. Raises :class:`SweepArgumentError`.
    """
    for level in sparsities:
        _build("sparsities", MagnitudeConfig, target_sparsity=level)
    points: list[SweepPoint] = []
    seen: set[str] = set()
    for pattern in patterns:
        found = pattern_points(pattern, sparsities, dim=dim, weight_threshold=weight_threshold,
                               scoring=scoring, method=method)
        label = found[0].pattern if found else pattern
        if label not in seen:
            seen.add(label)
            points.extend(found)
    if dim is not None and seen <= {"unstructured"}:
        raise SweepArgumentError(
            "dim", f"only block:B and n:m:N:M patterns have an axis; got dim={dim} with "
            f"patterns {sorted(seen)}"
        )
    return points


__all__ = [
    "DEFAULT_SPARSITIES",
    "PATTERN_HELP",
    "SweepArgumentError",
    "SweepConfig",
    "SweepPoint",
    "pattern_points",
    "sweep_points",
]
