"""How the ops that read a weight use it, for ``dim=None`` and ``scoring="activation"``.

Graph-independent: works on a :class:`~mil_sparsity.model.inventory.Weight` whose consumers carry
their product roles (:mod:`mil_sparsity.model.products`), filled by both rewriters (PyMIL:
``_graph.consumers``; streaming: ``_spec_roles``). Called by the selection
(:func:`mil_sparsity.plan.rules.select`) after every other check, before any value is read:

* :func:`product_use`: the one way the product consumers read the const (reduction axis,
  output axis, groups); ValueError if two ops read it along different axes; a reason if no op
  reads it as a linear/conv/conv_transpose/matmul operand;
* :func:`score_context`: the :class:`~mil_sparsity.plan.scoring.ScoreContext` for a selected config
  (the reduction axis for ``dim=None``; the statistics' channel scale, laid out on the weight,
  and the output rows for activation scoring), a skip reason, or ValueError (no statistics for
  the weight, or a channel count that does not match). (A missing ``calibration`` option is the catalog's check,
  :meth:`mil_sparsity.plan.catalog.PassEntry.check_calibration`.)
"""

from __future__ import annotations

from typing import Optional, Union

import attrs
import numpy as np

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.model.inventory import Weight
from mil_sparsity.calibration.stats import ChannelStats
from mil_sparsity.configs import (
    BlockConfig,
    MagnitudeConfig,
    NMConfig,
    SparsityConfig,
    is_activation_scored,
    is_reconstruction,
    needs_calibration,
)
from mil_sparsity.model.products import NotAProduct, ProductRole
from mil_sparsity.plan.scoring import GramLayout, ScoreContext, grouped_conv_scale, row_layout, scale_digest
from mil_sparsity.format.sparse_format import saved_name


CALIBRATION_OPTION = "calibration"


@attrs.frozen
class ProductUse:
    """What every product consumer of a const agrees on."""

    op_type: str
    weight_axis: int  # the reduction axis
    output_axis: Optional[int]
    groups: int


def _scoring(config: SparsityConfig) -> Optional[str]:
    return getattr(config, "scoring", None)


def needs_roles(config: SparsityConfig) -> bool:
    """True if the config needs the consumers' roles: block / n:m with ``dim=None``,
    activation scoring, or a reconstruction method."""
    if isinstance(config, (BlockConfig, NMConfig)) and config.dim is None:
        return True
    return needs_calibration(config)


def product_use(site: Weight, pass_name: str) -> Union[ProductUse, NotAProduct]:
    """The one product use of ``site`` by its consumers, or why there is none.

    Raises ValueError naming the ops if two of them read the const with different reduction
    axes (or output axes, or conv groups).
    """
    uses: list[tuple[str, ProductRole]] = []
    reasons: list[str] = []
    for consumer in site.consumers:
        for input_name, role in zip(consumer.input_names, consumer.roles):
            if isinstance(role, ProductRole):
                uses.append((consumer.name, role))
            elif isinstance(role, NotAProduct):
                reasons.append(f"{consumer.name!r}: {role.reason}")
            else:
                reasons.append(f"{consumer.name!r}: {consumer.op_type}.{input_name} has no known role")
    if not uses:
        return NotAProduct("; ".join(reasons) or "no op reads it")
    distinct = {(role.weight_axis, role.output_axis, _channel_groups(role)) for _, role in uses}
    if len(distinct) > 1:
        readers = ", ".join(f"{name!r} ({role.description})" for name, role in uses)
        raise InvalidInputError(
            f"{pass_name}: const {site.name!r} (function {site.function!r}) is read along "
            f"different reduction axes (or output axes, or conv groups) by {readers}; dim=None "
            f"and scoring='activation' need one. Give it its own config with an explicit dim and scoring='magnitude' through "
            f"op_name_configs[{site.name!r}]."
        )
    first = uses[0][1]
    return ProductUse(first.op_type, first.weight_axis, first.output_axis, _channel_groups(first))


