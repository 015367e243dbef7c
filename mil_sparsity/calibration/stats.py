"""Activation statistics for calibration-aware pruning: per input channel, the sum of squares of
the activation that multiplies each weight, and how many rows (vectors) were seen.

``ActivationStats`` maps ``(function, const name)`` to a :class:`ChannelStats`. Its file form is a
``.npz`` with one ``sum_squares`` and one ``rows`` array per weight plus a format version;
:meth:`ActivationStats.load` rejects anything else with a ValueError naming the file and the key.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Iterator, Optional

import attrs
import numpy as np

FORMAT_VERSION = 1
_FORMAT_KEY = "__mil_sparsity_activation_stats__"
_SEP = "\x1f"  # separates function, const name and field in the .npz keys (never in MIL names)


@attrs.define
class ChannelStats:
    """Running per-channel statistics of one weight's activation.

    ``sum_squares[j]`` is the sum of x_j^2 over every row seen (float64 accumulators);
    ``rows`` counts the rows (batch x positions) that went into it.
    """

    sum_squares: np.ndarray
    rows: int = 0

    @property
    def channels(self) -> int:
        return int(self.sum_squares.shape[0])

    def mean_square(self) -> np.ndarray:
        """Per-channel mean of x^2 (float32); zeros before any row was seen."""
        if self.rows == 0:
            return np.zeros(self.channels, dtype=np.float32)
        return (self.sum_squares / self.rows).astype(np.float32)

    def channel_scale(self) -> np.ndarray:
        """``sqrt(mean x_j^2)``: Wanda's per-channel factor up to a constant (float32)."""
        scale: np.ndarray = np.sqrt(self.mean_square())
        return scale


@attrs.define
class ActivationStats:
    """Statistics per weight const, keyed by ``(function name, const name)``."""

    entries: dict[tuple[str, str], ChannelStats] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def get(self, const_name: str, function: str = "main") -> Optional[ChannelStats]:
        return self.entries.get((function, const_name))

    def add(self, function: str, const_name: str, sum_squares: np.ndarray, rows: int) -> None:
        """Accumulate one activation's per-channel sum of squares for a weight."""
        key = (function, const_name)
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = ChannelStats(np.asarray(sum_squares, dtype=np.float64).copy(), rows)
            return
        if entry.channels != sum_squares.shape[0]:
            raise ValueError(
                f"activation stats for {const_name!r} (function {function!r}): {entry.channels} "
                f"channels so far, but this activation has {sum_squares.shape[0]}"
            )
        entry.sum_squares += sum_squares
        entry.rows += rows

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """A new ActivationStats holding the sums of both."""
        merged = ActivationStats()
        for source in (self, other):
            for (function, name), entry in source.entries.items():
                merged.add(function, name, entry.sum_squares, entry.rows)
        return merged

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a .npz file (see the module docstring)."""
        arrays: dict[str, np.ndarray] = {
            _FORMAT_KEY: np.frombuffer(
                json.dumps({"version": FORMAT_VERSION}).encode(), dtype=np.uint8
            )
        }
        for (function, name), entry in self.entries.items():
            arrays[_SEP.join((function, name, "sum_squares"))] = entry.sum_squares
            arrays[_SEP.join((function, name, "rows"))] = np.array(entry.rows, dtype=np.int64)
        with open(os.fspath(path), "wb") as stream:
            np.savez(stream, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ActivationStats":
        """Read a file written by :meth:`save`; ValueError on anything else."""
        where = os.fspath(path)
        try:
            with np.load(where, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"calibration: cannot read {where!r} as a .npz file: {error}") from error
        return cls.from_arrays(arrays, where=where)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, where: str) -> "ActivationStats":
        if _FORMAT_KEY not in arrays:
            raise ValueError(
                f"calibration: {where!r} is not an activation statistics file (no format key); "
                "write one with ActivationStats.save or `mil-sparsity calibrate`"
            )
        try:
            header = json.loads(bytes(arrays.pop(_FORMAT_KEY).astype(np.uint8)).decode())
            version = header["version"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"calibration: {where!r} has a corrupt format header") from error
        if version != FORMAT_VERSION:
            raise ValueError(
                f"calibration: {where!r} has format version {version!r}, this mil_sparsity reads "
                f"version {FORMAT_VERSION}"
            )
        stats = cls()
        for key in sorted(k for k in arrays if k.endswith(_SEP + "sum_squares")):
            function, name, _ = key.split(_SEP)
            sums = arrays[key]
            rows_key = _SEP.join((function, name, "rows"))
            if rows_key not in arrays:
                raise ValueError(f"calibration: {where!r} has no row count for {name!r}")
            rows = arrays[rows_key]
            if sums.ndim != 1 or sums.dtype != np.float64 or rows.shape != () or rows < 0:
                raise ValueError(
                    f"calibration: {where!r}: entry {name!r} is malformed (sum_squares "
                    f"{sums.dtype}{list(sums.shape)}, rows {rows!r}); expected a float64 vector "
                    "and a non-negative count"
                )
            if not np.all(np.isfinite(sums)) or np.any(sums < 0):
                raise ValueError(
                    f"calibration: {where!r}: entry {name!r} has negative or non-finite sums"
                )
            stats.entries[(function, name)] = ChannelStats(sums.copy(), int(rows))
        leftovers = [k for k in arrays if not k.endswith((_SEP + "sum_squares", _SEP + "rows"))]
        if leftovers:
            raise ValueError(f"calibration: {where!r} has unknown entries {leftovers[:5]}")
        return stats


def channel_sum_squares(activation: np.ndarray, channel_axis: int) -> tuple[np.ndarray, int]:
    """Sum of squares of ``activation`` per index along ``channel_axis`` (float64), and the
    number of rows (every other axis multiplied together).

    One einsum over the array as it is laid out (no transposed copy, no squared temporary),
    in float32, the activation's precision; returned as float64 for accumulation.
    """
    x = np.asarray(activation, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("activation: a channel axis needs rank >= 1, got a scalar")
    axis = channel_axis % x.ndim
    letters = "abcdefghijklmnopqrstuvwxyz"[: x.ndim]
    subscripts = f"{letters},{letters}->{letters[axis]}"
    sums = np.einsum(subscripts, x, x)
    channels = x.shape[axis]
    rows = x.size // channels if channels else 0
    return sums.astype(np.float64), int(rows)
