"""Which weights a pass packs, and why not the others: the one implementation of the rules.

Both the PyMIL passes and the streaming package rewriter read each const from the weight
inventory (:class:`~mil_sparsity.model.inventory.Weight`: plain data: name, shape, dtype, who
reads it) and call :func:`select`, then :func:`run_selected`.
Nothing here touches a program or a file; the weight's value is loaded through a callable and
only when a handler needs it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Union

import attrs
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.configs import BlockConfig, NMConfig, SparsityConfig, config_to_dict
from mil_sparsity.plan.handlers import Skip, method_of, run_handler
from mil_sparsity.kernels import SparseWeight, zero_fraction
from mil_sparsity.model.inventory import Weight, is_constexpr
from mil_sparsity.model.products import WEIGHT_OPERANDS
from mil_sparsity.report import PACKED, SKIPPED, WeightRecord
from mil_sparsity.plan.scoring import ScoreContext
from mil_sparsity.selector import OpSelector
from mil_sparsity.format.sparse_format import saved_name
from mil_sparsity.model.weight_roles import score_context, scoring_of

# (consumer op type, input names) that structured sparsity applies to by default: the weight
# operands of the product ops
STRUCTURED_SCOPE: dict[str, frozenset[str]] = {op: frozenset(inputs) for op, inputs in WEIGHT_OPERANDS.items()}

# skipped weights up to this size get their current sparsity in the report
_CHEAP_SPARSITY_SIZE = 1 << 16

ValueLoader = Callable[[], NDArray[Any]]


@attrs.frozen
class PassRules:
    """What differs between passes: their name, configs and weight dtypes."""

    pass_name: str
    accepted_configs: tuple[type[SparsityConfig], ...]
    supported_dtypes: frozenset[str]


class PackedSummary(Protocol):
    """What the report needs of a packed outcome that is not held whole in memory (streaming's
    chunked weights, :mod:`mil_sparsity.streaming.chunked`)."""

    @property
    def sparsity(self) -> float: ...

    @property
    def packed_nbytes(self) -> int: ...


@attrs.frozen
class Decision:
    """The outcome for one weight: its sparse form (whole, or summarised), or a skip with the reason."""

    outcome: Union[SparseWeight, Skip, PackedSummary]
    config: Optional[SparsityConfig] = None
    source: str = ""
    axis: Optional[int] = None  # the block / n:m axis, or the axis activation scores scale
    scoring: Optional[str] = None  # the scoring the handler ran with (None: no handler ran)
    method: Optional[str] = None  # how the handler chose the stored values (None: none ran)


def check_selector(selector: OpSelector, rules: PassRules) -> OpSelector:
    """ValueError if any config in the selector is of a kind the pass does not take."""
    accepted = ", ".join(cls.__name__ for cls in rules.accepted_configs)
    for where, config in selector.entries():
        if config is not None and not isinstance(config, rules.accepted_configs):
            raise InvalidInputError(
                f"{rules.pass_name} takes {accepted}; {where} is a {type(config).__name__}"
            )
    return selector


def resolve(site: Weight, selector: OpSelector, rules: PassRules) -> tuple[Optional[SparsityConfig], str, bool]:
    """One config for the const, or ValueError if its consumers' configs differ.

    Configs that would not consider the weight anyway (None, or weight_threshold not exceeded)
    count as None when comparing, so a tiny const shared by differently configured ops is no
    conflict.
    """
    resolutions = [
        (consumer, selector.resolve(site.name, consumer.name, consumer.op_type))
        for consumer in site.consumers
    ]

    def effective(config: Optional[SparsityConfig]) -> Optional[SparsityConfig]:
        if config is None or site.size <= config.weight_threshold:
            return None
        return config

    first_consumer, first = resolutions[0]
    for consumer, other in resolutions[1:]:
        if effective(other.config) != effective(first.config):
            raise InvalidInputError(
                f"{rules.pass_name}: const {site.name!r} is shared by ops {first_consumer.name!r} "
                f"({first_consumer.op_type}, {first.source} = {first.config}) and "
                f"{consumer.name!r} ({consumer.op_type}, {other.source} = {other.config}), whose "
                f"configs differ. Give the const one config with op_name_configs[{site.name!r}]."
            )
    by_name = all(resolution.by_name for _, resolution in resolutions)
    return first.config, first.source, by_name


def in_structured_scope(site: Weight) -> bool:
    """True if every consumer reads the const as a conv/linear weight or a matmul operand."""
    for consumer in site.consumers:
        allowed = STRUCTURED_SCOPE.get(consumer.op_type)
        if allowed is None or not set(consumer.input_names) <= allowed:
            return False
    return True


@attrs.frozen
class Selected:
    """A weight that passed every check that needs no value: its config and where it came from."""

    config: SparsityConfig
    source: str
    context: Optional[ScoreContext] = None

    @property
    def axis(self) -> Optional[int]:
        """The axis the report shows: the block / n:m axis, else the activation scale's axis."""
        config, context = self.config, self.context
        if isinstance(config, (BlockConfig, NMConfig)):
            return config.dim if config.dim is not None else (None if context is None else context.axis)
        return None if context is None or context.scale is None else context.scale_axis


