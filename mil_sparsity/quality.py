"""Output-level quality: how far a candidate model's outputs are from a reference model's.

``compare(reference_model, candidate_model, samples)`` evaluates both models on every input
sample (with :mod:`mil_sparsity.reference`, the numpy evaluator, or Core ML's runtime on macOS)
and summarises, per output:

- ``relative_l2``: ``||cand - ref|| / ||ref||`` over every element of every sample;
- ``cosine``: the mean, over every vector along the output's last axis (e.g. one embedding or one
  row of class scores), of ``<ref, cand> / (||ref|| ||cand||)``; a vector pair where either side
  is all zeros counts 1.0 when both are zero and 0.0 otherwise;
- ``snr_db``: ``10 log10(||ref||^2 / ||cand - ref||^2)`` (inf when the outputs are identical);
- ``max_abs_error``: the largest ``|cand - ref|``;
- ``top1_agreement``: for outputs whose last dimension is > 1 (class scores, token logits), the
  fraction of last-axis vectors whose argmax is the same in both; None otherwise.

Statistics are accumulated sample by sample (float64 sums of float32 values), so memory holds one
sample's outputs at a time. :class:`ReferenceOutputs` evaluates the reference model once on a
fixed sample list and compares many candidates with it (what ``sweep(samples=...)`` does).

The ``"reference"`` backend is :mod:`mil_sparsity.reference`: a numpy evaluator computing in
float32, a reference for checking and calibrating, not a production runtime.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Optional

import attrs
import numpy as np

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.format import package_guard
from mil_sparsity.progress import progress_bar

Sample = Mapping[str, np.ndarray]
BACKENDS = ("reference", "coreml")


@attrs.frozen
class OutputQuality:
    """The quality of one output over all samples (see the module docstring for definitions)."""

    name: str
    shape: tuple[int, ...]
    relative_l2: float
    cosine: float
    snr_db: float
    max_abs_error: float
    top1_agreement: Optional[float]

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["shape"] = list(self.shape)
        return data


@attrs.frozen
class QualityReport:
    """Per-output quality of a candidate model against a reference model."""

    outputs: tuple[OutputQuality, ...]
    samples: int

    def __getitem__(self, name: str) -> OutputQuality:
        for output in self.outputs:
            if output.name == name:
                return output
        raise KeyError(f"no output named {name!r}; outputs: {[o.name for o in self.outputs]}")

    @property
    def worst_relative_l2(self) -> float:
        return max((o.relative_l2 for o in self.outputs), default=0.0)

    @property
    def mean_cosine(self) -> float:
        if not self.outputs:
            return 1.0
        return float(np.mean([o.cosine for o in self.outputs]))

    def worst(self) -> dict[str, Optional[float]]:
        """Each metric at its worst over the outputs: the largest ``relative_l2`` and
        ``max_abs_error``, the lowest ``cosine``, ``snr_db`` and ``top1_agreement`` (None when
        no output has top-1)."""
        if not self.outputs:
            return {"relative_l2": 0.0, "cosine": 1.0, "snr_db": math.inf,
                    "max_abs_error": 0.0, "top1_agreement": None}
        top1 = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return {
            "relative_l2": max(o.relative_l2 for o in self.outputs),
            "cosine": min(o.cosine for o in self.outputs),
            "snr_db": min(o.snr_db for o in self.outputs),
            "max_abs_error": max(o.max_abs_error for o in self.outputs),
            "top1_agreement": min(top1) if top1 else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "outputs": [o.to_dict() for o in self.outputs],
            "worst": self.worst(),
        }

    def format_table(self) -> str:
        header = ("output", "shape", "rel_l2", "cosine", "snr_db", "max_abs", "top1")
        rows = [header]
        for o in self.outputs:
            rows.append(
                (
                    o.name,
                    "x".join(str(d) for d in o.shape) or "scalar",
                    f"{o.relative_l2:.4g}",
                    f"{o.cosine:.5f}",
                    f"{o.snr_db:.2f}",
                    f"{o.max_abs_error:.4g}",
                    "-" if o.top1_agreement is None else f"{o.top1_agreement:.4f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.append(f"samples: {self.samples}")
        return "\n".join(lines)


@attrs.define
class _OutputAccumulator:
    """Running sums for one output; :meth:`add` takes one sample's pair of arrays."""

    name: str
    shape: tuple[int, ...] = ()
    ref_sq: float = 0.0
    diff_sq: float = 0.0
    cosine_sum: float = 0.0
    vectors: int = 0
    max_abs: float = 0.0
    top1_same: int = 0
    top1_total: int = 0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape:
            raise InvalidInputError(
                f"output {self.name!r}: the candidate's shape {cand.shape} differs from the "
                f"reference's {ref.shape}"
            )
        self.shape = tuple(int(d) for d in ref.shape)
        ref32 = np.asarray(ref, dtype=np.float32)
        cand32 = np.asarray(cand, dtype=np.float32)
        diff = cand32 - ref32
        self.ref_sq += float(np.dot(ref32.ravel(), ref32.ravel()))
        self.diff_sq += float(np.dot(diff.ravel(), diff.ravel()))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))
        self._add_vectors(ref32, cand32)

    def _add_vectors(self, ref: np.ndarray, cand: np.ndarray) -> None:
        width = ref.shape[-1] if ref.ndim else 1
        rows_ref = ref.reshape(-1, width) if ref.size else ref.reshape(0, max(width, 1))
        rows_cand = cand.reshape(rows_ref.shape)
        self.cosine_sum += float(np.sum(row_cosines(rows_ref, rows_cand)))
        self.vectors += rows_ref.shape[0]
        if width > 1 and rows_ref.shape[0]:
            same = np.argmax(rows_ref, axis=1) == np.argmax(rows_cand, axis=1)
            self.top1_same += int(np.count_nonzero(same))
            self.top1_total += rows_ref.shape[0]

    def result(self) -> OutputQuality:
        if self.diff_sq == 0.0:
            snr = math.inf
        elif self.ref_sq == 0.0:
            snr = -math.inf
        else:
            snr = 10.0 * math.log10(self.ref_sq / self.diff_sq)
        if self.ref_sq > 0.0:
            relative = math.sqrt(self.diff_sq / self.ref_sq)
        else:
            relative = 0.0 if self.diff_sq == 0.0 else math.inf
        return OutputQuality(
            name=self.name,
            shape=self.shape,
            relative_l2=relative,
            cosine=self.cosine_sum / self.vectors if self.vectors else 1.0,
            snr_db=snr,
            max_abs_error=self.max_abs,
            top1_agreement=self.top1_same / self.top1_total if self.top1_total else None,
        )


