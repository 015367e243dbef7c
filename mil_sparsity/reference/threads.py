"""Kernels that split work across threads: one shared pool per process.

numpy releases the GIL inside ufunc loops and BLAS calls, so a kernel whose work is many
independent pieces (the blocks of a fused elementwise chain, the products of a batched
matmul) runs them on several cores by handing each thread a contiguous share. Every piece is
computed exactly as it would be alone, so results do not depend on the thread count.

The number of threads: ``MIL_SPARSITY_THREADS`` if set (1 turns splitting off), else the cores
this process may run on, at most :data:`MAX_THREADS`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence, TypeVar

from mil_sparsity.errors import InvalidInputError

MAX_THREADS = 8
_ENV = "MIL_SPARSITY_THREADS"
T = TypeVar("T")

_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_lock = threading.Lock()


def thread_count() -> int:
    """How many threads kernels split work across (see the module doc)."""
    text = os.environ.get(_ENV)
    if text is not None and text.strip():
        try:
            value = int(text)
        except ValueError:
            raise InvalidInputError(f"{_ENV} must be an int >= 1, got {text!r}") from None
        if value < 1:
            raise InvalidInputError(f"{_ENV} must be an int >= 1, got {text!r}")
        return value
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="mil-sparsity-kernel")
            _pool_size = size
        return _pool


def shares(count: int, threads: int) -> list[range]:
    """``range(count)`` cut into at most ``threads`` contiguous, nearly equal, non-empty parts."""
    parts = max(1, min(threads, count))
    bounds = [round(i * count / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]


def run_shares(work: Callable[[range], T], count: int, minimum_per_thread: int = 1) -> list[T]:
    """``work(share)`` for each share of ``range(count)``: on the calling thread when one share
    is all there is (one thread, or fewer than ``minimum_per_thread`` pieces per thread), else
    one share per pool thread, the caller running the first. Exceptions propagate."""
    threads = min(thread_count(), count // max(minimum_per_thread, 1))
    parts: Sequence[range] = shares(count, threads)
    if len(parts) <= 1:
        return [work(range(count))]
    pool = _executor(len(parts) - 1)
    futures = [pool.submit(work, part) for part in parts[1:]]
    first = work(parts[0])
    return [first] + [future.result() for future in futures]
