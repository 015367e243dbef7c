"""Kernels that split their work among threads, during an evaluator's run.

numpy releases the GIL inside ufunc loops and BLAS calls, so a kernel whose work is many
independent pieces (the rows of a matrix product, the blocks of a fused elementwise chain,
the products of attention's batched matmul, the rows of a softmax) runs them on several cores
by handing each thread a contiguous share. Every piece is computed as it would be alone.

An evaluator run enters :func:`running` with its thread count. With more than one thread the
BLAS is pinned to one thread for the run (:func:`.blas.single_threaded`), and matrix
products are split here instead: one-thread BLAS calls side by side keep both cores busy
without the BLAS's idle workers spinning on the core an elementwise share needs. Where the
BLAS cannot be pinned, products stay whole (the BLAS threads them) and only the other kernels
split. Outside a run (a kernel called directly) and in the pool's own threads, everything runs
on the calling thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TypeVar

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.reference import blas

#: the most threads an evaluator takes
MAX_THREADS = 64
T = TypeVar("T")

_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_lock = threading.Lock()
_local = threading.local()


def check_threads(threads: object) -> Optional[int]:
    """``threads`` as given to an evaluator: None (the default) or an int in 1..MAX_THREADS."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise InvalidTypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if not 1 <= threads <= MAX_THREADS:
        raise InvalidInputError(f"threads must be in 1..{MAX_THREADS}, got {threads}")
    return threads


def default_threads() -> int:
    """An evaluator's thread count when none is given: the BLAS's own thread count where it
    can be read and pinned (so ``OPENBLAS_NUM_THREADS=1`` keeps the evaluator on one core too),
    else 1 (the kernels run whole and the BLAS threads its products, as it would anyway)."""
    return min(blas.thread_count() or 1, MAX_THREADS)


@contextmanager
def running(threads: int) -> Iterator[None]:
    """Kernels called on this thread inside the block split their work ``threads`` ways (see
    the module doc); a nested block keeps the outer one's setting."""
    if getattr(_local, "threads", 0) or threads <= 1:
        yield
        return
    with blas.single_threaded() as pinned:
        _local.threads, _local.split_products = threads, pinned
        try:
            yield
        finally:
            _local.threads, _local.split_products = 0, False


def active_threads() -> int:
    """How many ways a kernel on this thread may split its work now (1 outside a run)."""
    return max(1, getattr(_local, "threads", 0))


def split_products() -> bool:
    """Whether matrix products on this thread are split here (the BLAS is pinned to one thread)."""
    return bool(getattr(_local, "split_products", False))


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="mil-sparsity-kernel")
            _pool_size = size
        return _pool


def shares(count: int, parts: int) -> list[range]:
    """``range(count)`` cut into at most ``parts`` contiguous, nearly equal, non-empty ranges."""
    parts = max(1, min(parts, count))
    bounds = [count * i // parts for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]


def run_shares(work: Callable[[range], T], count: int, minimum_per_thread: int = 1) -> list[T]:
    """``work(share)`` for each share of ``range(count)``, in order: on the calling thread
    alone when there is one share (one thread, or fewer than ``minimum_per_thread`` pieces a
    thread), else one share per thread, the caller running the first. The first exception
    raised propagates, after every share has finished."""
    parts = shares(count, min(active_threads(), count // max(minimum_per_thread, 1)))
    if len(parts) <= 1:
        return [work(range(count))]
    pool = _executor(len(parts) - 1)
    futures = [pool.submit(work, part) for part in parts[1:]]
    try:
        first = work(parts[0])
    finally:
        rest = [future.exception() for future in futures]  # waits for every share
    for error in rest:
        if error is not None:
            raise error
    return [first] + [future.result() for future in futures]
