"""Progress bars for long library calls (compare, calibration, sweep): tqdm on stderr, shown
only when asked or, by default, when stderr is a terminal."""

from __future__ import annotations

import importlib
import sys
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")


def progress_bar(
    items: Iterable[T],
    *,
    desc: str,
    total: Optional[int] = None,
    enabled: Optional[bool] = None,
) -> Iterable[T]:
    """``items`` wrapped in a tqdm bar when ``enabled`` (None: when stderr is a TTY)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        return items
    tqdm = importlib.import_module("tqdm").tqdm  # untyped third-party module: imported as Any
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar: Iterable[T] = tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False)
    return bar