def _channel_groups(role: ProductRole) -> int:
    """The groups of a conv (they decide which activation channels an output channel meets)
    or a conv_transpose (they split its output rows, though row i always meets channel i)."""
    return role.groups if role.op_type in ("conv", "conv_transpose") else 1


def score_context(
    site: Weight,
    config: SparsityConfig,
    source: str,
    pass_name: str,
    calibration: Optional[ActivationStats],
) -> Union[ScoreContext, str, None]:
    """The context a selected config runs with, a skip reason (str), or None (none needed)."""
    if not needs_roles(config):
        return None
    use = product_use(site, pass_name)
    activation = is_activation_scored(config)
    if isinstance(use, NotAProduct):
        if is_reconstruction(config):
            return (
                f"method={getattr(config, 'method', None)!r} needs a weight read as a linear/conv/matmul "
                f"operand ({use.reason}); give it its own config with method='prune' through the "
                f"selector (op_name_configs[{site.name!r}])"
            )
        if activation:
            return (
                f"scoring='activation' needs a weight read as a linear/conv/conv_transpose/matmul "
                f"operand ({use.reason}); give it its own magnitude config through the selector "
                f"(op_name_configs[{site.name!r}])"
            )
        return (
            f"dim=None is the reduction axis of the op reading the weight, but no op reads it as "
            f"a linear/conv/conv_transpose/matmul operand ({use.reason}); set dim through the "
            f"selector (op_name_configs[{site.name!r}])"
        )
    dim = getattr(config, "dim", None)
    axis = use.weight_axis if dim is None and isinstance(config, (BlockConfig, NMConfig)) else None
    if is_reconstruction(config):
        return gram_context(site, config, use, source, pass_name, calibration)
    if not activation:
        return ScoreContext(axis=axis)
    stats = _statistics(site, "scoring='activation'", source, pass_name, calibration)
    scale = stats.channel_scale()
    shape = site.shape
    grouped = use.op_type == "conv" and use.groups > 1
    expected = use.groups * shape[1] if grouped else shape[use.weight_axis]
    if stats.channels != expected or (grouped and shape[0] % use.groups):
        detail = (
            f"conv groups {use.groups} x weight.shape[1] {shape[1]}"
            if grouped
            else f"weight.shape[{use.weight_axis}]"
        )
        raise InvalidInputError(
            f"{pass_name}: const {site.name!r} (function {site.function!r}): the calibration "
            f"statistics have {stats.channels} channels, expected {expected} ({detail} of "
            f"shape {list(shape)})"
        )
    if grouped:
        scale = grouped_conv_scale(scale, shape, use.groups)
    scale = scale.astype(np.float32, copy=False)
    output_axis = use.output_axis if use.output_axis is not None else 0
    return ScoreContext(
        axis=axis,
        scale=scale,
        scale_axis=use.weight_axis,
        rows=row_layout(use.op_type, shape, output_axis, use.groups),
        scale_digest=scale_digest(scale),
    )


def _statistics(
    site: Weight, what: str, source: str, pass_name: str, calibration: Optional[ActivationStats]
) -> ChannelStats:
    """The statistics of ``site`` (under its own or its saved name), or ValueError naming it."""
    if calibration is None:  # the pass checks this up front; kept for direct callers
        raise InvalidInputError(f"{pass_name}: {what} needs the pass option {CALIBRATION_OPTION!r}")
    stats = calibration.get(site.name, site.function)
    if stats is None and saved_name(site.name) != site.name:
        stats = calibration.get(saved_name(site.name), site.function)
    if stats is None:
        raise InvalidInputError(
            f"{pass_name}: const {site.name!r} (function {site.function!r}) is selected with "
            f"{what} ({source}) but the calibration statistics have no entry for "
            f"it; collect them on a model with the same const names, or give it a magnitude "
            f"config through op_name_configs[{site.name!r}]"
        )
    return stats


