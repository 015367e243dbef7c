"""Model I/O: an MLModel or a package path in, a PyMIL program out, and back.

Every package goes through :mod:`mil_sparsity.format.package_guard` first; what coremltools'
loader refuses in a package that passed is an :class:`~mil_sparsity.errors.InvalidInputError`.
The evaluator, quality, inspect, sweep and the command line load models here, without the
pipeline runner (:mod:`mil_sparsity.posthoc`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional, Union

import coremltools as ct
from coremltools.converters.mil.mil.program import Program

from mil_sparsity import _coremltools_private as private
from mil_sparsity.errors import InvalidInputError, InvalidTypeError, MilSparsityError
from mil_sparsity.format import package_guard

ModelLike = Union["ct.models.MLModel", str, "os.PathLike[str]"]


def load_model(model: ModelLike) -> Any:
    """An MLModel as it is, or a package path loaded without compiling it. A package's
    manifest is checked (:func:`mil_sparsity.format.package_guard.open_package`) before coremltools
    reads it; what coremltools cannot read is an InvalidInputError."""
    if isinstance(model, ct.models.MLModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model: no such file or package: {path}")
        preserved = package_guard.manifest_preserved(path) if os.path.isdir(path) else contextlib.nullcontext()
        try:
            with preserved:
                return ct.models.MLModel(path, skip_model_load=True)
        except MilSparsityError:
            raise
        except Exception as error:  # protobuf's DecodeError, coremltools' own
            raise InvalidInputError(f"model: coremltools cannot read {path}: {_one_line(error)}") from error
    raise InvalidTypeError(f"model must be an MLModel or a path to a .mlpackage, got {type(model).__name__}")


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def ml_program_spec(mlmodel: Any) -> Any:
    """The model's spec; TypeError for models that are not ML Programs."""
    spec = mlmodel.get_spec()
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise InvalidTypeError(
            f"mil_sparsity works on ML Program models, but this model is a {kind!r}. Re-convert it "
            'with ct.convert(..., convert_to="mlprogram").'
        )
    return spec


def load_program(mlmodel: Any, specification_version: Optional[int] = None) -> Program:
    """The model's PyMIL program, every function included, at the opset of
    ``specification_version`` (default: the model's). Raises for non-mlprogram models."""
    spec = ml_program_spec(mlmodel)
    weights_dir = mlmodel.weights_dir
    if getattr(mlmodel, "package_path", None):
        layout = package_guard.open_package(mlmodel.package_path)
        package_guard.check_storage(spec, layout, memory_bound=True)
        weights_dir = layout.weights_dir
    try:
        prog: Program = private.program_from_spec(spec, weights_dir or "", specification_version)
    except Exception as error:  # the spec passed our checks, but coremltools' loader refuses it
        where = getattr(mlmodel, "package_path", None) or "the model"
        raise InvalidInputError(f"coremltools cannot load the program of {where}: {_one_line(error)}") from error
    return prog


def program_to_model(prog: Program, mlmodel: Any, specification_version: Optional[int] = None) -> Any:
    """Export ``prog`` as an MLModel with ``mlmodel``'s description and compute unit, at
    ``specification_version`` (default: ``mlmodel``'s)."""
    spec = mlmodel.get_spec()
    description = spec.description
    if len(description.functions) > 0:
        prog.export_as_multifunction = True
        prog.default_function_name = description.defaultFunctionName
    default = prog.default_function_name if len(description.functions) > 0 else "main"
    if default not in prog.functions:
        raise InvalidInputError(
            f"model: its default function {default!r} is not among the program's functions "
            f"{sorted(prog.functions)}: the description and the program do not match"
        )
    # the program was loaded from a finished model: export it as it is
    prog.skip_all_passes = True
    return private.mlmodel_from_program(
        prog,
        specification_version=spec.specificationVersion if specification_version is None else specification_version,
        compute_units=mlmodel.compute_unit,
        model_description=description,
    )


def _keep_program_attributes(exported: Any, source_spec: Any) -> None:
    """Give the exported package the source program's attributes (coremltools' ``buildInfo``),
    which the PyMIL round trip drops and streaming keeps: both paths write the same spec."""
    spec = exported.get_spec()
    source = source_spec.mlProgram.attributes
    if spec.mlProgram.attributes == source:
        return
    spec.mlProgram.attributes.clear()
    for key, value in source.items():
        spec.mlProgram.attributes[key].CopyFrom(value)
    spec_path = private.model_package_class()(exported.package_path).getRootModel().path()
    with open(spec_path, "wb") as handle:
        handle.write(spec.SerializeToString())


def _temporary_model(
    package: str, compute_units: Any = None, *, load: bool = False, program: Optional[Program] = None
) -> Any:
    """The MLModel of a temporary package (deleted at interpreter exit), compiled and loaded by
    Core ML only if ``load`` (as coremltools does: a failure to load warns and leaves a model
    that cannot predict), with ``program`` as its ``_mil_program``."""
    units = ct.ComputeUnit.ALL if compute_units is None else compute_units
    return ct.models.MLModel(
        package, is_temp_package=True, mil_program=program, skip_model_load=not load, compute_units=units
    )


__all__ = ["ModelLike", "load_model", "load_program", "ml_program_spec", "program_to_model"]
