"""Sequential calibration: each weight's statistics from the model as pruned before it.

Ordinary calibration records every weight's statistics on the dense model, so SparseGPT / ADMM
reconstruct each layer for the inputs it has in the dense model. Sequentially (SparseGPT's
"sequential" mode), the statistics of a weight ``w`` come from the activations of the model in
which every weight that ``w``'s input depends on already holds the value the pass will store
for it, so a layer is reconstructed for the inputs it will actually see.

:func:`sequential_stats` (reached through ``collect_activation_stats(..., sequential=config)``):

1. ``config`` is split per pass as :func:`mil_sparsity.prune_weights` splits it; every weight
   of the function is selected by the pass's own rules (:func:`~mil_sparsity.plan.rules.select`).
   A weight whose config needs no statistics (magnitude scoring, threshold) gets its pruned
   value up front; the weights whose config needs statistics are the *targets*.
2. The targets are ordered in waves (a topological levelling over the top-level ops): a wave
   holds every target whose input depends on no target still to be pruned, so weights that read
   the same activation (q/k/v) share one wave, and later waves follow what they read.
3. Per wave, every sample runs once from cached activations: the values live just before the
   wave's first reader (:meth:`ReferenceEvaluator.cut_before`) are computed from the previous
   wave's, with every pruned weight given as an evaluator override (nothing is rebuilt); the
   run stops after the wave's readers (``outputs=``), the capture hook recording the statistics
   of the wave's weights as :func:`~mil_sparsity.calibration.collect.collect_activation_stats`
   does. Then each weight of the wave is pruned with the pass's own rules
   (:func:`~mil_sparsity.plan.rules.run_selected`) from those statistics, and the result
   overrides it for the waves that follow. A whole calibration costs about one forward pass
   plus each wave's readers once more.

The statistics of a weight never change after its wave, so ``prune_weights(model, config,
calibration=stats)`` stores exactly the values the later waves were computed with (PyMIL and
streaming paths alike). The result holds entries for the targets only; reuse it with the same
``config``. Memory: the samples, one set of cached activations per sample, and a dense copy of
every pruned weight (the overrides).

A target read inside a nested block (cond, while_loop) makes its wave run from the function
inputs (the cut is top-level only); a weight whose input depends on itself (a loop body) gets
statistics from its dense value, as ordinary calibration does. Stateful models are refused:
a state's reads and writes do not survive runs in pieces.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import attrs
import numpy as np

from mil_sparsity.calibration.collect import Sites, site_statistics, source_names
from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.configs import is_reconstruction, needs_calibration
from mil_sparsity.errors import InvalidInputError, InvalidTypeError, MilSparsityError
from mil_sparsity.kernels import SparseWeight
from mil_sparsity.model.inventory import ProgramWeight, function_weights
from mil_sparsity.plan import catalog
from mil_sparsity.plan.pipeline import rules_of
from mil_sparsity.plan.rules import Decision, PassRules, resolve, run_selected, select
from mil_sparsity.progress import progress_bar
from mil_sparsity.selector import OpSelector, as_selector

Sample = Mapping[str, Any]


@attrs.frozen(eq=False)
class Target:
    """A weight whose config needs statistics: the pass's selector and rules for it, its
    position (``bit``) among the targets and the top-level ops that read it."""

    item: ProgramWeight
    selector: OpSelector
    rules: PassRules
    bit: int
    readers: tuple[int, ...]

    @property
    def name(self) -> str:
        """The name its statistics are kept under (and the pass looks up)."""
        return self.item.source_name

    @property
    def value_name(self) -> str:
        """The name of its value (overrides, cuts)."""
        return str(self.item.op.outputs[0].name)

    @property
    def top_level(self) -> bool:
        """Held by the function itself, not a nested block (cuts are top-level only)."""
        return self.item.block.outer_op is None


class TopLevel:
    """The top-level ops of a function: which one holds (runs) each op, nested ones included,
    and the ids of the values each reads, those read inside its blocks included."""

    def __init__(self, function: Any) -> None:
        from mil_sparsity.reference.planning import flat_inputs, walk  # lazy, as the evaluator is

        self.ops = list(function.operations)
        self.owner: dict[int, int] = {}
        self.reads: list[set[int]] = []
        for index, op in enumerate(self.ops):
            inner = [op, *(nested for block in op.blocks for nested in walk(block))]
            for held in inner:
                self.owner[id(held)] = index
            self.reads.append({id(var) for held in inner for var in flat_inputs(held)})

    def readers(self, var: Any) -> tuple[int, ...]:
        return tuple(sorted({self.owner[id(op)] for op in var.child_ops if id(op) in self.owner}))

    def input_dependencies(self, targets: Sequence[Target]) -> list[int]:
        """Per top-level op, the bits of the targets its inputs depend on (an int bitmask)."""
        held_bits: dict[int, int] = {}
        for target in targets:
            index = self.owner[id(target.item.op)]
            held_bits[index] = held_bits.get(index, 0) | (1 << target.bit)
        depends: dict[int, int] = {}
        result = []
        for index, op in enumerate(self.ops):
            mask = 0
            for var_id in self.reads[index]:
                mask |= depends.get(var_id, 0)
            result.append(mask)
            for var in op.outputs:
                depends[id(var)] = mask | held_bits.get(index, 0)
        return result


def waves(targets: Sequence[Target], graph: TopLevel) -> list[list[Target]]:
    """The targets in waves: each wave holds every target left whose input depends on no target
    left (itself excepted), in order of first reader; when none is free (two targets feeding
    each other's reader), the first left goes alone."""
    inputs = graph.input_dependencies(targets)
    depends = {
        target.bit: _or(inputs[index] for index in target.readers) & ~(1 << target.bit) for target in targets
    }
    left = sorted(targets, key=lambda target: (target.readers[0], target.bit))
    result: list[list[Target]] = []
    while left:
        pending = _or(1 << target.bit for target in left)
        wave = [target for target in left if not depends[target.bit] & pending] or left[:1]
        result.append(wave)
        chosen = {id(target) for target in wave}
        left = [target for target in left if id(target) not in chosen]
    return result


def _or(masks: Iterable[int]) -> int:
    total = 0
    for mask in masks:
        total |= mask
    return total


def check_sequential_config(config: Any, gram: bool) -> list[tuple[catalog.PassEntry, OpSelector]]:
    """``config`` as :func:`mil_sparsity.prune_weights` takes it, split per pass; ValueError if
    nothing in it reads statistics, if it holds pack configs, or if a reconstruction method
    lacks ``gram``."""
    selector = as_selector(config)
    parts = catalog.split_by_pass(selector)
    if any(entry is catalog.SPARSE_PACK for entry, _ in parts):
        raise InvalidInputError(
            "sequential: config holds pack configs (PackConfig), which prune nothing; give the "
            "config prune_weights will run"
        )
    used = [(where, config) for where, config in selector.entries() if config is not None]
    if not any(needs_calibration(config) for _, config in used):
        raise InvalidInputError(
            "sequential: no config in it reads calibration statistics (none has "
            "scoring='activation' or method='sparsegpt'/'admm'), so pruning it needs no "
            f"calibration, sequential or not; configs: {[f'{where} = {config}' for where, config in used]}"
        )
    for where, config in used:
        if is_reconstruction(config) and not gram:
            raise InvalidInputError(
                f"sequential: {where} has method={getattr(config, 'method', None)!r}, which "
                "needs Gram matrices: pass gram=True (`mil-sparsity calibrate --gram`)"
            )
    return parts


def sample_list(samples: Iterable[Any]) -> list[Sample]:
    """The samples as a list of input dicts (a list or tuple item, one sequence of a stateless
    model, counts as its samples); TypeError naming a bad item, ValueError if there is none."""
    flat: list[Sample] = []
    for index, item in enumerate(samples):
        group = item if isinstance(item, (list, tuple)) else [item]
        for sample in group:
            if not isinstance(sample, Mapping):
                raise InvalidTypeError(
                    f"samples[{index}]: expected an input dict or a list of them (one sequence), "
                    f"got {type(sample).__name__}"
                )
            flat.append(sample)
    if not flat:
        raise InvalidInputError("samples: need at least one calibration sample, got none")
    return flat


def pruned_value(
    item: ProgramWeight, selector: OpSelector, rules: PassRules, stats: Optional[ActivationStats]
) -> Optional[np.ndarray]:
    """The dense value the pass stores for ``item`` (None: it would leave it as it is)."""
    chosen = select(item.weight, selector, rules, stats)
    if isinstance(chosen, Decision):
        return None
    outcome = run_selected(chosen, np.asarray(item.op.outputs[0].val)).outcome
    return outcome.dense() if isinstance(outcome, SparseWeight) else None


def sequential_stats(
    model: Any,
    samples: Iterable[Any],
    config: Any,
    *,
    function_name: str = "main",
    gram: bool = False,
    progress: Optional[bool] = None,
) -> ActivationStats:
    """The statistics ``prune_weights(model, config, calibration=...)`` reads, each weight's from
    the model with the weights before it already pruned (see the module doc). ``config``:
    anything :func:`mil_sparsity.prune_weights` takes."""
    parts = check_sequential_config(config, gram)
    from mil_sparsity.reference import ReferenceEvaluator  # lazy, as collect's

    evaluator = ReferenceEvaluator(model, function_name=function_name)
    if evaluator.state_specs:
        raise InvalidInputError(
            f"sequential: function {function_name!r} has states "
            f"{[spec.name for spec in evaluator.state_specs]}; sequential calibration runs the "
            "model in pieces, which a state's reads and writes do not survive. Collect its "
            "statistics with sequential=None"
        )
    inputs = sample_list(samples)
    function = evaluator.program.functions[function_name]
    graph = TopLevel(function)
    overrides, targets = _targets(function_name, function, parts, graph)
    stats = ActivationStats()
    sites_of = Sites(source_names(function_name, function))
    starts: list[dict[str, np.ndarray]] = [{} for _ in inputs]
    for wave in progress_bar(waves(targets, graph), desc="calibrate (sequential)", enabled=progress):
        names = {target.name for target in wave}
        top_level = all(target.top_level for target in wave)
        cut = evaluator.cut_before([target.value_name for target in wave]) if top_level else ()
        readers = {index for target in wave for index in target.readers}
        stops = sorted({str(var.name) for index in readers for var in graph.ops[index].outputs})

        def capture(op: Any, args: Mapping[str, Any], outputs: tuple[Any, ...]) -> None:
            for site in sites_of(op):
                if site.weight_name in names:
                    stats.add(function_name, site.weight_name, *site_statistics(site, args, gram))

        for index, sample in enumerate(inputs):
            try:
                # the cut is before every reader of this wave and of the waves after it
                if cut:
                    starts[index] = evaluator.run(
                        sample, start=starts[index] or None, overrides=overrides, outputs=list(cut)
                    )
                else:
                    starts[index] = {}
                evaluator.run(sample, capture, start=starts[index] or None, overrides=overrides, outputs=stops)
            except MilSparsityError as error:
                raise type(error)(f"samples[{index}]: {error}") from error
        for target in wave:
            value = pruned_value(target.item, target.selector, target.rules, stats)
            if value is not None:
                overrides[target.value_name] = value
    return stats


def _targets(
    function_name: str, function: Any, parts: Sequence[tuple[catalog.PassEntry, OpSelector]], graph: TopLevel
) -> tuple[dict[str, np.ndarray], list[Target]]:
    """The pruned values of the weights whose config needs no statistics, and the targets."""
    overrides: dict[str, np.ndarray] = {}
    targets: list[Target] = []
    for item in function_weights(function_name, function):
        if item.weight.compressed:
            continue
        for entry, selector in parts:
            rules = rules_of(entry)
            try:
                value = pruned_value(item, selector, rules, None)
            except InvalidInputError:
                # what select raises without statistics; a config that needs them makes a
                # target (any other error resurfaces when its wave selects it again)
                readers = graph.readers(item.op.outputs[0])
                config, _, _ = resolve(item.weight, selector, rules)  # a conflict raises here
                if not needs_calibration(config) or not readers:
                    raise
                targets.append(Target(item, selector, rules, len(targets), readers))
                continue
            if value is not None:
                overrides[str(item.op.outputs[0].name)] = value
    return overrides, targets