def gram_context(
    site: Weight,
    config: SparsityConfig,
    use: ProductUse,
    source: str,
    pass_name: str,
    calibration: Optional[ActivationStats],
) -> ScoreContext:
    """The context of a reconstruction method: the weight's Gram matrix and how the weight
    becomes the kernels' ``[out, in]`` (:class:`~mil_sparsity.plan.scoring.GramLayout`).
    ValueError naming the const for what the kernels cannot reconstruct (conv_transpose,
    batched matmul consts, an n:m ``dim`` other than the reduction axis) and for statistics
    without a (finite, well-shaped) Gram matrix."""
    method = getattr(config, "method", None)
    what = f"method={method!r}"
    where = f"{pass_name}: const {site.name!r} (function {site.function!r})"
    shape = site.shape
    if use.op_type == "conv_transpose":
        raise InvalidInputError(
            f"{where} is a conv_transpose weight; {what} reconstructs linear, conv and 2-D "
            f"matmul weights only. Give it method='prune' through op_name_configs[{site.name!r}]"
        )
    if use.op_type == "matmul" and len(shape) != 2:
        raise InvalidInputError(
            f"{where} is a rank-{len(shape)} matmul operand of shape {list(shape)}; {what} "
            f"reconstructs 2-D matmul operands only (each batch slice would need its own Gram "
            f"matrix). Give it method='prune' through op_name_configs[{site.name!r}]"
        )
    if isinstance(config, NMConfig) and config.dim is not None and config.dim % len(shape) != use.weight_axis:
        raise InvalidInputError(
            f"{where}: NMConfig.dim={config.dim} with {what}; the reconstruction kernels prune n "
            f"of every m along the reduction axis ({use.weight_axis}); allowed: dim=None or "
            f"dim={use.weight_axis}"
        )
    if (
        isinstance(config, NMConfig) and use.op_type == "conv" and len(shape) > 2
        and int(np.prod(shape[2:], dtype=np.int64)) > 1 and shape[1] >= config.m and shape[1] % config.m
    ):
        raise InvalidInputError(
            f"{where}: NMConfig(m={config.m}) with {what} on a conv weight of shape {list(shape)}: "
            f"the n:m groups run along its {shape[1]} input channels per kernel tap, which must "
            f"be a multiple of m; allowed: m dividing {shape[1]}, or method='prune'"
        )
    stats = _statistics(site, what, source, pass_name, calibration)
    gram = stats.gram
    if gram is None:
        raise InvalidInputError(
            f"{where} is selected with {what} ({source}) but its calibration statistics have no "
            f"Gram matrix; collect them with collect_activation_stats(..., gram=True) or "
            f"`mil-sparsity calibrate --gram`"
        )
    groups = use.groups if use.op_type == "conv" else 1
    columns = shape[use.weight_axis] if use.op_type == "matmul" else int(np.prod(shape[1:], dtype=np.int64))
    expected = (columns, columns) if groups == 1 else (groups, columns, columns)
    if gram.shape != expected and not (groups == 1 and gram.shape == (1, columns, columns)):
        raise InvalidInputError(
            f"{where}: the calibration Gram matrix has shape {list(gram.shape)}, expected "
            f"{list(expected)} for a {use.op_type} weight of shape {list(shape)}"
            + (f" with {groups} groups" if groups > 1 else "")
        )
    if not bool(np.all(np.isfinite(gram))):
        raise InvalidInputError(
            f"{where}: the calibration Gram matrix has non-finite entries (NaN or inf); allowed: "
            f"finite values. Recollect the statistics (an activation overflowed or was NaN)"
        )
    layout = GramLayout(transpose=use.op_type == "matmul" and use.weight_axis == 0, groups=groups)
    axis = use.weight_axis if isinstance(config, NMConfig) else None
    return ScoreContext(axis=axis, gram=gram, gram_layout=layout, gram_digest=scale_digest(gram))


def scoring_of(config: Optional[SparsityConfig]) -> Optional[str]:
    """The scoring a config ranks by (None for configs that do not rank: threshold, pack)."""
    if isinstance(config, (MagnitudeConfig, BlockConfig, NMConfig)):
        return config.scoring
    return None
