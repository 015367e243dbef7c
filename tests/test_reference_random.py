"""The evaluator's random ops, tested statistically: their values cannot match the Core ML
runtime's draw for draw (coremltools' own tests only check degenerate cases, shapes and
category frequencies), so each distribution is checked against its law here.

Every draw uses a fixed seed, so each test is deterministic; the bounds are set at about
4.5 standard errors (a correct kernel fails one with probability < 1e-5 for a new seed) and
chi-square tests at the 0.1% critical value, tight enough that a 5% error in a parameter fails
(``test_the_statistical_checks_bite``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from mil_sparsity import reference

IOS17 = ct.target.iOS17
N = 200_000
# chi-square critical values at p = 0.001 by degrees of freedom
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 9: 27.88, 19: 43.82}


def draw(build: Callable[[Any], Any], x: Optional[np.ndarray] = None) -> np.ndarray:
    """Run ``build(x)`` (x an fp32 input, a dummy when None) once with the evaluator."""
    value = np.zeros(1, np.float32) if x is None else x

    @mb.program(input_specs=[mb.TensorSpec(shape=value.shape)], opset_version=IOS17)
    def prog(x: Any) -> Any:
        return build(x)

    (result,) = reference.run(prog, {"x": value}).values()
    return result


def chi_square(counts: np.ndarray, probabilities: np.ndarray) -> float:
    expected = counts.sum() * probabilities
    return float(((counts - expected) ** 2 / expected).sum())


def normal_cdf(z: np.ndarray) -> np.ndarray:
    return np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z])


def normal_fits(values: np.ndarray, mean: float, stddev: float) -> bool:
    """Sample mean and variance within 4.5 standard errors, and a 20-bin chi-square test on
    the standardized values (equal-probability bins of N(0, 1))."""
    n = values.size
    mean_ok = abs(values.mean() - mean) < 4.5 * stddev / math.sqrt(n)
    variance_ok = abs(values.var() - stddev**2) < 4.5 * stddev**2 * math.sqrt(2.0 / n)
    edges = np.linspace(-3.0, 3.0, 19)  # 18 inner bins and two tails: 20 bins
    cdf = normal_cdf(edges)
    probabilities = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    counts = np.bincount(np.searchsorted(edges, (values.reshape(-1) - mean) / stddev), minlength=20)
    return bool(mean_ok and variance_ok and chi_square(counts, probabilities) < CHI2_999[19])


def uniform_fits(values: np.ndarray, low: float, high: float) -> bool:
    """Inside [low, high), and a 20-bin chi-square test."""
    if not ((values >= low).all() and (values < high).all()):
        return False
    bins = np.floor((values.reshape(-1) - low) / (high - low) * 20).astype(np.int64)
    counts = np.bincount(np.clip(bins, 0, 19), minlength=20)
    return chi_square(counts, np.full(20, 0.05)) < CHI2_999[19]


def bernoulli_fits(values: np.ndarray, prob: float) -> bool:
    if not np.isin(values, (0.0, 1.0)).all():
        return False
    return abs(values.mean() - prob) < 4.5 * math.sqrt(prob * (1 - prob) / values.size)


def categorical_fits(samples: np.ndarray, probabilities: np.ndarray) -> bool:
    counts = np.bincount(samples.astype(np.int64).reshape(-1), minlength=len(probabilities))
    if (counts[probabilities == 0] > 0).any() or len(counts) > len(probabilities):
        return False
    keep = probabilities > 0
    return chi_square(counts[keep], probabilities[keep]) < CHI2_999[int(keep.sum()) - 1]


# -- the laws ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("mean", "stddev", "seed"), [(0.0, 1.0, 0), (2.5, 3.0, 7), (-1.0, 0.25, 123)])
def test_random_normal(mean: float, stddev: float, seed: int) -> None:
    values = draw(lambda x: mb.random_normal(shape=np.array([400, 500], np.int32), mean=mean, stddev=stddev, seed=seed))
    assert values.shape == (400, 500) and values.dtype == np.float32
    assert normal_fits(values, mean, stddev)


@pytest.mark.parametrize(("low", "high", "seed"), [(0.0, 1.0, 0), (-3.0, 5.0, 11), (10.0, 10.5, 5)])
def test_random_uniform(low: float, high: float, seed: int) -> None:
    values = draw(lambda x: mb.random_uniform(shape=np.array([N], np.int32), low=low, high=high, seed=seed))
    assert values.shape == (N,) and values.dtype == np.float32
    assert uniform_fits(values, low, high)
    mean, variance = (low + high) / 2, (high - low) ** 2 / 12
    assert abs(values.mean() - mean) < 4.5 * math.sqrt(variance / N)


@pytest.mark.parametrize(("prob", "seed"), [(0.5, 0), (0.3, 3), (0.01, 9)])
def test_random_bernoulli(prob: float, seed: int) -> None:
    values = draw(lambda x: mb.random_bernoulli(shape=np.array([20, 100, 100], np.int32), prob=prob, seed=seed))
    assert values.shape == (20, 100, 100) and values.dtype == np.float32
    assert bernoulli_fits(values, prob)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def test_random_categorical_logits() -> None:
    """Three distributions (rows), 60,000 draws each: output [3, 60000], every row its own law."""
    logits = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [-2.0, 0.5, 0.0, 4.0]], np.float32)
    samples = draw(lambda x: mb.random_categorical(x=x, size=60_000, seed=4), logits)
    assert samples.shape == (3, 60_000) and samples.dtype == np.float32
    for row, probabilities in zip(samples, softmax(logits.astype(np.float64))):
        assert categorical_fits(row, probabilities)


def test_random_categorical_probs() -> None:
    """mode='probs': unnormalized probabilities (Core ML takes their log), a zero one never drawn;
    batch dims kept in front of the draws."""
    probs = np.array([[[2.0, 0.0, 1.0, 1.0]], [[0.1, 0.1, 0.1, 0.7]]], np.float32)
    samples = draw(lambda x: mb.random_categorical(x=x, mode="probs", size=50_000, seed=8), probs)
    assert samples.shape == (2, 1, 50_000)
    for row, p in zip(samples.reshape(2, -1), probs.reshape(2, -1)):
        assert categorical_fits(row, p / p.sum())


def test_random_categorical_one_draw_per_row_many_rows() -> None:
    """size 1 (the default): one draw from each of 40,000 identical rows follows the law too."""
    logits = np.tile(np.array([0.5, -0.5, 1.5], np.float32), (40_000, 1))
    samples = draw(lambda x: mb.random_categorical(x=x, seed=2), logits)
    assert samples.shape == (40_000, 1)
    assert categorical_fits(samples, softmax(logits[0].astype(np.float64)))


def test_the_statistical_checks_bite() -> None:
    """A 5% error in a parameter fails each check on the same draws."""
    normal = draw(lambda x: mb.random_normal(shape=np.array([N], np.int32), mean=0.0, stddev=1.0, seed=1))
    assert normal_fits(normal, 0.0, 1.0) and not normal_fits(normal, 0.0, 1.05)
    assert not normal_fits(normal, 0.05, 1.0)
    uniform = draw(lambda x: mb.random_uniform(shape=np.array([N], np.int32), seed=1))
    assert uniform_fits(uniform, 0.0, 1.0) and not uniform_fits(uniform * 0.95, 0.0, 1.0)
    bernoulli = draw(lambda x: mb.random_bernoulli(shape=np.array([N], np.int32), prob=0.4, seed=1))
    assert bernoulli_fits(bernoulli, 0.4) and not bernoulli_fits(bernoulli, 0.42)
    logits = np.array([[0.0, 0.2, 0.4]], np.float32)
    samples = draw(lambda x: mb.random_categorical(x=x, size=N, seed=1), logits)
    p = softmax(logits[0].astype(np.float64))
    assert categorical_fits(samples, p)
    assert not categorical_fits(samples, np.array([p[0] * 1.05, p[1], p[2] - 0.05 * p[0]]))


# -- degenerate laws (what coremltools' own tests check), seeds, dynamic shapes -----------------


def test_degenerate_laws_are_constant() -> None:
    shape = np.array([2, 1, 3], np.int32)
    assert (draw(lambda x: mb.random_bernoulli(shape=shape, prob=1.0)) == 1).all()
    assert (draw(lambda x: mb.random_bernoulli(shape=shape, prob=0.0)) == 0).all()
    assert (draw(lambda x: mb.random_normal(shape=shape, mean=1.5, stddev=0.0)) == 1.5).all()
    assert (draw(lambda x: mb.random_uniform(shape=shape, low=2.0, high=2.0)) == 2.0).all()
    assert (draw(lambda x: mb.random_categorical(x=x, size=5), np.array([[3.0]], np.float32)) == 0).all()


OPS: dict[str, Callable[[Any, int], Any]] = {
    "random_bernoulli": lambda x, seed: mb.random_bernoulli(shape=np.array([64], np.int32), seed=seed),
    "random_normal": lambda x, seed: mb.random_normal(shape=np.array([64], np.int32), seed=seed),
    "random_uniform": lambda x, seed: mb.random_uniform(shape=np.array([64], np.int32), seed=seed),
    "random_categorical": lambda x, seed: mb.random_categorical(x=x, size=64, seed=seed),
}


@pytest.mark.parametrize("op_type", sorted(OPS))
def test_seed_reproduces_and_unseeded_varies(op_type: str) -> None:
    logits = np.zeros((1, 8), np.float32)

    def program(seed: int) -> Any:
        @mb.program(input_specs=[mb.TensorSpec(shape=logits.shape)], opset_version=IOS17)
        def prog(x: Any) -> Any:
            return OPS[op_type](x, seed)

        return prog

    seeded = reference.ReferenceEvaluator(program(42))
    first = seeded({"x": logits})
    np.testing.assert_array_equal(list(first.values())[0], list(seeded({"x": logits}).values())[0])
    again = reference.run(program(42), {"x": logits})  # a new evaluator, the same values
    np.testing.assert_array_equal(list(first.values())[0], list(again.values())[0])
    other = reference.run(program(43), {"x": logits})
    assert not np.array_equal(list(first.values())[0], list(other.values())[0])
    unseeded = reference.ReferenceEvaluator(program(-1))
    runs = [list(unseeded({"x": logits}).values())[0] for _ in range(2)]
    assert not np.array_equal(*runs)


def test_dynamic_shape_input() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(3,), dtype=types.int32)], opset_version=IOS17)
    def prog(shape: Any) -> Any:
        return mb.random_uniform(shape=shape, low=-1.0, high=1.0, seed=0)

    (values,) = reference.run(prog, {"shape": np.array([2, 5, 7], np.int32)}).values()
    assert values.shape == (2, 5, 7) and ((values >= -1) & (values < 1)).all()


# -- refused parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: mb.random_bernoulli(shape=s, prob=0.5), r"random_bernoulli: shape: \[2, 0\]; every entry must be >= 1"),
        (lambda s: mb.random_bernoulli(shape=s, prob=1.5), r"random_bernoulli: prob: 1.5; allowed \[0, 1\]"),
        (lambda s: mb.random_normal(shape=s, stddev=-1.0), r"random_normal: stddev: -1.0; allowed >= 0"),
        (lambda s: mb.random_uniform(shape=s, low=1.0, high=0.0), r"random_uniform: high: 0.0; allowed >= low \(1.0\)"),
    ],
)
def test_bad_parameters_raise(build: Callable[[Any], Any], message: str) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(2,), dtype=types.int32)], opset_version=IOS17)
    def prog(shape: Any) -> Any:
        return build(shape)

    shape = np.array([2, 0], np.int32) if "shape" in message else np.array([2, 3], np.int32)
    with pytest.raises(ValueError, match=message):
        reference.run(prog, {"shape": shape})


def test_bad_categorical_parameters_raise() -> None:
    with pytest.raises(ValueError, match=r"random_categorical: x: probability -1.0; allowed >= 0"):
        draw(lambda x: mb.random_categorical(x=x, mode="probs"), np.array([[1.0, -1.0]], np.float32))
    with pytest.raises(ValueError, match=r"random_categorical: x: a distribution whose probabilities sum to 0"):
        draw(lambda x: mb.random_categorical(x=x, mode="probs"), np.array([[1.0, 1.0], [0.0, 0.0]], np.float32))
