"""What a pass did to every const it considered.

Pass a :class:`SparsityReport` as the pass option ``report`` (or to ``apply_pipeline``); the
pass appends one :class:`WeightRecord` per const after it has committed its rewrite.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional

import attrs

PACKED = "packed"
SKIPPED = "skipped"


@attrs.frozen
class WeightRecord:
    """One const weight as a pass saw it."""

    pass_name: str
    function: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    consumer_types: tuple[str, ...]
    decision: str  # PACKED or SKIPPED
    reason: str  # why it was skipped, or how the config was chosen when packed
    config: Optional[dict[str, Any]]
    sparsity: Optional[float]  # achieved (packed) or what it would have been / already is
    dense_bytes: int
    packed_bytes: Optional[int]
    # prune_by_magnitude: the block / n:m axis (dim, or the reduction axis for dim=None), or the
    # axis activation scores were scaled along; and the scoring that ran ("magnitude" /
    # "activation"; None when no ranking handler ran)
    axis: Optional[int] = None
    scoring: Optional[str] = None
    # how the stored values were chosen: "prune" (the kept weights as they were), "pack"
    # (every value as it was), or a reconstruction method's name; None when no handler ran
    method: Optional[str] = None

    @property
    def packed(self) -> bool:
        return self.decision == PACKED

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["shape"] = list(self.shape)
        data["consumer_types"] = list(self.consumer_types)
        return data


@attrs.define
class SparsityReport:
    """Records appended by every mil_sparsity pass that ran with this report, and ``notes``:
    facts about the whole run (a post-hoc run that raised the model's deployment target says
    so here; see :mod:`mil_sparsity.plan.targets`)."""

    records: list[WeightRecord] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    def __iter__(self) -> Iterator[WeightRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def extend(self, records: list[WeightRecord]) -> None:
        self.records.extend(records)

    @property
    def packed(self) -> list[WeightRecord]:
        return [record for record in self.records if record.packed]

    @property
    def skipped(self) -> list[WeightRecord]:
        return [record for record in self.records if not record.packed]

    def totals(self) -> dict[str, int]:
        """Bytes of the considered weights before and after (skipped ones stay dense)."""
        dense = sum(record.dense_bytes for record in self.records)
        after = sum(
            record.packed_bytes if record.packed and record.packed_bytes is not None
            else record.dense_bytes
            for record in self.records
        )
        return {
            "weights": len(self.records),
            "packed": len(self.packed),
            "dense_bytes": dense,
            "bytes_after": after,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": [record.to_dict() for record in self.records],
            "totals": self.totals(),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self, include_skipped: bool = True) -> str:
        """A plain-text table, one row per weight."""
        header = ("pass", "weight", "shape", "dtype", "ops", "decision", "sparsity", "scoring", "axis", "method", "bytes", "note")
        rows = [header]
        for record in self.records:
            if not include_skipped and not record.packed:
                continue
            after = record.packed_bytes if record.packed else record.dense_bytes
            rows.append(
                (
                    record.pass_name.split("::")[-1],
                    record.name,
                    "x".join(str(d) for d in record.shape),
                    record.dtype,
                    ",".join(sorted(set(record.consumer_types))) or "-",
                    record.decision,
                    "-" if record.sparsity is None else f"{record.sparsity:.3f}",
                    record.scoring or "-",
                    "-" if record.axis is None else str(record.axis),
                    record.method or "-",
                    f"{record.dense_bytes}->{after}",
                    record.reason,
                )
            )
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        totals = self.totals()
        lines.append(
            f"total: {totals['packed']}/{totals['weights']} weights packed, "
            f"{totals['dense_bytes']} -> {totals['bytes_after']} bytes"
        )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)
