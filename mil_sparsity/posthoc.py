"""Run a pass pipeline on a saved or in-memory ML Program model, without the Core ML runtime.

``apply_pipeline(model, pipeline)``: model spec -> PyMIL program (all functions, at the run's
deployment target: :mod:`mil_sparsity.plan.targets`) -> the pipeline's passes -> a new MLModel; or,
for package paths, the streaming rewriter (:mod:`mil_sparsity.streaming`). The input model and
its files are never modified. Works for classifiers (the model description is carried over)
and multifunction packages (every function is loaded, rewritten and exported with the same
default function).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from coremltools import PassPipeline

from mil_sparsity import _coremltools_private as private
from mil_sparsity.errors import InvalidTypeError
from mil_sparsity.model.io import (
    ModelLike,
    _keep_program_attributes,
    _temporary_model,
    load_model,
    load_program,
    ml_program_spec,
    program_to_model,
)
from mil_sparsity.plan import targets
from mil_sparsity.plan.pipeline import PipelinePlan, make_plan
from mil_sparsity.report import SparsityReport

if TYPE_CHECKING:  # streaming imports the plan; posthoc loads it only when a run streams
    from mil_sparsity.streaming import StreamSource

def apply_pipeline(
    model: ModelLike,
    pipeline: PassPipeline,
    *,
    report: Optional[SparsityReport] = None,
    streaming: Optional[bool] = None,
    minimum_deployment_target: Any = None,
) -> Any:
    """Apply ``pipeline`` to a saved model post hoc and return the new ``MLModel``.

    ``model`` is an ML Program MLModel or a path to a .mlpackage; it is not modified. When
    ``report`` is given, every mil_sparsity pass in the pipeline that has no ``report`` option
    fills it.

    Deployment target (:mod:`mil_sparsity.plan.targets`): a pipeline with a mil_sparsity pass raises a
    model below iOS16 to iOS16, as coremltools' post-hoc compression does, whether or not a
    weight ends up packed; ``minimum_deployment_target`` (a ``ct.target`` member) raises it
    further (iOS18 gives the uint1 mask form) and may not be below the model's own target.
    A raise adds a note to the report(s) and logs one WARNING on the ``"mil_sparsity"`` logger.

    ``streaming`` (default: automatic) rewrites the package file by file with
    :func:`mil_sparsity.streaming.compress_package`, one weight in memory at a time, instead of
    loading the whole program into PyMIL. It is used automatically when ``model`` is a path to a
    .mlpackage directory and every pass of the pipeline is a mil_sparsity pass with no option but
    ``config``, ``report`` and ``calibration`` (``joint_compression`` needs PyMIL); the result is the same (same
    spec version, opsets and ops, bit-identical weights), except that consts stored inline in
    the spec (fewer than 10 elements) are never packed. ``streaming=False`` forces the PyMIL path.

    The result is what coremltools' own post-hoc compression returns: an ``MLModel`` of a
    temporary .mlpackage holding the new model, ``ct.models.MLModel(package,
    is_temp_package=True, mil_program=..., skip_model_load=...)``. So a caller can rely on
    ``get_spec()``, ``weights_dir``, ``package_path`` (removed by coremltools when the
    interpreter exits; ``save(path)`` copies it), ``is_package`` and ``is_temp_package`` (both
    True), the input's description (inputs, outputs, classifier labels, functions, metadata,
    user-defined metadata) and ``compute_unit`` (the input MLModel's; ``ALL`` for a path).

    * Loaded in, loaded out: when the input MLModel was compiled and loaded by Core ML (on
      macOS, constructed without ``skip_model_load=True``), so is the result, and
      ``predict`` works on it; otherwise (a path, or an MLModel loaded with
      ``skip_model_load=True``) it is not compiled: save it and load it to predict.
    * ``_mil_program``: a result of the PyMIL path carries its PyMIL program, as coremltools'
      results do (``MLModel._get_mil_internal()``). A streamed result, like any model loaded
      from disk, has None: :func:`load_program` gives its program.
    """
    from mil_sparsity import streaming as streaming_path

    if not isinstance(pipeline, PassPipeline):
        raise InvalidTypeError(f"pipeline must be a ct.PassPipeline, got {type(pipeline).__name__}")
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if streaming and path is None:
        raise InvalidTypeError("streaming=True needs the path of a saved .mlpackage, not an MLModel")
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f"model: no such file or package: {path}")
    source = None
    if path is not None and os.path.isdir(path) and streaming is not False:
        source = streaming_path.open_source(path)
        version = source.version
    else:
        mlmodel = load_model(model)
        version = int(ml_program_spec(mlmodel).specificationVersion)
    plan = make_plan(
        pipeline,
        version,
        report=report,
        minimum_deployment_target=minimum_deployment_target,
        streaming=streaming,
        streamable_source=source is not None,
    )
    if plan.streams and source is not None:
        return _apply_streaming(plan, source)
    if source is not None:
        mlmodel = load_model(model)
    prog = load_program(mlmodel, plan.version)
    private.run_pipeline(prog, plan.pipeline)
    exported = program_to_model(prog, mlmodel, plan.version)
    _keep_program_attributes(exported, mlmodel.get_spec())
    result = _temporary_model(
        exported.package_path, mlmodel.compute_unit, load=private.is_loaded(mlmodel), program=prog
    )
    targets.announce(plan.change, plan.reports)
    return result


def _apply_streaming(plan: PipelinePlan, source: "StreamSource") -> Any:
    """Stream into a temporary package owned by the returned MLModel (``is_temp_package``:
    coremltools deletes it when the interpreter exits; ``save`` copies it where you want it).
    The input is a path, never a loaded model: the result is not loaded either, and has no
    ``_mil_program`` (the program is never in memory whole)."""
    import shutil
    import tempfile
    import uuid

    from mil_sparsity.streaming import run_plan

    package = os.path.join(tempfile.gettempdir(), f"mil_sparsity-{uuid.uuid4().hex}.mlpackage")
    try:
        run_plan(plan, source, package)
        return _temporary_model(package, load=False)
    except BaseException:
        shutil.rmtree(package, ignore_errors=True)
        raise


#: model I/O lives in :mod:`mil_sparsity.model.io`; re-exported here, where it used to live
__all__ = ["ModelLike", "apply_pipeline", "load_model", "load_program", "ml_program_spec", "program_to_model"]