def row_cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row pair of two [rows, width] float32 arrays (float32).

    A pair whose norms are both zero is 1.0 (identical); one zero norm gives 0.0.
    """
    dots = np.einsum("ij,ij->i", ref, cand, dtype=np.float64)
    ref_norm = np.sqrt(np.einsum("ij,ij->i", ref, ref, dtype=np.float64))
    cand_norm = np.sqrt(np.einsum("ij,ij->i", cand, cand, dtype=np.float64))
    denom = ref_norm * cand_norm
    both_zero = (ref_norm == 0.0) & (cand_norm == 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0.0, dots / np.where(denom > 0.0, denom, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos).astype(np.float32)


Evaluator = Callable[[Sample], Mapping[str, np.ndarray]]


def check_backend(backend: str) -> None:
    """ValueError for a name not in :data:`BACKENDS`; RuntimeError for ``"coreml"`` where the
    Core ML runtime does not exist (anywhere but macOS)."""
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "coreml" and sys.platform != "darwin":
        raise RuntimeError(
            f"backend='coreml' needs the Core ML runtime, which only exists on macOS (this is "
            f"{sys.platform}); use backend='reference' (the numpy evaluator) instead"
        )


def evaluator(
    model: Any,
    *,
    backend: str = "reference",
    function_name: str = "main",
    template: Any = None,
) -> Evaluator:
    """A function ``inputs -> outputs`` for ``model`` on the chosen backend.

    ``"reference"`` uses :class:`mil_sparsity.reference.ReferenceEvaluator` (numpy, float32, any
    platform; ``model`` an MLModel, a package path or a PyMIL Program). ``"coreml"`` uses
    ``MLModel.predict``, which needs the Core ML runtime (macOS; elsewhere RuntimeError): a PyMIL
    Program is first exported with the description of ``template`` (the MLModel it came from)
    and saved to a temporary package. Errors: :func:`check_backend`.
    """
    check_backend(backend)
    if backend == "reference":
        from mil_sparsity.reference import ReferenceEvaluator

        loaded = ReferenceEvaluator(model, function_name=function_name)
        return lambda sample: loaded.run(sample)
    return _coreml_evaluator(model, function_name, template)


@attrs.frozen
class _CoreMLEvaluator:
    """``MLModel.predict`` of a loaded model; holds the temporary package it was saved to."""

    mlmodel: Any
    workdir: Any = None  # a TemporaryDirectory, removed when the evaluator is dropped

    def __call__(self, sample: Sample) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.mlmodel.predict(dict(sample)).items()}


def _coreml_evaluator(model: Any, function_name: str, template: Any) -> Evaluator:
    """``model`` loaded by the Core ML runtime with ``function_name`` (macOS only)."""
    import tempfile

    import coremltools as ct
    from coremltools.converters.mil.mil.program import Program

    from mil_sparsity.model.io import load_model, program_to_model

    workdir = None
    if isinstance(model, Program):
        if template is None:
            raise InvalidInputError(
                "template: backend='coreml' needs the MLModel a PyMIL Program came from, to "
                "export the program with its description"
            )
        workdir = tempfile.TemporaryDirectory(prefix="mil_sparsity_coreml_")
        path = os.path.join(workdir.name, "candidate.mlpackage")
        program_to_model(model, load_model(template)).save(path)
    elif isinstance(model, ct.models.MLModel):
        path = str(model.package_path)
    else:
        path = os.fspath(model)
    if os.path.isdir(path):
        package_guard.check_package(path)  # before Core ML reads anything from it
    with package_guard.manifest_preserved(path) if os.path.isdir(path) else contextlib.nullcontext():
        loaded = ct.models.MLModel(path, function_name=function_name)
    return _CoreMLEvaluator(loaded, workdir)


def compare(
    reference_model: Any,
    candidate_model: Any,
    samples: Iterable[Sample] | Sample,
    *,
    backend: str = "reference",
    function_name: str = "main",
    progress: Optional[bool] = None,
) -> QualityReport:
    """Evaluate both models on every sample and summarise each output's error.

    ``samples`` is one input dict or an iterable of them. ``progress`` shows a tqdm bar (default:
    only when stderr is a TTY). Both models are left unchanged.
    """
    run_reference = evaluator(reference_model, backend=backend, function_name=function_name)
    run_candidate = evaluator(candidate_model, backend=backend, function_name=function_name)
    return compare_evaluators(run_reference, run_candidate, samples, progress=progress)


def _as_list(samples: Iterable[Sample] | Sample) -> Iterable[Sample]:
    return [samples] if isinstance(samples, Mapping) else samples


def summarise(pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> QualityReport:
    """The report of (reference outputs, candidate outputs) pairs, one pair per sample."""
    accumulators: dict[str, _OutputAccumulator] = {}
    count = 0
    for ref_out, cand_out in pairs:
        if set(ref_out) != set(cand_out):
            raise InvalidInputError(
                f"the models' outputs differ: reference has {sorted(ref_out)}, candidate has "
                f"{sorted(cand_out)}"
            )
        for name, ref_value in ref_out.items():
            accumulators.setdefault(name, _OutputAccumulator(name)).add(
                np.asarray(ref_value), np.asarray(cand_out[name])
            )
        count += 1
    if count == 0:
        raise InvalidInputError("samples: need at least one input sample, got none")
    return QualityReport(
        outputs=tuple(acc.result() for acc in accumulators.values()), samples=count
    )


def compare_evaluators(
    run_reference: Evaluator,
    run_candidate: Evaluator,
    samples: Iterable[Sample] | Sample,
    *,
    progress: Optional[bool] = None,
) -> QualityReport:
    """:func:`compare` for two ready evaluators; one sample's outputs in memory at a time."""
    return summarise(
        (run_reference(sample), run_candidate(sample))
        for sample in progress_bar(_as_list(samples), desc="compare", enabled=progress)
    )


