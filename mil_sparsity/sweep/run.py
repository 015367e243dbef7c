"""``sweep``: how big a model gets, how far its weights move and (given input samples) how far
its outputs move, for several pruning settings.

Points come from :mod:`mil_sparsity.sweep.points` (:func:`sweep_points`: pattern names and
levels -> :class:`SweepPoint` s). For every point, :func:`sweep` loads a fresh PyMIL program
from the model and runs the real ``mil_sparsity::prune_by_magnitude`` pass on it with the
point's config as global config (graph after: each packed const replaced by
``constexpr_sparse_to_dense``, exactly as ``prune`` writes it). It then measures, without
writing any model:

- ``model_bytes``: every weight as it would be stored (packed weights in their sparse form, the
  rest as they are), counted as :func:`mil_sparsity.inspect_model.weight_sources` counts;
- ``relative_error``: the weight-space error ``sqrt(sum ||W - W_pruned||^2) / sqrt(sum ||W||^2)``
  over the weights the pass packed (sums of squares accumulated in float64), and per weight in
  ``layers``;
- with ``samples``: output-level quality, a :class:`~mil_sparsity.quality.QualityReport` per
  point (relative L2 error, cosine, SNR, max abs error, top-1 agreement per output) of the
  pruned program against the original model on those samples. The original is evaluated once
  (:class:`~mil_sparsity.quality.ReferenceOutputs`) and its outputs reused at every point.
  Any other per-point measurement plugs in through ``quality``, a callable given each point's
  pruned program. Either result lands in :attr:`SweepRow.quality` (None when not asked for).

The model itself is never modified. Results: :mod:`mil_sparsity.sweep.results`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.var import Var

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.plan.scoring import load_calibration
from mil_sparsity.model import pymil as _graph
from mil_sparsity.inspect_model import materialize, package_size, stored_weight_bytes
from mil_sparsity.passes import PruneByMagnitude
from mil_sparsity.model.io import ModelLike, load_model, load_program
from mil_sparsity.progress import progress_bar
from mil_sparsity.quality import ReferenceOutputs
from mil_sparsity.report import SparsityReport
from mil_sparsity.samples import function_names
from mil_sparsity.selector import OpSelector
from mil_sparsity.sweep.points import (
    DEFAULT_SPARSITIES,
    PATTERN_HELP,
    SweepArgumentError,
    SweepConfig,
    SweepPoint,
    pattern_points,
    sweep_points,
)
from mil_sparsity.sweep.results import LayerError, QualityLike, SweepResult, SweepRow

Samples = Union[Iterable[Mapping[str, np.ndarray]], ReferenceOutputs]


# (function, const name) -> (dense value, one op reading it, input name, index in a list input)
_Readers = dict[tuple[str, str], tuple[np.ndarray, Operation, str, Optional[int]]]


def _weight_readers(prog: Program) -> _Readers:
    found: _Readers = {}
    for function_name, function in prog.functions.items():
        for block in _graph.iter_blocks(function):
            for op in _graph.weight_consts(block):
                var = op.outputs[0]
                for reader in var.child_ops:
                    location = _input_location(reader, var)
                    if location is not None:
                        found[(str(function_name), str(op.name))] = (var.val, reader, *location)
                        break
    return found


def _input_location(op: Operation, var: Var) -> Optional[tuple[str, Optional[int]]]:
    for name, value in op.inputs.items():
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if item is var:
                    return str(name), index
        elif value is var:
            return str(name), None
    return None


def _sum_of_squares(values: np.ndarray) -> float:
    """``sum(x^2)`` accumulated in float64; numpy's buffered iterator upcasts a chunk at a time,
    so no float64 copy of the whole weight is made."""
    flat = values.reshape(-1)
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def _ratio(error_sq: float, norm_sq: float) -> float:
    if error_sq == 0.0:
        return 0.0
    return math.sqrt(error_sq) / math.sqrt(norm_sq) if norm_sq > 0 else math.inf


def _run_point(
    mlmodel: Any,
    point: SweepPoint,
    quality: Optional[Callable[[Program], QualityLike]],
    calibration: Optional[ActivationStats] = None,
) -> dict[str, Any]:
    """Prune a fresh program at ``point``; sizes from the program, errors against the originals."""
    prog = load_program(mlmodel)
    readers = _weight_readers(prog)
    report = SparsityReport()
    graph_pass = PruneByMagnitude()
    graph_pass.config = OpSelector(global_config=point.config)
    graph_pass.calibration = calibration
    graph_pass.report = report
    graph_pass.apply(prog)
    layers: list[LayerError] = []
    error_sq = norm_sq = 0.0
    for record in report.packed:
        original, reader, name, index = readers[(record.function, record.name)]
        value = reader.inputs[name]
        sparse_op = (value[index] if index is not None else value).op
        if sparse_op is None or sparse_op.op_type != "constexpr_sparse_to_dense":
            raise RuntimeError(f"{record.name} was reported packed but is not read in sparse form")
        # the stored values may differ from the original (reconstruction): subtract at float32
        # precision at least (exact for pruning, which only zeroes elements)
        precision = np.result_type(original.dtype, np.float32)
        difference = np.subtract(original, materialize(sparse_op), dtype=precision)
        layer_error_sq, layer_norm_sq = _sum_of_squares(difference), _sum_of_squares(original)
        error_sq += layer_error_sq
        norm_sq += layer_norm_sq
        layers.append(
            LayerError(
                record.function, record.name, record.sparsity,
                _ratio(layer_error_sq, layer_norm_sq),
            )
        )
    totals = report.totals()
    return {
        "packed": totals["packed"],
        "considered": totals["weights"],
        "model_bytes": stored_weight_bytes(prog),
        "relative_error": _ratio(error_sq, norm_sq),
        "layers": tuple(layers),
        "quality": None if quality is None else quality(prog),
    }


def _output_quality(
    mlmodel: Any,
    samples: Samples,
    backend: str,
    function_name: Optional[str],
    progress: Optional[bool],
) -> Callable[[Program], QualityLike]:
    """``quality`` for :func:`_run_point`: the pruned program against the original's outputs
    on ``samples``, the original evaluated here, once."""
    if isinstance(samples, ReferenceOutputs):
        reference = samples
    else:
        reference = ReferenceOutputs.evaluate(
            mlmodel,
            samples,
            backend=backend,
            function_name=function_names(mlmodel)[0] if function_name is None else function_name,
            progress=progress,
        )
    return lambda pruned: reference.compare(pruned, progress=False)


def sweep(
    model: ModelLike,
    points: Optional[Iterable[Union[SweepPoint, SweepConfig]]] = None,
    *,
    samples: Optional[Samples] = None,
    backend: str = "reference",
    function_name: Optional[str] = None,
    quality: Optional[Callable[[Program], QualityLike]] = None,
    program: Optional[Program] = None,
    progress: Optional[bool] = None,
    calibration: Any = None,
) -> SweepResult:
    """Measure size, weight error and (with ``samples``) output quality of ``model`` pruned at
    each point (module docstring).

    ``model``: an MLModel or the path of a saved .mlpackage (ML Program, iOS16+); it is not
    modified and nothing is written. ``points``: :class:`SweepPoint` s or bare configs of
    prune_by_magnitude, run in order (default: :func:`sweep_points` ``()``, unstructured at
    0.5, 0.75, 0.9).

    ``samples``: input dicts (e.g. :func:`mil_sparsity.samples.load_samples` or
    :func:`~mil_sparsity.samples.random_samples`), or a ready
    :class:`~mil_sparsity.quality.ReferenceOutputs` of this model; each row's ``quality`` is
    then a QualityReport of the pruned function ``function_name`` (None: the model's default
    function) against the original, evaluated with ``backend`` ("reference": the numpy
    evaluator; "coreml": MLModel.predict, macOS only). ``quality(program)``: instead of
    ``samples``, any callable given each point's pruned program; its result is stored in the
    row. ``program``: the model's program if the caller has already loaded it (only read, for
    the original sizes; saves one load). ``progress``: a tqdm bar on stderr (None: when stderr
    is a terminal). ``calibration``: activation statistics (an ActivationStats or the path of
    one) for points with ``scoring="activation"`` or a reconstruction ``method``.

    Raises ValueError for ``samples`` together with ``quality``, for the evaluator's input
    checks, and for errors of the pass (e.g. a function older than iOS16); RuntimeError for
    ``backend="coreml"`` off macOS.
    """
    if samples is not None and quality is not None:
        raise InvalidInputError(
            "samples and quality: give one (samples measures output quality itself; quality is "
            "a callable for any other per-point measurement)"
        )
    stats = load_calibration(calibration, "sweep: calibration")
    mlmodel = load_model(model)
    if isinstance(model, (str, os.PathLike)):
        path: Optional[str] = os.fspath(model)
    else:
        path = getattr(mlmodel, "package_path", None)
    original = load_program(mlmodel) if program is None else program
    original_bytes = stored_weight_bytes(original)
    functions = tuple(str(name) for name in original.functions)
    del original, program
    if samples is not None:
        quality = _output_quality(mlmodel, samples, backend, function_name, progress)
    package_bytes = package_size(path) if path else None
    rows: list[SweepRow] = []
    items = sweep_points() if points is None else points
    for item in progress_bar(items, desc="sweep", enabled=progress):
        point = item if isinstance(item, SweepPoint) else SweepPoint.of(item)
        measured = _run_point(mlmodel, point, quality, stats)
        rows.append(
            SweepRow(
                pattern=point.pattern,
                sparsity=point.sparsity,
                config=point.config,
                size_ratio=measured["model_bytes"] / original_bytes if original_bytes else None,
                est_package_bytes=(
                    None if package_bytes is None
                    else package_bytes - original_bytes + measured["model_bytes"]
                ),
                **measured,
            )
        )
    return SweepResult(
        model=None if path is None else str(path),
        original_bytes=original_bytes,
        package_bytes=package_bytes,
        functions=functions,
        rows=tuple(rows),
    )


__all__ = ["Samples", "sweep"]  # the package (mil_sparsity.sweep) re-exports the rest
