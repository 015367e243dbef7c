"""Probes: what pruning one weight alone does to the model's outputs.

A probe of weight w at a setting s computes w's pruned value exactly as
``prune_by_magnitude`` would (the selection rules and handler of the pass, with the config
:meth:`Setting.config` gives for the first method in the preference order that applies to w),
then evaluates the model on every sample with that value as an override of w (no program is
rebuilt) and compares the outputs with the dense model's. Before the first probe of w, each
sample is run once up to the values live just before w's first reader
(:meth:`ReferenceEvaluator.cut_before`); every probe of w starts from there, so it costs only
the part of the model downstream of w.

One task per weight (:func:`probe_weight`), a pure function of a picklable :class:`ProbeJob` and
the weight's name: the same computation runs in this process, in joblib workers or on a dask
cluster, so the results are the same for every ``n_jobs`` and backend. A worker loads the model
from ``ProbeJob.model_path`` once and keeps it for the next task of the same job.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import attrs
import numpy as np

from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.errors import InvalidInputError
from mil_sparsity.fit.allocate import Options
from mil_sparsity.fit.settings import Setting
from mil_sparsity.kernels import SparseWeight
from mil_sparsity.kernels.palettize import palettized_kept_values, pruned_nbytes
from mil_sparsity.model.inventory import ProgramWeight, program_weights
from mil_sparsity.plan import catalog
from mil_sparsity.plan.pipeline import rules_of
from mil_sparsity.plan.rules import Decision, Selected, run_selected, select
from mil_sparsity.quality import QualityReport, summarise
from mil_sparsity.reference import ReferenceEvaluator
from mil_sparsity.selector import OpSelector

Sample = Mapping[str, np.ndarray]


@attrs.frozen
class ProbeRow:
    """One probe: ``weight`` (saved name) pruned alone with ``pattern`` at ``sparsity`` by
    ``method`` gives a worst-output mean cosine of ``quality`` and stores ``nbytes``
    (``dense_nbytes`` unpruned)."""

    weight: str
    pattern: str
    sparsity: float
    method: str
    quality: float
    nbytes: int
    dense_nbytes: int
    setting: Setting
    measured: bool = True  # False: predicted by the prior (see :mod:`.prior`), not probed

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, filter=lambda attribute, _: attribute.name != "setting")
        data["setting"] = self.setting.label
        return data


@attrs.frozen(eq=False)
class ProbeJob:
    """Everything a probe task needs; pickled to workers."""

    model_path: str
    function_name: str
    samples: tuple[Sample, ...]
    reference_outputs: tuple[Mapping[str, np.ndarray], ...]
    settings: tuple[Setting, ...]
    methods: tuple[str, ...]
    calibration: Optional[ActivationStats] = None
    palettize_nbits: Optional[int] = None  # joint sparse + palettized storage (see :mod:`.joint`)


@attrs.frozen
class Choice:
    """A weight's pruned value at one setting, as the pass computes it."""

    setting: Setting
    method: str
    outcome: SparseWeight
    config: Any

    def dense(self, palettize_nbits: Optional[int] = None) -> np.ndarray:
        """The value the model will hold: the pruned value, with its kept values palettized
        to ``palettize_nbits`` when given."""
        value = self.outcome.dense()
        if palettize_nbits is None:
            return value
        return palettized_kept_values(value, palettize_nbits, self.outcome.mask)

    def nbytes(self, palettize_nbits: Optional[int] = None) -> int:
        """Stored bytes of that value (sparse, or joint sparse + palettized)."""
        data = self.outcome.nonzero_data
        return pruned_nbytes(int(data.size), int(self.outcome.mask.size), data.dtype.itemsize, palettize_nbits)


_LOADED: dict[tuple[str, str], tuple[ReferenceEvaluator, dict[str, ProgramWeight]]] = {}


def loaded(model_path: str, function_name: str) -> tuple[ReferenceEvaluator, dict[str, ProgramWeight]]:
    """The evaluator of ``model_path`` and its dense weights by name, loaded once per process
    (the last model only: a worker serves one fit at a time)."""
    key = (model_path, function_name)
    if key not in _LOADED:
        _LOADED.clear()
        evaluator = ReferenceEvaluator(model_path, function_name=function_name)
        found = {
            item.weight.name: item
            for item in program_weights(evaluator.program)
            if item.weight.function == function_name and not item.weight.compressed
        }
        _LOADED[key] = (evaluator, found)
    return _LOADED[key]


def forget_loaded() -> None:
    """Drop the models this process keeps for probes."""
    _LOADED.clear()


_RULES = rules_of(catalog.PRUNE_BY_MAGNITUDE)


