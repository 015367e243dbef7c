"""One call post hoc, in the form coremltools users know from
``coremltools.optimize.coreml.prune_weights(mlmodel, config=OptimizationConfig(...))``.

* :func:`prune_weights` ``(model, config)``: prune and pack. ``config`` is anything a pass's
  ``config`` option takes: one of our configs, an OpSelector, its dict or JSON text, or a
  coremltools ``OptimizationConfig`` of ``OpThresholdPrunerConfig`` /
  ``OpMagnitudePrunerConfig``. Threshold configs run ``mil_sparsity::prune_by_threshold``;
  magnitude, block and n:m configs run ``mil_sparsity::prune_by_magnitude``.
* :func:`pack_weights` ``(model, config=None)``: ``mil_sparsity::sparse_pack`` (default
  ``PackConfig()``), values unchanged.

A selector that mixes threshold and magnitude-family configs (legal in coremltools, whose one
pass takes both) is split into one selector per pass, each keeping the other pass's entries
as ``None``: a ``None`` stops the lookup at the same place the original config would have been
found, so every weight gets exactly the config the whole selector gives it, from exactly one
of the two passes (threshold first). Pack configs belong to :func:`pack_weights` only.

Both run :func:`mil_sparsity.apply_pipeline` (streaming for package paths, the deployment
target raised to iOS16 if below) and return its MLModel.
"""

from __future__ import annotations

from typing import Any, Optional

import coremltools as ct

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.plan import catalog
from mil_sparsity.posthoc import ModelLike, apply_pipeline
from mil_sparsity.report import SparsityReport
from mil_sparsity.selector import OpSelector, as_selector

PRUNE_BY_MAGNITUDE = catalog.PRUNE_BY_MAGNITUDE.name
SPARSE_PACK = catalog.SPARSE_PACK.name


def split_by_pass(selector: OpSelector) -> list[tuple[str, OpSelector]]:
    """(pass name, its selector) for each pass that has a config in ``selector``, in pass order
    (:func:`mil_sparsity.plan.catalog.split_by_pass`)."""
    return [(entry.name, part) for entry, part in catalog.split_by_pass(selector)]


def _run(model: ModelLike, passes: list[tuple[str, dict[str, Any]]], report: Optional[SparsityReport]) -> Any:
    pipeline = ct.PassPipeline.EMPTY
    for name, options in passes:
        pipeline.append_pass(name)
        if options:
            pipeline.set_options(name, options)
    return apply_pipeline(model, pipeline, report=report)


def prune_weights(
    model: ModelLike,
    config: Any,
    *,
    calibration: Any = None,
    report: Optional[SparsityReport] = None,
) -> Any:
    """Prune and pack ``model``'s weights post hoc; returns the new ``MLModel``.

    ``model``: an ML Program MLModel or a path to a .mlpackage (not modified). ``config``:
    see the module doc (a coremltools ``OptimizationConfig`` works unchanged). ``calibration``
    (an ActivationStats or the path of one) goes to prune_by_magnitude as its ``calibration``
    option, for activation-scored and reconstruction configs; statistics collected with
    ``collect_activation_stats(model, samples, gram=True, sequential=config)`` for the same
    ``config`` reconstruct layer by layer. ``report`` is filled as by apply_pipeline.
    """
    selector = as_selector(config)
    parts = split_by_pass(selector)
    if not parts:
        raise InvalidInputError("prune_weights: config: no config set (every entry is None): nothing to do")
    if any(name == SPARSE_PACK for name, _ in parts):
        raise InvalidInputError(
            "prune_weights: config holds pack configs (PackConfig), which prune nothing; use "
            "mil_sparsity.pack_weights for those"
        )
    if calibration is not None and not any(name == PRUNE_BY_MAGNITUDE for name, _ in parts):
        raise InvalidInputError(
            "prune_weights: calibration is used by magnitude, block and n:m configs with "
            "scoring='activation', but config holds threshold configs only"
        )
    passes = []
    for name, part in parts:
        options: dict[str, Any] = {"config": part}
        if name == PRUNE_BY_MAGNITUDE and calibration is not None:
            options["calibration"] = calibration
        passes.append((name, options))
    return _run(model, passes, report)


def pack_weights(
    model: ModelLike,
    config: Any = None,
    *,
    report: Optional[SparsityReport] = None,
) -> Any:
    """Store weights that already hold zeros in sparse form, values unchanged; returns the new
    ``MLModel``. ``config``: a PackConfig, or an OpSelector (dict, JSON) of PackConfigs;
    default ``PackConfig()`` for every weight."""
    options: dict[str, Any] = {}
    if config is not None:
        selector = as_selector(config)
        name = catalog.pass_for_selector(selector, "pack_weights: config").name
        if name != SPARSE_PACK:
            raise InvalidInputError(
                f"pack_weights: config holds configs of {name} (kinds "
                f"{sorted({c.kind for _, c in selector.entries() if c is not None})}), which prune; "
                "use mil_sparsity.prune_weights for those, and PackConfig here"
            )
        options["config"] = selector
    return _run(model, [(SPARSE_PACK, options)], report)
