"""Translate coremltools' ``OptimizationConfig`` of pruner configs into OpSelector fields.

Field by field, so a coremltools user switches from ``compression::prune_weights`` by changing
the pass name only:

- ``OpThresholdPrunerConfig(threshold, minimum_sparsity_percentile, weight_threshold)``
  -> :class:`ThresholdConfig` with the same fields;
- ``OpMagnitudePrunerConfig(target_sparsity=s)`` -> :class:`MagnitudeConfig`;
- ``OpMagnitudePrunerConfig(target_sparsity=s, block_size=b, dim=d)`` -> :class:`BlockConfig`
  (dim defaults to 0 as in coremltools, set explicitly: our own default is the reduction axis);
- ``OpMagnitudePrunerConfig(n_m_ratio=(n, m), dim=d)`` -> :class:`NMConfig` (dim defaults to 1,
  set explicitly).

A ``weight_threshold`` of None takes coremltools' documented default, 2048. This module knows
configs only (not OpSelector), so ``selector`` can import it without a cycle.
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.configs import (
    DEFAULT_WEIGHT_THRESHOLD,
    BlockConfig,
    MagnitudeConfig,
    NMConfig,
    SparsityConfig,
    ThresholdConfig,
)


def is_coremltools_config(value: object) -> bool:
    try:
        from coremltools.optimize.coreml import OptimizationConfig
    except ImportError:  # pragma: no cover - coremltools is a hard dependency
        return False
    return isinstance(value, OptimizationConfig)


def _weight_threshold(value: Optional[int]) -> int:
    return DEFAULT_WEIGHT_THRESHOLD if value is None else int(value)


def config_from_coremltools(op_config: Any, where: str) -> Optional[SparsityConfig]:
    """One coremltools op config -> one of ours (None stays None)."""
    from coremltools.optimize.coreml import OpMagnitudePrunerConfig, OpThresholdPrunerConfig

    if op_config is None:
        return None
    if isinstance(op_config, OpThresholdPrunerConfig):
        return ThresholdConfig(
            threshold=op_config.threshold,
            minimum_sparsity_percentile=op_config.minimum_sparsity_percentile,
            weight_threshold=_weight_threshold(op_config.weight_threshold),
        )
    if isinstance(op_config, OpMagnitudePrunerConfig):
        weight_threshold = _weight_threshold(op_config.weight_threshold)
        if op_config.n_m_ratio is not None:
            n, m = op_config.n_m_ratio
            dim = 1 if op_config.dim is None else op_config.dim
            return NMConfig(n=n, m=m, dim=dim, weight_threshold=weight_threshold)
        if op_config.block_size is not None:
            dim = 0 if op_config.dim is None else op_config.dim
            return BlockConfig(
                target_sparsity=op_config.target_sparsity,
                block_size=op_config.block_size,
                dim=dim,
                weight_threshold=weight_threshold,
            )
        return MagnitudeConfig(
            target_sparsity=op_config.target_sparsity, weight_threshold=weight_threshold
        )
    raise InvalidInputError(
        f"{where}: only OpThresholdPrunerConfig and OpMagnitudePrunerConfig can be translated, "
        f"got {type(op_config).__name__}"
    )


class SelectorFields(TypedDict):
    """The three levels of an OpSelector (its constructor's keyword arguments)."""

    global_config: Optional[SparsityConfig]
    op_type_configs: dict[str, Optional[SparsityConfig]]
    op_name_configs: dict[str, Optional[SparsityConfig]]


def selector_fields_from_coremltools(config: Any) -> SelectorFields:
    """coremltools ``OptimizationConfig`` -> OpSelector fields with the same three levels."""
    return SelectorFields(
        global_config=config_from_coremltools(config.global_config, "global_config"),
        op_type_configs={
            key: config_from_coremltools(value, f"op_type_configs[{key!r}]")
            for key, value in (config.op_type_configs or {}).items()
        },
        op_name_configs={
            key: config_from_coremltools(value, f"op_name_configs[{key!r}]")
            for key, value in (config.op_name_configs or {}).items()
        },
    )
