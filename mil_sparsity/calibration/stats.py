"""Activation statistics for calibration-aware pruning: named statistics of the activation that
multiplies each weight, and how many rows (vectors) were seen.

``ActivationStats`` maps ``(function, const name)`` to a :class:`ChannelStats`, which holds:

* ``sum_squares`` (always): per input channel j, the sum of x_j^2 (Wanda's scale);
* ``gram`` (when collected with ``gram=True``): X^T X over the rows, [channels, channels]
  (the Hessian of a layer's squared output error, for SparseGPT and ADMM). A 4096-wide linear
  needs 4096^2 x 8 bytes = 128 MB. A conv weight's Gram is that of its im2col patches, one per
  group: [groups, K, K] with K = C_in/groups x kH x kW (channel-major, then kernel row, then
  kernel column: the order of ``weight.reshape(O, -1)``); its ``sum_squares`` stay per input
  channel.

Both are float64 accumulators. The file form is a ``.npz`` with one array per statistic and
weight, a ``rows`` count per weight and a format version: version 2 (this one) names each
statistic; version 1 files (``sum_squares`` and ``rows`` only) still load.
:meth:`ActivationStats.load` rejects anything else with a ValueError naming the file and key.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Iterator, Optional

import attrs
import numpy as np

from mil_sparsity.errors import InvalidInputError

FORMAT_VERSION = 2
#: the format versions :meth:`ActivationStats.load` reads
READABLE_VERSIONS = (1, 2)
SUM_SQUARES = "sum_squares"
GRAM = "gram"
ROWS = "rows"
#: the statistics a file may hold per weight, besides its row count
STATISTICS = (SUM_SQUARES, GRAM)
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
    gram: Optional[np.ndarray] = None  # X^T X, [channels, channels] float64

    @property
    def channels(self) -> int:
        return int(self.sum_squares.shape[0])

    @property
    def statistics(self) -> dict[str, np.ndarray]:
        """Every statistic held, by name (:data:`STATISTICS`)."""
        held = {SUM_SQUARES: self.sum_squares}
        if self.gram is not None:
            held[GRAM] = self.gram
        return held

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

    def add(
        self, function: str, const_name: str, sum_squares: np.ndarray, rows: int, gram: Optional[np.ndarray] = None
    ) -> None:
        """Accumulate one activation's statistics for a weight (``gram``: its X^T X, if collected)."""
        key = (function, const_name)
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = ChannelStats(
                np.asarray(sum_squares, dtype=np.float64).copy(),
                rows,
                None if gram is None else np.asarray(gram, dtype=np.float64).copy(),
            )
            return
        where = f"activation stats for {const_name!r} (function {function!r})"
        if entry.channels != sum_squares.shape[0]:
            raise InvalidInputError(
                f"{where}: {entry.channels} channels so far, but this activation has {sum_squares.shape[0]}"
            )
        if (entry.gram is None) != (gram is None):
            raise InvalidInputError(f"{where}: a gram statistic for some activations and not for others")
        entry.sum_squares += sum_squares
        if entry.gram is not None and gram is not None:
            entry.gram += gram
        entry.rows += rows

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """A new ActivationStats holding the sums of both."""
        merged = ActivationStats()
        for source in (self, other):
            for (function, name), entry in source.entries.items():
                merged.add(function, name, entry.sum_squares, entry.rows, entry.gram)
        return merged

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a .npz file (see the module docstring)."""
        arrays: dict[str, np.ndarray] = {
            _FORMAT_KEY: np.frombuffer(
                json.dumps({"version": FORMAT_VERSION}).encode(), dtype=np.uint8
            )
        }
        for (function, name), entry in self.entries.items():
            for statistic, values in entry.statistics.items():
                arrays[_SEP.join((function, name, statistic))] = values
            arrays[_SEP.join((function, name, ROWS))] = np.array(entry.rows, dtype=np.int64)
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
            raise InvalidInputError(f"calibration: cannot read {where!r} as a .npz file: {error}") from error
        return cls.from_arrays(arrays, where=where)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, where: str) -> "ActivationStats":
        if _FORMAT_KEY not in arrays:
            raise InvalidInputError(
                f"calibration: {where!r} is not an activation statistics file (no format key); "
                "write one with ActivationStats.save or `mil-sparsity calibrate`"
            )
        try:
            header = json.loads(bytes(arrays.pop(_FORMAT_KEY).astype(np.uint8)).decode())
            version = header["version"]
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidInputError(f"calibration: {where!r} has a corrupt format header") from error
        if version not in READABLE_VERSIONS:
            raise InvalidInputError(
                f"calibration: {where!r} has format version {version!r}, this mil_sparsity reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}"
            )
        stats = cls()
        for key in sorted(k for k in arrays if k.endswith(_SEP + "sum_squares")):
            function, name, _ = key.split(_SEP)
            sums = arrays[key]
            rows_key = _SEP.join((function, name, "rows"))
            if rows_key not in arrays:
                raise InvalidInputError(f"calibration: {where!r} has no row count for {name!r}")
            rows = arrays[rows_key]
            if sums.ndim != 1 or sums.dtype != np.float64 or rows.shape != () or rows < 0:
                raise InvalidInputError(
                    f"calibration: {where!r}: entry {name!r} is malformed (sum_squares "
                    f"{sums.dtype}{list(sums.shape)}, rows {rows!r}); expected a float64 vector "
                    "and a non-negative count"
                )
            if not np.all(np.isfinite(sums)) or np.any(sums < 0):
                raise InvalidInputError(
                    f"calibration: {where!r}: entry {name!r} has negative or non-finite sums"
                )
            gram = arrays.get(_SEP.join((function, name, GRAM))) if version >= 2 else None
            if gram is not None and not _well_formed_gram(gram, sums.shape[0]):
                raise InvalidInputError(
                    f"calibration: {where!r}: entry {name!r} has a malformed gram "
                    f"({gram.dtype}{list(gram.shape)}); expected finite float64 "
                    f"[{sums.shape[0]}, {sums.shape[0]}], or [groups, K, K] for a conv whose "
                    f"groups x K is a multiple of its {sums.shape[0]} channels"
                )
            stats.entries[(function, name)] = ChannelStats(sums.copy(), int(rows), None if gram is None else gram.copy())
        known = tuple(_SEP + suffix for suffix in (*STATISTICS, ROWS)) if version >= 2 else (_SEP + SUM_SQUARES, _SEP + ROWS)
        leftovers = [k for k in arrays if not k.endswith(known)]
        if leftovers:
            raise InvalidInputError(f"calibration: {where!r} has unknown entries {leftovers[:5]}")
        return stats


def _well_formed_gram(gram: np.ndarray, channels: int) -> bool:
    """float64, finite, [channels, channels] or a conv's [groups, K, K] (groups x K a multiple of
    the channels: C_in x the kernel taps)."""
    if gram.dtype != np.float64 or not bool(np.all(np.isfinite(gram))):
        return False
    if gram.ndim == 2:
        return gram.shape == (channels, channels)
    return (
        gram.ndim == 3 and gram.shape[1] == gram.shape[2] and channels > 0
        and gram.shape[0] * gram.shape[1] % channels == 0 and gram.shape[0] >= 1
    )


def channel_sum_squares(activation: np.ndarray, channel_axis: int) -> tuple[np.ndarray, int]:
    """Sum of squares of ``activation`` per index along ``channel_axis`` (float64), and the
    number of rows (every other axis multiplied together).

    One einsum over the array as it is laid out (no transposed copy, no squared temporary),
    in float32, the activation's precision; returned as float64 for accumulation.
    """
    x = np.asarray(activation, dtype=np.float32)
    if x.ndim == 0:
        raise InvalidInputError("activation: a channel axis needs rank >= 1, got a scalar")
    axis = channel_axis % x.ndim
    letters = "abcdefghijklmnopqrstuvwxyz"[: x.ndim]
    subscripts = f"{letters},{letters}->{letters[axis]}"
    sums = np.einsum(subscripts, x, x)
    channels = x.shape[axis]
    rows = x.size // channels if channels else 0
    return sums.astype(np.float64), int(rows)


def channel_gram(activation: np.ndarray, channel_axis: int) -> np.ndarray:
    """X^T X of ``activation`` with the channel axis as X's columns and every other axis as
    rows: [channels, channels], computed in float32 (the activation's precision, as
    SparseGPT does) and returned as float64 for accumulation."""
    x = np.asarray(activation, dtype=np.float32)
    if x.ndim == 0:
        raise InvalidInputError("activation: a channel axis needs rank >= 1, got a scalar")
    rows = np.moveaxis(x, channel_axis % x.ndim, -1).reshape(-1, x.shape[channel_axis % x.ndim])
    return (rows.T @ rows).astype(np.float64)
