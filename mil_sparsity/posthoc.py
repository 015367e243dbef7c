"""Run a pass pipeline on a saved or in-memory ML Program model, without the Core ML runtime.

``apply_pipeline(model, pipeline)``: model spec -> PyMIL program (all functions) -> the
pipeline's passes -> a new MLModel. The input model and its files are never modified. Works
for classifiers (the model description is carried over) and multifunction packages (every
function is loaded, rewritten and exported with the same default function).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import coremltools as ct
from coremltools import PassPipeline
from coremltools.converters.mil.mil.program import Program

from mil_sparsity import _coremltools_private as private
from mil_sparsity import sparse_format
from mil_sparsity.report import SparsityReport

ModelLike = Union["ct.models.MLModel", str, "os.PathLike[str]"]


def load_model(model: ModelLike) -> Any:
    """An MLModel as it is, or a package path loaded without compiling it."""
    if isinstance(model, ct.models.MLModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model: no such file or package: {path}")
        return ct.models.MLModel(path, skip_model_load=True)
    raise TypeError(f"model must be an MLModel or a path to a .mlpackage, got {type(model).__name__}")


def load_program(mlmodel: Any) -> Program:
    """The model's PyMIL program, every function included. Raises for non-mlprogram models."""
    spec = mlmodel.get_spec()
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise TypeError(
            f"mil_sparsity works on ML Program models, but this model is a {kind!r}. Re-convert it "
            'with ct.convert(..., convert_to="mlprogram", '
            "minimum_deployment_target=ct.target.iOS16)."
        )
    prog: Program = private.program_from_spec(spec, mlmodel.weights_dir)
    return prog


def program_to_model(prog: Program, mlmodel: Any) -> Any:
    """Export ``prog`` as an MLModel with ``mlmodel``'s description and spec version."""
    spec = mlmodel.get_spec()
    description = spec.description
    if len(description.functions) > 0:
        prog.export_as_multifunction = True
        prog.default_function_name = description.defaultFunctionName
    # the program was loaded from a finished model: export it as it is
    prog.skip_all_passes = True
    return private.mlmodel_from_program(
        prog,
        specification_version=spec.specificationVersion,
        compute_units=mlmodel.compute_unit,
        model_description=description,
    )


def with_report(pipeline: PassPipeline, report: SparsityReport) -> PassPipeline:
    """A copy of ``pipeline`` whose mil_sparsity passes without a report option get ``report``."""
    copy = PassPipeline(pass_names=list(pipeline.passes), pipeline_name=pipeline.pipeline_name)
    for name in copy.passes:
        options = {option.option_name: option.option_val for option in pipeline.get_options(name) or []}
        if name.startswith("mil_sparsity::"):
            options.setdefault("report", report)
        if options:
            copy.set_options(name, options)
    return copy


def _streamable(pipeline: PassPipeline) -> bool:
    """Only mil_sparsity passes, with no option but ``config`` and ``report``."""
    options = sparse_format.pipeline_options(pipeline)
    return bool(pipeline.passes) and sparse_format.streaming_obstacle(pipeline.passes, options) is None


def apply_pipeline(
    model: ModelLike,
    pipeline: PassPipeline,
    *,
    report: Optional[SparsityReport] = None,
    streaming: Optional[bool] = None,
) -> Any:
    """Apply ``pipeline`` to a saved model post hoc and return the new ``MLModel``.

    ``model`` is an MLModel or a path to a .mlpackage; it is not modified. When ``report`` is
    given, every mil_sparsity pass in the pipeline that has no ``report`` option fills it.

    ``streaming`` (default: automatic) rewrites the package file by file with
    :func:`mil_sparsity.streaming.compress_package`, one weight in memory at a time, instead of
    loading the whole program into PyMIL. It is used automatically when ``model`` is a path to a
    .mlpackage directory and
    every pass of the pipeline is a mil_sparsity pass with no option but ``config`` and
    ``report`` (``joint_compression`` needs PyMIL); the result is the same (same ops,
    bit-identical weights), except that consts stored inline in the spec (fewer than 10
    elements) are never packed. ``streaming=False`` forces the PyMIL path.
    """
    if not isinstance(pipeline, PassPipeline):
        raise TypeError(f"pipeline must be a ct.PassPipeline, got {type(pipeline).__name__}")
    if streaming is None:
        streaming = (
            isinstance(model, (str, os.PathLike))
            and os.path.isdir(os.fspath(model))
            and _streamable(pipeline)
        )
    if streaming:
        return _apply_streaming(model, pipeline, report)
    mlmodel = load_model(model)
    prog = load_program(mlmodel)
    if report is not None:
        pipeline = with_report(pipeline, report)
    private.run_pipeline(prog, pipeline)
    return program_to_model(prog, mlmodel)


def _apply_streaming(model: ModelLike, pipeline: PassPipeline, report: Optional[SparsityReport]) -> Any:
    """Stream into a temporary package owned by the returned MLModel (``is_temp_package``:
    coremltools deletes it when the interpreter exits; ``save`` copies it where you want it)."""
    import shutil
    import tempfile
    import uuid

    from mil_sparsity.streaming import compress_package

    if not isinstance(model, (str, os.PathLike)):
        raise TypeError("streaming=True needs the path of a saved .mlpackage, not an MLModel")
    if not os.path.exists(os.fspath(model)):
        raise FileNotFoundError(f"model: no such file or package: {os.fspath(model)}")
    package = os.path.join(tempfile.gettempdir(), f"mil_sparsity-{uuid.uuid4().hex}.mlpackage")
    try:
        compress_package(model, package, pipeline, report=report)
        return ct.models.MLModel(package, skip_model_load=True, is_temp_package=True)
    except BaseException:
        shutil.rmtree(package, ignore_errors=True)
        raise
