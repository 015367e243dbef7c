"""Reductions over ``axes`` (all axes when absent) with ``keep_dims``, and arg-reductions."""

from __future__ import annotations

from typing import Callable

import numpy as np

from mil_sparsity.reference._registry import Args, array, axes_of, flag, integer, kernel

Reduction = Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]


def _sum_square(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    return np.asarray(np.sum(np.square(x), axis=axes, keepdims=keep))


def _l1(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    return np.asarray(np.sum(np.abs(x), axis=axes, keepdims=keep))


def _l2(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    return np.asarray(np.sqrt(_sum_square(x, axes, keep)))


def _log_sum(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    return np.asarray(np.log(np.sum(x, axis=axes, keepdims=keep)))


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    """max + log(sum(exp(x - max))), stable for large x."""
    peak = np.max(x, axis=axes, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, np.zeros((), x.dtype))
    total = np.log(np.sum(np.exp(x - peak), axis=axes, keepdims=True)) + peak
    return np.asarray(total if keep else np.squeeze(total, axis=axes))


def _mean(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> np.ndarray:
    return np.asarray(np.mean(x, axis=axes, keepdims=keep, dtype=x.dtype if x.dtype.kind == "f" else None))


_REDUCTIONS: dict[str, Reduction] = {
    "reduce_sum": lambda x, a, k: np.sum(x, axis=a, keepdims=k, dtype=x.dtype),
    "reduce_mean": _mean,
    "reduce_prod": lambda x, a, k: np.prod(x, axis=a, keepdims=k, dtype=x.dtype),
    "reduce_max": lambda x, a, k: np.max(x, axis=a, keepdims=k),
    "reduce_min": lambda x, a, k: np.min(x, axis=a, keepdims=k),
    "reduce_sum_square": _sum_square,
    "reduce_l1_norm": _l1,
    "reduce_l2_norm": _l2,
    "reduce_log_sum": _log_sum,
    "reduce_log_sum_exp": _log_sum_exp,
}


def _reduction_kernel(reduction: Reduction) -> Callable[[Args], np.ndarray]:
    def run(args: Args) -> np.ndarray:
        x = array(args, "x")
        axes = axes_of(args, "axes", x.ndim)
        if axes is None:
            axes = tuple(range(x.ndim))
        return reduction(x, axes, flag(args, "keep_dims"))

    return run


for _name, _reduction in _REDUCTIONS.items():
    kernel(_name)(_reduction_kernel(_reduction))


def _arg_kernel(find: Callable[..., np.ndarray]) -> Callable[[Args], np.ndarray]:
    def run(args: Args) -> np.ndarray:
        x = array(args, "x")
        axis = integer(args, "axis", -1) % x.ndim
        result = find(x, axis=axis, keepdims=flag(args, "keep_dims"))
        return np.asarray(result, dtype=np.int32)

    return run


kernel("reduce_argmax")(_arg_kernel(np.argmax))
kernel("reduce_argmin")(_arg_kernel(np.argmin))