def choose(item: ProgramWeight, setting: Setting, methods: Sequence[str], calibration: Optional[ActivationStats]) -> Optional[Choice]:
    """The first method in ``methods`` whose config the pass would run on this weight, and the
    pruned value it gives; None when no method applies or the pass would skip the weight."""
    site = item.weight
    for method in methods:
        config = setting.config(method)
        if config is None:
            continue
        selector = OpSelector(op_name_configs={site.name: config})
        try:
            selected = select(site, selector, _RULES, calibration)
        except InvalidInputError:  # this method's statistics are missing for the weight
            continue
        if isinstance(selected, Decision):
            continue
        decision = run_selected(selected, np.asarray(item.op.outputs[0].val))
        if isinstance(decision.outcome, SparseWeight):
            return Choice(setting, method, decision.outcome, config)
        return None  # the pattern does not fit this weight (n:m tail, say): no other method will
    return None


def method_for(item: ProgramWeight, setting: Setting, methods: Sequence[str], calibration: Optional[ActivationStats]) -> Optional[str]:
    """The method :func:`choose` would use, found by the selection alone (no handler runs)."""
    for method in methods:
        config = setting.config(method)
        if config is None:
            continue
        try:
            selected = select(item.weight, OpSelector(op_name_configs={item.weight.name: config}), _RULES, calibration)
        except InvalidInputError:
            continue
        if isinstance(selected, Selected):
            return method
    return None


def element_scores(item: ProgramWeight, calibration: Optional[ActivationStats]) -> np.ndarray:
    """Wanda's per-element scores ``|W| * ||x||`` where the statistics have the weight's input
    channels (laid out by the pass's own selection), ``|W|`` otherwise."""
    from mil_sparsity.configs import MagnitudeConfig
    from mil_sparsity.kernels import activation_scores

    value = np.asarray(item.op.outputs[0].val)
    config = MagnitudeConfig(target_sparsity=0.5, scoring="activation")
    try:
        selected = select(item.weight, OpSelector(op_name_configs={item.weight.name: config}), _RULES, calibration)
    except InvalidInputError:
        selected = None
    if isinstance(selected, Selected) and selected.context is not None and selected.context.scale is not None:
        return activation_scores(value, selected.context.scale, selected.context.scale_axis)
    return np.abs(value.astype(np.float32))


def prunable(item: ProgramWeight, settings: Sequence[Setting]) -> bool:
    """True if the pass would take this weight at some setting with magnitude pruning."""
    for setting in settings:
        config = setting.config("magnitude")
        chosen = select(item.weight, OpSelector(op_name_configs={item.weight.name: config}), _RULES)
        if isinstance(chosen, Selected):
            return True
    return False


def _quality(report: QualityReport) -> float:
    cosine = report.worst()["cosine"]
    return 1.0 if cosine is None else float(cosine)


def evaluate_with(job: ProbeJob, overrides: Mapping[str, np.ndarray], starts: Optional[Sequence[Sample]] = None) -> float:
    """The worst output's mean cosine over the job's samples with ``overrides``."""
    evaluator, _ = loaded(job.model_path, job.function_name)

    def pairs() -> Iterator[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]:
        for index, (sample, reference) in enumerate(zip(job.samples, job.reference_outputs)):
            start = None if starts is None else starts[index]
            yield reference, evaluator.run(sample, overrides=overrides, start=start or None)

    return _quality(summarise(pairs()))


def probe_weight(job: ProbeJob, name: str) -> list[ProbeRow]:
    """Every setting of ``job`` on weight ``name`` (the task run per weight)."""
    evaluator, found = loaded(job.model_path, job.function_name)
    item = found[name]
    cut = evaluator.cut_before([name])
    starts = [evaluator.run(sample, outputs=list(cut)) if cut else {} for sample in job.samples]
    rows = []
    for setting in job.settings:
        choice = choose(item, setting, job.methods, job.calibration)
        if choice is None:
            continue
        quality = evaluate_with(job, {name: choice.dense(job.palettize_nbits)}, starts)
        rows.append(
            ProbeRow(
                weight=item.weight.saved_name,
                pattern=setting.pattern,
                sparsity=float(choice.outcome.sparsity),
                method=choice.method,
                quality=quality,
                nbytes=choice.nbytes(job.palettize_nbits),
                dense_nbytes=int(item.weight.nbytes),
                setting=setting,
            )
        )
    return rows


def options_of(names: Sequence[str], found: Mapping[str, ProgramWeight], rows: Sequence[ProbeRow]) -> tuple[list[Options], list[list[ProbeRow]]]:
    by_weight: dict[str, list[ProbeRow]] = {found[name].weight.saved_name: [] for name in names}
    for row in rows:
        by_weight[row.weight].append(row)
    options, levels = [], []
    for name in names:
        item = found[name].weight
        chosen = sorted(by_weight[item.saved_name], key=lambda r: (-r.nbytes, r.sparsity))
        levels.append(chosen)
        options.append(Options((item.nbytes,) + tuple(r.nbytes for r in chosen), (0.0,) + tuple(1.0 - r.quality for r in chosen)))
    return options, levels
