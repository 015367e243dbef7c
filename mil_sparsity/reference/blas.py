"""numpy's BLAS thread count, read and pinned through the library's own C API.

The evaluator's threaded kernels (:mod:`.threads`) cut each large matrix product into one
share per thread and run every share as a one-thread BLAS call. That only pays when the BLAS
itself is single-threaded for the run: a multi-threaded OpenBLAS leaves its worker threads
spinning on the other cores for a while after every product, and they take those cores from
the kernels' own threads (measured on BERT-base: gelu right after a product ran 18.5 ms with
one thread against 21.9 ms with two).

This module is the one place that touches BLAS libraries: it finds every OpenBLAS the process
has loaded (Linux: the mapped files whose name contains ``openblas``, read from
``/proc/self/maps``; numpy's own first, as scipy's may be loaded beside it) and their
``openblas_get_num_threads`` / ``openblas_set_num_threads`` under any of the names the wheels
export them by (``scipy_openblas_*64_`` and the plain names). Where there is none (macOS'
Accelerate, MKL, a platform without ``/proc``), :func:`controls` is empty and callers leave
the BLAS alone. :func:`describe` names the library, the CPU whose kernels it picked at load
(``openblas_get_corename``: its own detection, or ``OPENBLAS_CORETYPE``) and its thread count,
for benchmark reports.

:func:`single_threaded` pins the count to 1 and puts the old count back at the end. The count
is a process-wide setting, so the pin is reference-counted: nested or concurrent pins restore
the count once, when the last ends; any other thread's products run on one BLAS thread
meanwhile.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional

_MAPS = "/proc/self/maps"
#: (get, set) symbol names, the prefixed ones first (numpy >= 2 wheels: scipy-openblas, ILP64)
_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)
#: names of the call that tells which CPU's kernels OpenBLAS picked (its ``OPENBLAS_CORETYPE``)
_CORE_NAME_SYMBOLS = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename")


class BlasThreads(NamedTuple):
    """The loaded BLAS's thread-count calls, the file they come from and the name of the CPU
    whose kernels it runs ("" when it does not tell)."""

    path: str
    get: Callable[[], int]
    set: Callable[[int], None]
    core: str = ""


def _loaded_openblas_paths() -> list[str]:
    try:
        with open(_MAPS) as maps:
            lines = maps.read().splitlines()
    except OSError:  # no /proc (macOS, Windows)
        return []
    paths: list[str] = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "openblas" in fields[5].rsplit("/", 1)[-1].lower():
            if fields[5] not in paths:
                paths.append(fields[5])
    return paths


def _calls(path: str) -> Optional[BlasThreads]:
    try:
        library = ctypes.CDLL(path)  # already mapped: this only takes a reference
    except OSError:
        return None
    for get_name, set_name in _SYMBOLS:
        get_call = getattr(library, get_name, None)
        set_call = getattr(library, set_name, None)
        if get_call is not None and set_call is not None:
            get_call.restype, get_call.argtypes = ctypes.c_int, []
            set_call.restype, set_call.argtypes = None, [ctypes.c_int]
            return BlasThreads(path, lambda: int(get_call()), lambda count: set_call(int(count)), _core_name(library))
    return None


def _core_name(library: ctypes.CDLL) -> str:
    for name in _CORE_NAME_SYMBOLS:
        call = getattr(library, name, None)
        if call is not None:
            call.restype, call.argtypes = ctypes.c_char_p, []
            value = call()
            return value.decode("ascii", "replace") if isinstance(value, bytes) else ""
    return ""


@functools.lru_cache(maxsize=1)
def controls() -> tuple[BlasThreads, ...]:
    """The loaded OpenBLAS libraries' thread-count calls, numpy's first; empty where none can
    be found (looked up once)."""
    import numpy  # numpy must be loaded for its BLAS to be mapped

    numpy_home = os.path.dirname(os.path.dirname(os.path.abspath(numpy.__file__)))
    paths = sorted(_loaded_openblas_paths(), key=lambda path: not path.startswith(os.path.join(numpy_home, "numpy")))
    return tuple(found for found in map(_calls, paths) if found is not None)


def describe() -> str:
    """numpy's BLAS in a few words, for benchmark reports: its file, the CPU whose kernels it
    picked and its thread count ("unknown BLAS" where none can be found)."""
    found = controls()
    if not found:
        return "unknown BLAS"
    library, count = found[0], max(1, found[0].get())
    core = f", {library.core} kernels" if library.core else ""
    return f"{os.path.basename(library.path)}{core}, {count} thread{'s' if count > 1 else ''}"


def thread_count() -> Optional[int]:
    """numpy's BLAS's current thread count (as ``OPENBLAS_NUM_THREADS`` or a caller set it),
    or None when it cannot be read."""
    found = controls()
    return max(1, found[0].get()) if found else None


_lock = threading.Lock()
_pins = 0
_saved: list[int] = []


@contextmanager
def single_threaded() -> Iterator[bool]:
    """Run the block with the BLAS on one thread; yields whether it could be pinned."""
    global _pins
    found = controls()
    if not found:
        yield False
        return
    with _lock:
        if _pins == 0:
            _saved[:] = [max(1, library.get()) for library in found]
            for library, count in zip(found, _saved):
                if count != 1:
                    library.set(1)
        _pins += 1
    try:
        yield True
    finally:
        with _lock:
            _pins -= 1
            if _pins == 0:
                for library, count in zip(found, _saved):
                    if count != 1:
                        library.set(count)
