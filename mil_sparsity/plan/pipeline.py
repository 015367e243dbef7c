"""One plan for a run: a ``ct.PassPipeline`` (or a config) and a model in, a
:class:`PipelinePlan` out, executed by either rewriter.

``make_plan`` is the only place that reads a pipeline's passes and options. For every
mil_sparsity pass it looks the pass up in the catalog, checks and normalises each option there
(:meth:`~mil_sparsity.plan.catalog.PassEntry.check_option`: no pass object is built), resolves
the selector (the ``config`` option or the pass's default) and checks that activation-scored
configs have statistics. It decides the deployment target change (:mod:`mil_sparsity.plan.targets`)
and whether the run streams, or why not. Afterwards the rewriters read the plan, never the
pipeline: the PyMIL path runs :attr:`PipelinePlan.pipeline` (the same passes, each
mil_sparsity pass without a ``report`` option given the run's report), the streaming rewriter
runs :attr:`PipelinePlan.passes`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import attrs
from coremltools import PassPipeline

from mil_sparsity.plan import targets
from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.configs import SparsityConfig
from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.plan import catalog
from mil_sparsity.plan.catalog import PassEntry
from mil_sparsity.report import SparsityReport
from mil_sparsity.plan.rules import PassRules
from mil_sparsity.selector import OpSelector, as_selector

#: what a run takes: a pipeline, or anything a pass's ``config`` option takes
PipelineLike = Union[PassPipeline, OpSelector, SparsityConfig, Mapping[str, Any], str, Any]


@attrs.frozen
class PlannedPass:
    """One mil_sparsity pass to run: its catalog entry, its checked selector, its own
    ``report`` option, its ``calibration`` statistics (loaded once) and its other options."""

    entry: PassEntry
    selector: OpSelector
    report: Optional[SparsityReport] = None
    calibration: Optional[ActivationStats] = None
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def rules(self) -> PassRules:
        return rules_of(self.entry)


def rules_of(entry: PassEntry) -> PassRules:
    """What the selection rules need of a pass."""
    return PassRules(entry.name, entry.configs, entry.dtypes)


@attrs.frozen
class PipelinePlan:
    """A run, decided: see the module doc."""

    passes: tuple[PlannedPass, ...]  # the mil_sparsity passes, in pipeline order
    pipeline: PassPipeline  # every pass, for the PyMIL path
    change: Optional[targets.TargetChange]  # the deployment target raise, if any
    version: int  # the specification version the result has
    streams: bool
    obstacle: Optional[str]  # why the run cannot stream (None if it can)
    report: Optional[SparsityReport]  # the run's report (passes without their own)

    @property
    def reports(self) -> list[SparsityReport]:
        """Every report the run fills: the run's and the passes' own."""
        found = [] if self.report is None else [self.report]
        return found + [item.report for item in self.passes if item.report is not None]

    def report_of(self, planned: PlannedPass) -> Optional[SparsityReport]:
        return planned.report if planned.report is not None else self.report


def _planned(entry: PassEntry, options: Mapping[str, Any]) -> PlannedPass:
    checked = {name: entry.check_option(name, value) for name, value in options.items()}
    selector = checked.pop(catalog.CONFIG, None)
    selector = entry.default_selector() if selector is None else selector
    report = checked.pop(catalog.REPORT, None)
    calibration = checked.pop(catalog.CALIBRATION, None)
    entry.check_calibration(selector, calibration)
    return PlannedPass(entry, selector, report, calibration, checked)


def _pipeline_of(config: Any) -> PassPipeline:
    """The pipeline of one config / selector: the one pass that takes its config kinds."""
    selector = as_selector(config)
    entry = catalog.pass_for_selector(selector)
    pipeline = PassPipeline.EMPTY
    pipeline.append_pass(entry.name)
    pipeline.set_options(entry.name, {catalog.CONFIG: selector})
    return pipeline


def _options(pipeline: PassPipeline, name: str) -> dict[str, Any]:
    return {option.option_name: option.option_val for option in pipeline.get_options(name) or []}


def make_plan(
    config_or_pipeline: PipelineLike,
    model_version: int,
    *,
    report: Optional[SparsityReport] = None,
    minimum_deployment_target: Any = None,
    streaming: Optional[bool] = None,
    streamable_source: bool = True,
) -> PipelinePlan:
    """The plan of a run on a model whose specification version is ``model_version``.

    ``streaming``: None decides (streams when ``streamable_source`` — a package path — and
    every pass can stream), True requires it (ValueError naming the obstacle), False forbids
    it. Raises TypeError/ValueError for a bad option, a pass that needs a config and has none,
    activation scoring without statistics, or a target below the model's.
    """
    if report is not None and not isinstance(report, SparsityReport):
        raise InvalidTypeError(f"report must be a SparsityReport, got {type(report).__name__}")
    pipeline = config_or_pipeline if isinstance(config_or_pipeline, PassPipeline) else _pipeline_of(config_or_pipeline)
    names = list(pipeline.passes)
    planned = tuple(
        _planned(catalog.entry(name), _options(pipeline, name)) for name in names if catalog.is_ours(name)
    )
    obstacle = catalog.streaming_obstacle(names, {name: list(_options(pipeline, name)) for name in names})
    if obstacle is None and not names:
        obstacle = "the pipeline has no pass"
    if obstacle is None and not streamable_source:
        obstacle = "streaming needs the path of a saved .mlpackage, not an MLModel"
    if streaming and obstacle is not None:
        raise InvalidInputError(obstacle)
    change = targets.plan(model_version, minimum_deployment_target, names)
    return PipelinePlan(
        passes=planned,
        pipeline=_with_report(pipeline, report),
        change=change,
        version=model_version if change is None else change.new,
        streams=obstacle is None and streaming is not False,
        obstacle=obstacle,
        report=report,
    )


def _with_report(pipeline: PassPipeline, report: Optional[SparsityReport]) -> PassPipeline:
    """A copy of ``pipeline`` whose mil_sparsity passes without a report option get ``report``."""
    copy = PassPipeline(pass_names=list(pipeline.passes), pipeline_name=pipeline.pipeline_name)
    for name in copy.passes:
        options = _options(pipeline, name)
        if catalog.is_ours(name) and report is not None:
            options.setdefault(catalog.REPORT, report)
        if options:
            copy.set_options(name, options)
    return copy


__all__ = ["PipelineLike", "PipelinePlan", "PlannedPass", "make_plan", "rules_of"]