def select(
    site: Weight,
    selector: OpSelector,
    rules: PassRules,
    calibration: Optional[ActivationStats] = None,
) -> Decision | Selected:
    """Every check that needs no weight value, cheapest first: a skip, or the config to run.

    Last, for ``dim=None`` and activation scoring, the consumers' reduction axis and the
    calibration statistics (:func:`mil_sparsity.model.weight_roles.score_context`). Raises ValueError
    for a config conflict between consumers, a const read along different reduction axes, and
    an activation-scored weight without statistics (or with the wrong channel count).
    """
    if site.feeds_block_output:
        return Decision(Skip("feeds a block output directly"))
    constexpr_users = sorted(t for t in site.consumer_types if is_constexpr(t))
    if constexpr_users:
        return Decision(Skip(f"already feeds {constexpr_users[0]}"))
    if not site.consumers:
        return Decision(Skip("not used by any op"))
    if site.rank <= 1:
        return Decision(Skip(f"rank {site.rank} const (only rank >= 2 is sparsified)"))
    config, source, by_name = resolve(site, selector, rules)
    if config is None:
        return Decision(Skip(f"no config selected ({source} is None)"), None, source)
    if site.size <= config.weight_threshold:
        return Decision(
            Skip(f"{site.size} elements <= weight_threshold {config.weight_threshold}"), config, source
        )
    if site.dtype not in rules.supported_dtypes:
        allowed = ", ".join(sorted(rules.supported_dtypes))
        return Decision(Skip(f"dtype {site.dtype} not handled by this pass (handles {allowed})"), config, source)
    if config.structured and not by_name and not in_structured_scope(site):
        return Decision(
            Skip(
                f"{config.kind} sparsity applies by default only to conv/conv_transpose/linear "
                "weights and constant matmul operands; select this const by name to force it"
            ),
            config,
            source,
        )
    context = score_context(site, config, source, rules.pass_name, calibration)
    if isinstance(context, str):
        return Decision(Skip(context), config, source)
    return Selected(config, source, context)


def run_selected(selected: Selected, value: NDArray[Any]) -> Decision:
    """Run the selected config's handler on the weight's value (with its score context, if any)."""
    config = selected.config
    outcome = run_handler(value, config) if selected.context is None else run_handler(value, config, selected.context)
    return Decision(outcome, config, selected.source, selected.axis, scoring_of(config), method_of(config))


def decide(
    site: Weight,
    selector: OpSelector,
    rules: PassRules,
    load: ValueLoader,
    calibration: Optional[ActivationStats] = None,
) -> Decision:
    """:func:`select`, then the handler on the loaded value if the weight was selected."""
    chosen = select(site, selector, rules, calibration)
    return chosen if isinstance(chosen, Decision) else run_selected(chosen, load())


def record(site: Weight, decision: Decision, rules: PassRules, load: ValueLoader) -> WeightRecord:
    """The report row for one decision (a small skipped weight's current sparsity is measured).

    The row names the weight as the saved model does (:func:`saved_name`): inside ct.convert
    the pass sees names the backend later rewrites (``model.fc.weight`` -> ``model_fc_weight``).
    """
    outcome = decision.outcome
    common: dict[str, Any] = dict(
        pass_name=rules.pass_name,
        function=site.function,
        name=saved_name(site.name),
        shape=site.shape,
        dtype=site.dtype,
        consumer_types=site.consumer_types,
        config=None if decision.config is None else config_to_dict(decision.config),
        dense_bytes=site.nbytes,
        axis=None if decision.axis is None else decision.axis % max(site.rank, 1),
        scoring=decision.scoring,
        method=decision.method,
    )
    if isinstance(outcome, Skip):
        sparsity = outcome.sparsity
        if sparsity is None and site.size <= _CHEAP_SPARSITY_SIZE:
            sparsity = zero_fraction(load())
        return WeightRecord(decision=SKIPPED, reason=outcome.reason, sparsity=sparsity, packed_bytes=None, **common)
    return WeightRecord(
        decision=PACKED,
        reason=f"config from {decision.source}",
        sparsity=outcome.sparsity,
        packed_bytes=outcome.packed_nbytes,
        **common,
    )