@attrs.frozen(eq=False)
class ReferenceOutputs:
    """A reference model's outputs on a fixed list of samples, evaluated once and compared
    with any number of candidates (e.g. every point of a sweep).

    Build with :meth:`evaluate`; :meth:`compare` evaluates a candidate on the same samples and
    returns the same :class:`QualityReport` as :func:`compare` would (the reference is not run
    again). Memory holds every sample and every reference output.
    """

    samples: tuple[Sample, ...]
    outputs: tuple[Mapping[str, np.ndarray], ...]
    backend: str = "reference"
    function_name: str = "main"
    model: Any = None  # the reference model; the coreml backend exports programs with it

    @classmethod
    def evaluate(
        cls,
        model: Any,
        samples: Iterable[Sample] | Sample,
        *,
        backend: str = "reference",
        function_name: str = "main",
        progress: Optional[bool] = None,
    ) -> "ReferenceOutputs":
        """Run ``model`` (as :func:`evaluator` accepts) once on every sample and keep both.

        Raises ValueError for no samples, and what the evaluator raises for bad inputs.
        """
        run = evaluator(model, backend=backend, function_name=function_name)
        kept: list[Sample] = []
        outputs: list[Mapping[str, np.ndarray]] = []
        for sample in progress_bar(_as_list(samples), desc="reference outputs", enabled=progress):
            outputs.append(run(sample))
            kept.append(sample)
        if not kept:
            raise InvalidInputError("samples: need at least one input sample, got none")
        return cls(tuple(kept), tuple(outputs), backend, function_name,
                   model if backend == "coreml" else None)

    def compare(self, candidate: Any, *, progress: Optional[bool] = None) -> QualityReport:
        """The quality of ``candidate`` (an MLModel, a package path or a PyMIL Program, e.g. a
        pruned program) against the kept reference outputs."""
        run = evaluator(candidate, backend=self.backend, function_name=self.function_name,
                        template=self.model)
        pairs = zip(self.outputs, self.samples)
        return summarise(
            (ref_out, run(sample))
            for ref_out, sample in progress_bar(
                pairs, desc="compare", total=len(self.samples), enabled=progress
            )
        )
