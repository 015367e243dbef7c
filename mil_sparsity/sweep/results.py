"""What :func:`mil_sparsity.sweep` returns: one :class:`SweepRow` per point in a
:class:`SweepResult`, as JSON-ready dicts or a table."""

from __future__ import annotations

from typing import Any, Optional, Protocol

import attrs

from mil_sparsity.configs import config_to_dict
from mil_sparsity.inspect_model import format_rows
from mil_sparsity.quality import QualityReport
from mil_sparsity.sweep.points import SweepConfig


class QualityLike(Protocol):
    """What :attr:`SweepRow.quality` holds: any result with a JSON-ready ``to_dict``."""

    def to_dict(self) -> dict[str, Any]: ...


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
    def output_quality(self) -> Optional[QualityReport]:
        """:attr:`quality` when it is an output-level QualityReport (``sweep(samples=...)``)."""
        return self.quality if isinstance(self.quality, QualityReport) else None

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

    @property
    def has_output_quality(self) -> bool:
        """Whether the rows carry output-level :class:`~mil_sparsity.quality.QualityReport` s."""
        return any(row.output_quality is not None for row in self.rows)

    def format_table(self) -> str:
        """One line per point after the original's, then what the columns mean.

        With output quality, five more columns give each output metric at its worst over the
        model's outputs (:meth:`QualityReport.worst`); every output is in :meth:`to_dict`.
        """
        multifunction = len(self.functions) > 1
        outputs = self.has_output_quality
        header = ["pattern", "sparsity", "packed", "model bytes", "size", "rel. error"]
        original = ["original", "-", "-", f"{self.original_bytes:,}", "100.0%", "0.0000"]
        if outputs:
            header += list(_OUTPUT_COLUMNS)
            original += ["-"] * len(_OUTPUT_COLUMNS)
        rows = [tuple(header + ["worst weight (error)"]), tuple(original + ["-"])]
        samples = 0
        for row in self.rows:
            worst = row.worst
            cells = [
                row.pattern,
                f"{row.sparsity:.3f}",
                f"{row.packed}/{row.considered}",
                f"{row.model_bytes:,}",
                "-" if row.size_ratio is None else f"{row.size_ratio:.1%}",
                f"{row.relative_error:.4f}",
            ]
            report = row.output_quality
            if outputs:
                cells += ["-"] * len(_OUTPUT_COLUMNS) if report is None else _output_cells(report)
                samples = max(samples, 0 if report is None else report.samples)
            cells.append(
                "-" if worst is None else (
                    f"{worst.function + '/' if multifunction else ''}{worst.name} "
                    f"({worst.relative_error:.4f})"
                )
            )
            rows.append(tuple(cells))
        right = tuple(range(1, len(header)))
        lines = format_rows(rows, right_align=right)
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
        if outputs:
            lines.append(
                f"out *: the pruned model's outputs against the original's on {samples} "
                "sample(s), worst over the outputs (highest rel. L2 and max abs, lowest cosine, "
                "SNR and top-1 agreement; top-1 only for outputs whose last dim > 1)"
            )
        return "\n".join(lines)


_OUTPUT_COLUMNS = ("out rel.L2", "out cosine", "out SNR dB", "out max abs", "out top-1")


def _output_cells(report: QualityReport) -> list[str]:
    worst = report.worst()
    top1 = worst["top1_agreement"]
    return [
        f"{worst['relative_l2']:.4f}",
        f"{worst['cosine']:.5f}",
        f"{worst['snr_db']:.2f}",
        f"{worst['max_abs_error']:.4g}",
        "-" if top1 is None else f"{top1:.4f}",
    ]

__all__ = ["LayerError", "QualityLike", "SweepResult", "SweepRow"]
