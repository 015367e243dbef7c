"""Random kernels: random_bernoulli, random_categorical, random_normal, random_uniform.

Values are drawn with a numpy ``Generator`` (PCG64). ``seed`` (every random op has one,
default -1): a seed >= 0 makes the op's draws reproducible, the same seed giving the same
values on every run (and in two ops of a program with the same seed and parameters); -1 draws
fresh values on every run, as Core ML does. The streams differ from the Core ML runtime's:
only the distributions match, which tests/test_reference_random.py checks statistically.

Parameters outside the documented domain raise a ValueError naming the field, the value and
what is allowed: a shape entry < 1, ``prob`` outside [0, 1], ``stddev`` < 0, ``high`` < ``low``
(undefined in coremltools' documentation), a categorical ``mode`` other than logits / probs,
``size`` < 1, negative probabilities.
"""

from __future__ import annotations

import numpy as np

from mil_sparsity.errors import InvalidInputError
from mil_sparsity.reference._registry import Args, array, floating, integer, kernel, text


def _generator(args: Args, op_type: str) -> np.random.Generator:
    seed = integer(args, "seed", -1)
    if seed < -1:
        raise InvalidInputError(f"{op_type}: seed: {seed}; allowed -1 (unseeded) or 0..2**31-1")
    return np.random.default_rng(None if seed == -1 else seed)


def _shape(args: Args, op_type: str) -> tuple[int, ...]:
    shape = array(args, "shape").reshape(-1)
    if shape.dtype.kind not in "iu":
        raise InvalidInputError(f"{op_type}: shape: dtype {shape.dtype}; allowed int32")
    if (shape < 1).any():
        raise InvalidInputError(f"{op_type}: shape: {shape.tolist()}; every entry must be >= 1")
    return tuple(int(size) for size in shape)


@kernel("random_bernoulli")
def _random_bernoulli(args: Args) -> np.ndarray:
    """1.0 with probability ``prob`` (default 0.5), else 0.0."""
    prob = floating(args, "prob", 0.5)
    if not 0.0 <= prob <= 1.0:
        raise InvalidInputError(f"random_bernoulli: prob: {prob}; allowed [0, 1]")
    shape = _shape(args, "random_bernoulli")
    draws = _generator(args, "random_bernoulli").random(shape)
    return (draws < prob).astype(np.float32)


@kernel("random_normal")
def _random_normal(args: Args) -> np.ndarray:
    """mean + stddev * N(0, 1) (defaults 0 and 1)."""
    mean, stddev = floating(args, "mean", 0.0), floating(args, "stddev", 1.0)
    if not stddev >= 0.0:
        raise InvalidInputError(f"random_normal: stddev: {stddev}; allowed >= 0")
    shape = _shape(args, "random_normal")
    draws = _generator(args, "random_normal").standard_normal(shape, dtype=np.float64)
    return (mean + stddev * draws).astype(np.float32)


@kernel("random_uniform")
def _random_uniform(args: Args) -> np.ndarray:
    """Uniform on [low, high) (defaults 0 and 1); ``low`` everywhere when high == low."""
    low, high = floating(args, "low", 0.0), floating(args, "high", 1.0)
    if not high >= low:
        raise InvalidInputError(f"random_uniform: high: {high}; allowed >= low ({low})")
    shape = _shape(args, "random_uniform")
    draws = _generator(args, "random_uniform").random(shape)
    values = (low + (high - low) * draws).astype(np.float32)
    if high > low:  # float32 rounding must not reach the excluded upper bound
        values = np.minimum(values, np.nextafter(np.float32(high), np.float32(low)))
    return np.maximum(values, np.float32(low))


@kernel("random_categorical")
def _random_categorical(args: Args) -> np.ndarray:
    """``size`` draws (with replacement) from each distribution along the last axis of ``x``:
    indices k with probability softmax(x)[k] (``mode='logits'``, the default) or
    x[k] / sum(x) (``mode='probs'``, Core ML's log then softmax). Output [*x.shape[:-1], size],
    the indices as floats."""
    x = array(args, "x").astype(np.float64)
    mode = text(args, "mode", "logits")
    size = integer(args, "size", 1)
    if mode not in ("logits", "probs"):
        raise InvalidInputError(f"random_categorical: mode: {mode!r}; allowed 'logits', 'probs'")
    if size < 1:
        raise InvalidInputError(f"random_categorical: size: {size}; allowed >= 1")
    if x.ndim < 1 or x.shape[-1] < 1:
        raise InvalidInputError(f"random_categorical: x: shape {x.shape}; allowed rank >= 1, last axis >= 1")
    if mode == "probs":
        if (x < 0).any():
            raise InvalidInputError(
                f"random_categorical: x: probability {x[x < 0].reshape(-1)[0]}; allowed >= 0 with mode='probs'"
            )
        empty = ~(x.sum(axis=-1) > 0)
        if empty.any():
            raise InvalidInputError(
                f"random_categorical: x: a distribution whose probabilities sum to 0 (at index "
                f"{np.argwhere(empty)[0].tolist()}); allowed a positive sum with mode='probs'"
            )
        with np.errstate(divide="ignore"):
            x = np.log(x)
    classes = x.shape[-1]
    logits = x.reshape(-1, classes)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(shifted / shifted.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    rows = logits.shape[0]
    draws = _generator(args, "random_categorical").random((rows, size))
    # one sorted search for every row: row r's cdf and draws offset by r (cdf in [0, 1])
    offsets = np.arange(rows, dtype=np.float64)[:, None]
    found = np.searchsorted((cdf + offsets).reshape(-1), (draws + offsets).reshape(-1), side="right")
    index = found.reshape(rows, size) - np.arange(rows)[:, None] * classes
    index = np.asarray(np.clip(index, 0, classes - 1))
    return index.reshape(x.shape[:-1] + (size,)).astype(np.float32)
