"""``sweep``: how big a model gets and how far its weights move, for several pruning settings.

A *sweep point* is a pattern label, a sparsity level and the config that prunes at that level.
:func:`sweep_points` builds them from pattern names:

- ``unstructured``: :class:`~mil_sparsity.MagnitudeConfig` at each level;
- ``block:B``: :class:`~mil_sparsity.BlockConfig` with blocks of ``B`` along ``dim``, at each level;
- ``n:m:N:M``: :class:`~mil_sparsity.NMConfig`; its sparsity is fixed at ``N/M``, so one point.

For every point, :func:`sweep` loads a fresh PyMIL program from the model and runs the real
``mil_sparsity::prune_by_magnitude`` pass on it with the point's config as global config (graph
after: each packed const replaced by ``constexpr_sparse_to_dense``, exactly as ``prune`` writes
it). It then measures, without writing any model:

- ``model_bytes``: every weight as it would be stored (packed weights in their sparse form, the
  rest as they are), counted as :func:`mil_sparsity.inspect_model.weight_sources` counts;
- ``relative_error``: the weight-space error ``sqrt(sum ||W - W_pruned||^2) / sqrt(sum ||W||^2)``
  over the weights the pass packed (sums of squares accumulated in float64), and per weight in
  ``layers``.

The model itself is never modified. Output-level quality (relative L2 error, cosine, SNR, max
abs error, top-1 agreement per output) plugs in through ``quality``: a callable given each point's
pruned program, whose result lands in :attr:`SweepRow.quality` (None when not asked for).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence, Union, cast

import attrs
import numpy as np
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.var import Var

from mil_sparsity import _graph
from mil_sparsity.configs import BlockConfig, MagnitudeConfig, NMConfig, config_to_dict
from mil_sparsity.inspect_model import format_rows, materialize, package_size, weight_sources
from mil_sparsity.passes import PruneByMagnitude
from mil_sparsity.progress import progress_bar
from mil_sparsity.posthoc import ModelLike, load_model, load_program
from mil_sparsity.report import SparsityReport
from mil_sparsity.selector import OpSelector

DEFAULT_SPARSITIES = (0.5, 0.75, 0.9)
PATTERN_HELP = "unstructured, block:B (e.g. block:4) or n:m:N:M (e.g. n:m:3:4)"
SweepConfig = Union[MagnitudeConfig, BlockConfig, NMConfig]


class QualityLike(Protocol):
    """What :attr:`SweepRow.quality` holds: any result with a JSON-ready ``to_dict``."""

    def to_dict(self) -> dict[str, Any]: ...


class SweepArgumentError(ValueError):
    """A bad argument of :func:`sweep_points`: ``argument`` names it (``sparsities``, ``dim``,
    ``patterns``, or ``patterns block:1`` when one pattern's numbers make an invalid config),
    ``detail`` says what is wrong with the value and what is allowed."""

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(f"{argument}: {detail}")
        self.argument = argument
        self.detail = detail


# ----- points ---------------------------------------------------------------------------------
@attrs.frozen
class SweepPoint:
    """One run of a sweep: ``config`` prunes to ``sparsity``; ``pattern`` labels its curve."""

    pattern: str
    sparsity: float
    config: SweepConfig

    @classmethod
    def of(cls, config: SweepConfig) -> "SweepPoint":
        """The point of a bare config, labelled as :func:`sweep_points` labels its pattern."""
        if isinstance(config, MagnitudeConfig):
            return cls("unstructured", config.target_sparsity, config)
        if isinstance(config, BlockConfig):
            return cls(f"block:{config.block_size}", config.target_sparsity, config)
        if isinstance(config, NMConfig):
            return cls(f"n:m:{config.n}:{config.m}", config.sparsity, config)
        raise TypeError(
            "a sweep point's config must be a MagnitudeConfig, BlockConfig or NMConfig (the "
            f"configs of prune_by_magnitude), got {type(config).__name__}"
        )


def _build(argument: str, factory: Callable[..., SweepConfig], **values: Any) -> SweepConfig:
    """A config from the values that are set; its validation error names ``argument``."""
    try:
        return factory(**{key: value for key, value in values.items() if value is not None})
    except (TypeError, ValueError) as error:
        raise SweepArgumentError(argument, str(error)) from None


def pattern_points(
    pattern: str,
    sparsities: Sequence[float],
    *,
    dim: Optional[int] = None,
    weight_threshold: Optional[int] = None,
) -> list[SweepPoint]:
    """The points of one pattern name (see the module docstring); n:m gives one point.

    ``dim`` is the axis of block and n:m patterns (None: the config's default) and is ignored
    by ``unstructured``. Raises :class:`SweepArgumentError` naming ``patterns`` for an unknown
    name or a config the name's numbers make invalid.
    """
    parts = [part.strip() for part in pattern.lower().split(":")]
    if parts in (["unstructured"], ["magnitude"]):
        return [
            SweepPoint(
                "unstructured",
                level,
                _build("sparsities", MagnitudeConfig, target_sparsity=level,
                       weight_threshold=weight_threshold),
            )
            for level in sparsities
        ]
    if len(parts) == 2 and parts[0] == "block" and parts[1].isdigit():
        label = f"block:{int(parts[1])}"
        values = {"block_size": int(parts[1]), "dim": dim, "weight_threshold": weight_threshold}
        _build(f"patterns {label}", BlockConfig, target_sparsity=0.5, **values)
        return [
            SweepPoint(
                label, level, _build("sparsities", BlockConfig, target_sparsity=level, **values)
            )
            for level in sparsities
        ]
    if len(parts) == 4 and parts[:2] == ["n", "m"] and parts[2].isdigit() and parts[3].isdigit():
        label = f"n:m:{int(parts[2])}:{int(parts[3])}"
        config = cast(NMConfig, _build(f"patterns {label}", NMConfig, n=int(parts[2]),
                                       m=int(parts[3]), dim=dim, weight_threshold=weight_threshold))
        return [SweepPoint(label, config.sparsity, config)]
    raise SweepArgumentError("patterns", f"unknown pattern {pattern!r}; use {PATTERN_HELP}")


def sweep_points(
    patterns: Sequence[str] = ("unstructured",),
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    dim: Optional[int] = None,
    weight_threshold: Optional[int] = None,
) -> list[SweepPoint]:
    """Every pattern at every level, in that order; a repeated pattern runs once.

    Every level is checked (a fraction in [0, 1]) even if only n:m patterns are given; ``dim``
    needs at least one block or n:m pattern. Raises :class:`SweepArgumentError`.
    """
    for level in sparsities:
        _build("sparsities", MagnitudeConfig, target_sparsity=level)
    points: list[SweepPoint] = []
    seen: set[str] = set()
    for pattern in patterns:
        found = pattern_points(pattern, sparsities, dim=dim, weight_threshold=weight_threshold)
        label = found[0].pattern if found else pattern
        if label not in seen:
            seen.add(label)
            points.extend(found)
    if dim is not None and seen <= {"unstructured"}:
        raise SweepArgumentError(
            "dim", f"only block:B and n:m:N:M patterns have an axis; got dim={dim} with "
            f"patterns {sorted(seen)}"
        )
    return points


# ----- results --------------------------------------------------------------------------------
@attrs.frozen
class LayerError:
    """The weight-space error of one packed weight."""

    function: str
    name: str
    sparsity: Optional[float]
    relative_error: float

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class SweepRow:
    """One sweep point, measured.

    ``quality`` holds the output-level comparison of the pruned model with the original when
    :func:`sweep` was given a ``quality`` callable, else None.
    """

    pattern: str
    sparsity: float
    config: SweepConfig
    packed: int  # weights the pass packed
    considered: int  # weights the pass looked at (its report's rows)
    model_bytes: int  # every weight as it would be stored
    size_ratio: Optional[float]  # model_bytes / the original's (None if that is 0)
    est_package_bytes: Optional[int]  # package on disk now, minus the weights' change
    relative_error: float
    layers: tuple[LayerError, ...]
    quality: Optional[QualityLike] = None

    @property
    def worst(self) -> Optional[LayerError]:
        """The packed weight with the largest relative error (None if none was packed)."""
        return max(self.layers, key=lambda layer: layer.relative_error, default=None)

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {
            "pattern": self.pattern,
            "sparsity": self.sparsity,
            "config": config_to_dict(self.config),
            "packed": self.packed,
            "considered": self.considered,
            "model_bytes": self.model_bytes,
            "size_ratio": self.size_ratio,
            "est_package_bytes": self.est_package_bytes,
            "relative_error": self.relative_error,
            "worst": None if worst is None else worst.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "quality": None if self.quality is None else self.quality.to_dict(),
        }


@attrs.frozen
class SweepResult:
    """The original model's size and one :class:`SweepRow` per point, in run order."""

    model: Optional[str]  # the package path, when known
    original_bytes: int  # every weight as stored now
    package_bytes: Optional[int]  # the package on disk now, when known
    functions: tuple[str, ...]
    rows: tuple[SweepRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "original": {"model_bytes": self.original_bytes, "package_bytes": self.package_bytes},
            "runs": [row.to_dict() for row in self.rows],
        }

    def format_table(self) -> str:
        """One line per point after the original's, then what the columns mean."""
        multifunction = len(self.functions) > 1
        rows = [("pattern", "sparsity", "packed", "model bytes", "size", "rel. error",
                 "worst weight (error)")]
        rows.append(("original", "-", "-", f"{self.original_bytes:,}", "100.0%", "0.0000", "-"))
        for row in self.rows:
            worst = row.worst
            rows.append(
                (
                    row.pattern,
                    f"{row.sparsity:.3f}",
                    f"{row.packed}/{row.considered}",
                    f"{row.model_bytes:,}",
                    "-" if row.size_ratio is None else f"{row.size_ratio:.1%}",
                    f"{row.relative_error:.4f}",
                    "-" if worst is None else (
                        f"{worst.function + '/' if multifunction else ''}{worst.name} "
                        f"({worst.relative_error:.4f})"
                    ),
                )
            )
        lines = format_rows(rows, right_align=(1, 2, 3, 4, 5))
        on_disk = (
            "" if self.package_bytes is None
            else f"; package on disk now: {self.package_bytes:,} bytes"
        )
        lines.append("")
        lines.append(
            "model bytes: every weight as it would be stored (pruned weights packed, the rest "
            f"as now){on_disk}"
        )
        lines.append(
            "rel. error: sqrt(sum ||W - W_pruned||^2) / sqrt(sum ||W||^2) over the packed weights"
        )
        return "\n".join(lines)


# ----- running --------------------------------------------------------------------------------
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


def _stored_bytes(prog: Program) -> int:
    return sum(source.stored_bytes() for source in weight_sources(prog, 0))


def _run_point(
    mlmodel: Any, point: SweepPoint, quality: Optional[Callable[[Program], QualityLike]]
) -> dict[str, Any]:
    """Prune a fresh program at ``point``; sizes from the program, errors against the originals."""
    prog = load_program(mlmodel)
    readers = _weight_readers(prog)
    report = SparsityReport()
    graph_pass = PruneByMagnitude()
    graph_pass.config = OpSelector(global_config=point.config)
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
        # pruning only zeroes elements, so the difference is exact in the weight's own dtype
        difference = np.subtract(original, materialize(sparse_op), dtype=original.dtype)
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
        "model_bytes": _stored_bytes(prog),
        "relative_error": _ratio(error_sq, norm_sq),
        "layers": tuple(layers),
        "quality": None if quality is None else quality(prog),
    }


def sweep(
    model: ModelLike,
    points: Optional[Iterable[Union[SweepPoint, SweepConfig]]] = None,
    *,
    quality: Optional[Callable[[Program], QualityLike]] = None,
    program: Optional[Program] = None,
    progress: Optional[bool] = None,
) -> SweepResult:
    """Measure size and weight error of ``model`` pruned at each point (module docstring).

    ``model``: an MLModel or the path of a saved .mlpackage (ML Program, iOS16+); it is not
    modified and nothing is written. ``points``: :class:`SweepPoint` s or bare configs of
    prune_by_magnitude, run in order (default: :func:`sweep_points` ``()``, unstructured at
    0.5, 0.75, 0.9). ``progress``: a tqdm bar on stderr (None: when stderr is a terminal).
    ``quality(program)``, if given, is called with each point's pruned program and its result
    stored in the row. ``program``: the model's program if the caller has already loaded it
    (only read, for the original sizes; saves one load). Errors of the pass (e.g. a function
    older than iOS16) propagate as ValueError.
    """
    mlmodel = load_model(model)
    if isinstance(model, (str, os.PathLike)):
        path: Optional[str] = os.fspath(model)
    else:
        path = getattr(mlmodel, "package_path", None)
    original = load_program(mlmodel) if program is None else program
    original_bytes = _stored_bytes(original)
    functions = tuple(str(name) for name in original.functions)
    del original, program
    package_bytes = package_size(path) if path else None
    rows: list[SweepRow] = []
    items = sweep_points() if points is None else points
    for item in progress_bar(items, desc="sweep", enabled=progress):
        point = item if isinstance(item, SweepPoint) else SweepPoint.of(item)
        measured = _run_point(mlmodel, point, quality)
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


__all__ = [
    "DEFAULT_SPARSITIES",
    "LayerError",
    "QualityLike",
    "SweepArgumentError",
    "SweepPoint",
    "SweepResult",
    "SweepRow",
    "pattern_points",
    "sweep",
    "sweep_points",
]
