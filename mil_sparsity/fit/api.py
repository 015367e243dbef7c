"""``fit``: prune each weight as far as a budget allows, chosen from measured sensitivities.

1. The dense model is evaluated on ``samples`` once (reference outputs); bad samples fail here,
   before any probe runs. Calibration statistics (with Gram matrices) are collected from the
   samples when none are given and a method needs them.
2. Probes (:mod:`.probes`): every prunable weight at every setting of ``compute_unit``, alone,
   through the evaluator's overrides: its stored bytes and the worst output's mean cosine.
   Statistics collected from the probe samples themselves make reconstruction look better on
   them than on other inputs (a Gram matrix of few rows is fitted exactly): give
   ``calibration`` from other inputs where you can.
3. Allocation (:mod:`.allocate`): the greedy path from all dense to all at the sparsest
   setting; ``max_size_ratio`` takes the first point within the bytes, then spends the bytes
   left back on the moves that remove the most predicted loss; ``min_cosine`` the
   furthest point whose whole pruned model (all overrides at once) still meets the floor on
   the samples, found by bisection from the predicted point.
4. The chosen per-weight configs become one :class:`OpSelector`, and
   :func:`~mil_sparsity.prune_weights` builds the model from it: the result is exactly what
   ``prune_weights(model, result.selector, calibration=result.calibration)`` gives.
5. Only with ``palettize_nbits=N`` (iOS18+): every pruned weight is also palettized, its kept
   values to a 2**N-entry table (:mod:`.joint`); probes measure and count that form, and the
   result is ``cto.palettize_weights(<step 4>, result.palettization, joint_compression=True)``.

Sizes are stored weight bytes (every weight of the function, as the model stores it: a sparse
weight's nonzero values plus one mask bit per element), over the input's.
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import attrs
import numpy as np

from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.configs import config_to_dict, is_activation_scored, is_reconstruction
from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.fit.allocate import (
    Allocation,
    Options,
    first_within_size,
    greedy_path,
    last_meeting_quality,
    spend_leftover,
)
from mil_sparsity.fit.budgeted import probe_within
from mil_sparsity.fit.probes import (
    Choice,
    ProbeJob,
    ProbeRow,
    choose,
    evaluate_with,
    forget_loaded,
    loaded,
    options_of,
    probe_weight,
    prunable,
)
from mil_sparsity.fit.settings import Setting, check_methods, settings_for
from mil_sparsity.fit.joint import check_palettize, palettize_pruned
from mil_sparsity.kernels.palettize import pruned_nbytes
from mil_sparsity.model.inventory import ProgramWeight
from mil_sparsity.progress import progress_bar
from mil_sparsity.quality import QualityReport, summarise
from mil_sparsity.report import SparsityReport
from mil_sparsity.selector import OpSelector

Sample = Mapping[str, np.ndarray]
_NEEDS_STATS = ("activation", "sparsegpt", "admm")


@attrs.frozen
class PlannedWeight:
    """What fit chose for one weight: ``setting`` None = left dense."""

    weight: str
    setting: Optional[Setting]
    method: Optional[str]
    sparsity: float
    nbytes: int
    dense_nbytes: int
    probe_quality: float  # the worst output's mean cosine with only this weight pruned so

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "pattern": None if self.setting is None else self.setting.pattern,
            "method": self.method,
            "sparsity": self.sparsity,
            "nbytes": self.nbytes,
            "dense_nbytes": self.dense_nbytes,
            "probe_quality": self.probe_quality,
        }


@attrs.frozen(eq=False)
class FitResult:
    """A fitted model and how it was chosen (see :func:`fit`)."""

    model: Any
    selector: OpSelector
    calibration: Optional[ActivationStats]
    quality: QualityReport
    size_ratio: float
    report: SparsityReport
    probes: tuple[ProbeRow, ...]
    plan: tuple[PlannedWeight, ...]
    budget: str
    palettization: Any = None  # coremltools OptimizationConfig of step 5, None when not asked

    def format_plan(self) -> str:
        """One line per weight (what was chosen, its bytes and probe quality), then totals."""
        width = max([len(p.weight) for p in self.plan] + [6])
        lines = [f"{'weight':<{width}}  {'choice':<18} {'method':<10} {'bytes':>12}  probe cos"]
        for item in self.plan:
            choice = "dense" if item.setting is None else item.setting.label
            lines.append(
                f"{item.weight:<{width}}  {choice:<18} {item.method or '-':<10} "
                f"{item.nbytes:>12,}  {item.probe_quality:.4f}"
            )
        worst = self.quality.worst()["cosine"]
        lines.append(
            f"budget {self.budget}: size {self.size_ratio:.1%} of the input's weight bytes, worst "
            f"output mean cosine {worst if worst is None else round(worst, 4)} on {self.quality.samples} samples"
        )
        return "\n".join(lines)


def _check_budget(max_size_ratio: Optional[float], min_cosine: Optional[float]) -> tuple[str, float]:
    if (max_size_ratio is None) == (min_cosine is None):
        raise InvalidTypeError(
            "fit takes exactly one budget: max_size_ratio=R (stored weight bytes over the input's) "
            "or min_cosine=C (worst output mean cosine against the input model), got "
            f"{'neither' if max_size_ratio is None else 'both'}"
        )
    field, value = ("max_size_ratio", max_size_ratio) if max_size_ratio is not None else ("min_cosine", min_cosine)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(f"{field} must be a number, got {type(value).__name__} {value!r}")
    if not (0.0 < float(value) <= 1.0) or math.isnan(float(value)):
        raise InvalidInputError(f"{field} must be in (0, 1], got {value!r}")
    return field, float(value)


def _check_jobs(n_jobs: Any) -> int:
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        raise InvalidInputError(f"n_jobs must be a non-zero int (joblib's meaning: -1 = every core), got {n_jobs!r}")
    return n_jobs


def _model_path(model: Any, workdir: str) -> str:
    """A package path for ``model`` (saved into ``workdir`` if it is an in-memory MLModel)."""
    if isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(model))
        if not os.path.exists(path):
            raise FileNotFoundError(f"model: no such package: {path}")
        return path
    if not hasattr(model, "save") or not hasattr(model, "get_spec"):
        raise InvalidTypeError(f"model must be an MLModel or a path to an .mlpackage, got {type(model).__name__}")
    path = os.path.join(workdir, "input.mlpackage")
    model.save(path)
    return path


def _samples(samples: Any, model_path: str, function_name: str) -> tuple[Sample, ...]:
    if isinstance(samples, (str, os.PathLike)):
        from mil_sparsity.model.io import load_model
        from mil_sparsity.samples import input_specs, load_samples

        return tuple(load_samples(samples, input_specs(load_model(model_path), function_name)))
    if isinstance(samples, Mapping):
        return (samples,)
    if not isinstance(samples, Iterable):
        raise InvalidTypeError(f"samples must be input dicts or a .npz path, got {type(samples).__name__}")
    result = tuple(samples)
    if not result:
        raise InvalidInputError("samples: need at least one input sample, got none")
    return result


def _calibration(calibration: Any, methods: Sequence[str], model_path: str, samples: Sequence[Sample], function_name: str, progress: Optional[bool]) -> Optional[ActivationStats]:
    if calibration is not None:
        if isinstance(calibration, ActivationStats):
            return calibration
        if isinstance(calibration, (str, os.PathLike)):
            return ActivationStats.load(calibration)
        raise InvalidTypeError(f"calibration must be ActivationStats or a path, got {type(calibration).__name__}")
    if not any(method in _NEEDS_STATS for method in methods):
        return None
    from mil_sparsity.calibration import collect_activation_stats

    gram = any(method in ("sparsegpt", "admm") for method in methods)
    return collect_activation_stats(model_path, samples, function_name=function_name, gram=gram, progress=progress)


def _smallest_bytes(item: ProgramWeight, settings: Sequence[Setting], palettize_nbits: Optional[int]) -> int:
    """About the fewest bytes any setting stores this weight in (exact counts come from probes)."""
    weight = item.weight
    itemsize = np.dtype(weight.dtype).itemsize
    kept = weight.size - round(max(setting.sparsity for setting in settings) * weight.size)
    return min(weight.nbytes, pruned_nbytes(kept, weight.size, itemsize, palettize_nbits))


def _run_probes(job: ProbeJob, names: Sequence[str], n_jobs: int, progress: Optional[bool]) -> list[ProbeRow]:
    """:func:`probe_weight` for every name, through joblib (in this process when n_jobs=1)."""
    joblib = importlib.import_module("joblib")  # untyped third-party module: imported as Any
    tasks = (joblib.delayed(probe_weight)(job, name) for name in names)
    results = joblib.Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
    rows: list[ProbeRow] = []
    for weight_rows in progress_bar(results, desc="probes", total=len(names), enabled=progress):
        rows.extend(weight_rows)
    return rows


def fit(
    model: Any,
    samples: Any,
    *,
    max_size_ratio: Optional[float] = None,
    min_cosine: Optional[float] = None,
    calibration: Any = None,
    methods: Optional[Sequence[str]] = None,
    compute_unit: str = "all",
    n_jobs: int = 1,
    progress: Optional[bool] = None,
    function_name: str = "main",
    max_probes: Optional[int] = None,
    palettize_nbits: Optional[int] = None,
) -> FitResult:
    """Prune ``model`` to a budget, each weight as far as its measured sensitivity allows.

    ``model``: an ML Program MLModel or .mlpackage path (not modified). ``samples``: input
    dicts (or a .npz path) the quality is measured on. Exactly one budget: ``max_size_ratio``
    (stored weight bytes of the result over the input's, in (0, 1]) or ``min_cosine`` (the
    worst output's mean cosine against the input model on ``samples``, in (0, 1]).
    ``calibration``: ActivationStats (or a path); None collects them from ``samples`` when a
    method needs them. ``methods``: preference order among ``"admm"``, ``"sparsegpt"``,
    ``"activation"``, ``"magnitude"`` (default all, in that order; each weight uses the first
    that applies to it). ``compute_unit``: ``"all"``, ``"ane"`` or ``"cpu"``
    (:mod:`.settings`). ``n_jobs``: probes run through joblib (``joblib.parallel_config``
    picks the backend, dask or ray included; the model path must be readable by the workers).
    ``max_probes``: at most this many probes (weight x setting); when the table is larger, an
    outlier prior ranks the weights and predicts the rest (:mod:`.budgeted`). None: probe all.
    ``palettize_nbits``: None (default: sparse storage only), or 1, 2, 3, 4, 6 or 8 for joint
    sparse + palettized storage of every pruned weight (iOS18+ models; :mod:`.joint`).
    See the module doc for the algorithm.
    """
    field, budget = _check_budget(max_size_ratio, min_cosine)
    settings = settings_for(compute_unit)
    preference = check_methods(methods)
    jobs = _check_jobs(n_jobs)
    if max_probes is not None and (isinstance(max_probes, bool) or not isinstance(max_probes, int) or max_probes < 1):
        raise InvalidInputError(f"max_probes must be an int >= 1 or None, got {max_probes!r}")
    if not isinstance(function_name, str):
        raise InvalidTypeError(f"function_name must be a str, got {type(function_name).__name__}")
    with tempfile.TemporaryDirectory(prefix="mil-sparsity-fit-") as workdir:
        try:
            return _fit(
                model, samples, field, budget, calibration, preference, settings, jobs, progress,
                function_name, workdir, max_probes, palettize_nbits,
            )
        finally:
            forget_loaded()


def _fit(
    model: Any,
    samples: Any,
    field: str,
    budget: float,
    calibration: Any,
    methods: tuple[str, ...],
    settings: tuple[Setting, ...],
    n_jobs: int,
    progress: Optional[bool],
    function_name: str,
    workdir: str,
    max_probes: Optional[int],
    palettize_nbits: Optional[int],
) -> FitResult:
    from mil_sparsity.inspect_model import stored_weight_bytes
    from mil_sparsity.oneshot import prune_weights

    model_path = _model_path(model, workdir)
    evaluator, found = loaded(model_path, function_name)
    nbits = check_palettize(palettize_nbits, evaluator.program.functions[function_name].opset_version, function_name)
    inputs = _samples(samples, model_path, function_name)
    reference = tuple(evaluator.run(sample) for sample in inputs)  # bad samples fail here
    stats = _calibration(calibration, methods, model_path, inputs, function_name, progress)
    names = [name for name, item in found.items() if prunable(item, settings)]
    input_bytes = stored_weight_bytes(evaluator.program)
    fixed = input_bytes - sum(found[name].weight.nbytes for name in names)
    if field == "max_size_ratio":
        smallest = fixed + sum(_smallest_bytes(found[name], settings, nbits) for name in names)
        if budget * input_bytes < smallest:
            raise InvalidInputError(
                f"max_size_ratio={budget} is below what pruning can reach: about "
                f"{smallest / input_bytes:.4f} ({len(names)} prunable weights at the sparsest "
                f"setting, {max(s.sparsity for s in settings):.0%}; a mask costs 1 bit per element"
                f"{'' if nbits is None else f', a kept value {nbits} bits'})"
            )
    job = ProbeJob(model_path, function_name, inputs, reference, settings, methods, stats, nbits)
    max_bytes = math.floor(budget * input_bytes) - fixed

    def pick(path: Sequence[Allocation]) -> int:
        """Where the budget falls on a path, by bytes or by predicted loss alone."""
        if field == "max_size_ratio":
            found_index = first_within_size(path, max_bytes)
            return len(path) - 1 if found_index is None else found_index
        return max((i for i, a in enumerate(path) if a.predicted_loss <= 1.0 - budget), default=0)

    notes: list[str] = []
    if max_probes is not None and len(names) * len(settings) > max_probes:
        rows, note = probe_within(job, names, found, max_probes, lambda j, n: _run_probes(j, n, n_jobs, progress), pick)
        notes.append(note)
    else:
        rows = _run_probes(job, names, n_jobs, progress)
    options, levels = options_of(names, found, rows)
    path = greedy_path(options)
    memo: dict[tuple[str, int], Choice] = {}

    def choice(name: str, row: ProbeRow) -> Choice:
        key = (name, settings.index(row.setting))
        if key not in memo:
            made = choose(found[name], row.setting, methods, stats)
            if made is None:  # the probe made one: the same inputs give the same result
                raise InvalidInputError(f"fit: weight {name!r} has no pruned form at {row.setting.label}")
            memo[key] = made
        return memo[key]

    def overrides(allocation: Allocation) -> dict[str, np.ndarray]:
        return {
            name: choice(name, levels[i][level - 1]).dense(nbits)
            for i, (name, level) in enumerate(zip(names, allocation.levels))
            if level > 0
        }

    if field == "max_size_ratio":
        index = first_within_size(path, max_bytes)
        if index is None:  # the exact probe bytes came out above the estimate
            raise InvalidInputError(
                f"max_size_ratio={budget} is below what pruning reaches: "
                f"{(fixed + path[-1].nbytes) / input_bytes:.4f}"
            )
        path = list(path[: index + 1]) + [spend_leftover(options, path[index], max_bytes)]
        index = len(path) - 1
    else:
        index, _ = last_meeting_quality(
            path, 1.0 - budget, lambda i: 1.0 - evaluate_with(job, overrides(path[i]))
        )
        if index == 0:
            notes.append(
                f"fit: no pruning keeps min_cosine={budget} on the {len(inputs)} samples (the least "
                "harmful single step already falls below it); the model is returned unpruned"
            )
    chosen = path[index]
    plan = []
    configs: dict[str, Any] = {}
    for i, (name, level) in enumerate(zip(names, chosen.levels)):
        item = found[name].weight
        if level == 0:
            plan.append(PlannedWeight(item.saved_name, None, None, 0.0, item.nbytes, item.nbytes, 1.0))
            configs[item.saved_name] = None
            continue
        row = levels[i][level - 1]
        configs[item.saved_name] = row.setting.config(row.method)  # what choose() ran
        plan.append(PlannedWeight(item.saved_name, row.setting, row.method, row.sparsity, row.nbytes, item.nbytes, row.quality))
    selector = OpSelector(op_name_configs=configs)
    report = SparsityReport()
    uses_stats = any(c is not None and (is_activation_scored(c) or is_reconstruction(c)) for c in configs.values())
    if any(c is not None for c in configs.values()):
        result_model = prune_weights(model_path, selector, calibration=stats if uses_stats else None, report=report)
    else:
        from mil_sparsity.model.io import load_model

        result_model = load_model(model_path)
    palettization = None
    pruned = [item.weight for item in plan if item.setting is not None]
    if nbits is not None and pruned:
        result_model, palettization = palettize_pruned(result_model, pruned, nbits, function_name)
        notes.append(f"fit: the kept values of {len(pruned)} pruned weights palettized to {nbits} bits (joint storage)")
    report.notes.extend(notes)
    final = loaded_quality(result_model, inputs, reference, function_name)
    from mil_sparsity.model.io import load_program

    size_ratio = stored_weight_bytes(load_program(result_model)) / input_bytes
    return FitResult(
        model=result_model,
        selector=selector,
        calibration=stats if uses_stats else None,
        quality=final,
        size_ratio=size_ratio,
        report=report,
        probes=tuple(rows),
        plan=tuple(plan),
        budget=f"{field}={budget}" + ("" if nbits is None else f", palettize_nbits={nbits}"),
        palettization=palettization,
    )


def loaded_quality(model: Any, samples: Sequence[Sample], reference: Sequence[Mapping[str, np.ndarray]], function_name: str) -> QualityReport:
    """``model``'s outputs on ``samples`` against the dense ``reference`` outputs."""
    from mil_sparsity.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model, function_name=function_name)
    return summarise((ref, evaluator.run(sample)) for sample, ref in zip(samples, reference))
