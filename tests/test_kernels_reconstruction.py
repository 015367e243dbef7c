"""Weight reconstruction kernels (mil_sparsity.kernels.reconstruction): SparseGPT and ADMM.

* Contract on any small input (dead channels, zero weights, fp16/fp32): the mask has exactly
  the documented count (unstructured) or n:m structure (with the tail rule), no kept value is
  zero, pruned values are +0.0, dtype and shape follow the weight, the inputs are untouched.
* Quality on well-conditioned random calibration data: the layer output error is not above
  magnitude pruning's at the same sparsity; ADMM's kept values are the least-squares optimum for
  its mask (an independent per-row ``numpy.linalg.lstsq`` in float64, written here); SparseGPT
  stays within a small factor of that optimum.
* Hand-checkable cases, the exact-count rule of the column blocks, and input validation.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from _reference import ref_magnitude, ref_n_m
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mil_sparsity.kernels.reconstruction import (
    Reconstruction,
    _finish,
    admm,
    block_prune_counts,
    ramp_fraction,
    sparsegpt,
)

# deterministic examples for CI; the quality properties use bounded, well-conditioned data
RECON = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

Kernel = Callable[..., Reconstruction]
KERNELS = [pytest.param(sparsegpt, id="sparsegpt"), pytest.param(admm, id="admm")]


# ---- strategies -----------------------------------------------------------------------------


@st.composite
def patterns(draw: st.DrawFn, max_m: int = 6) -> dict[str, Any]:
    """``{"target_sparsity": s}`` or ``{"n": n, "m": m}``."""
    if draw(st.booleans()):
        return {"target_sparsity": draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 1))}
    m = draw(st.integers(1, max_m))
    return {"n": draw(st.integers(0, m)), "m": m}


def calibration(seed: int, rows: int, cols: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 weight with no zeros and float64 inputs X: correlated Gaussian columns
    (X = G (I + A / 2), A standard normal / sqrt(cols)) scaled by 0.5..2 per column."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((rows, cols)).astype(np.float32)
    weight[weight == 0] = 1
    mixing = np.eye(cols) + 0.5 * rng.standard_normal((cols, cols)) / np.sqrt(cols)
    inputs = rng.standard_normal((samples, cols)) @ mixing * rng.uniform(0.5, 2.0, cols)
    return weight, inputs


@st.composite
def any_problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Small weights (fp16/fp32, some exact zeros) and Gram matrices with some dead channels,
    rank-deficient when there are fewer samples than columns."""
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 10))
    samples = draw(st.integers(1, 3 * cols))
    weight, inputs = calibration(draw(st.integers(0, 2**32 - 1)), rows, cols, samples)
    dead = draw(st.lists(st.integers(0, cols - 1), max_size=2))
    inputs[:, dead] = 0
    zeros = draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1)), max_size=3))
    for r, c in zeros:
        weight[r, c] = draw(st.sampled_from([0.0, -0.0]))
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    return weight.astype(dtype), inputs.T @ inputs


@st.composite
def good_problems(draw: st.DrawFn, min_cols: int, max_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Well-conditioned: float32, 2..8 rows, min_cols..max_cols columns, samples >= 4 * cols."""
    rows, cols = draw(st.integers(2, 8)), draw(st.integers(min_cols, max_cols))
    samples = draw(st.integers(4 * cols, 8 * cols))
    return calibration(draw(st.integers(0, 2**32 - 1)), rows, cols, samples)


# ---- independent references -----------------------------------------------------------------


def expected_pruned_count(shape: tuple[int, int], pattern: dict[str, Any]) -> int:
    rows, cols = shape
    if "target_sparsity" in pattern:
        return round(pattern["target_sparsity"] * rows * cols)
    n, m = pattern["n"], pattern["m"]
    per_row = sum(max(0, n - (m - min(m, cols - start))) for start in range(0, cols, m))
    return rows * per_row


def assert_nm_structure(keep: np.ndarray, n: int, m: int) -> None:
    for row in keep:
        for start in range(0, row.size, m):
            group = row[start : start + m]
            assert (~group).sum() == max(0, n - (m - group.size)), (start, group)


def magnitude_mask(weight: np.ndarray, pattern: dict[str, Any]) -> np.ndarray:
    """True = kept, by the reference magnitude rules (weights here have no zeros)."""
    if "target_sparsity" in pattern:
        return ref_magnitude(weight, pattern["target_sparsity"]) != 0
    return ref_n_m(weight, pattern["n"], pattern["m"], 1) != 0


def optimal_values(weight: np.ndarray, inputs: np.ndarray, keep: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """Per row, the kept values minimising ||X (w - w')||^2 + ridge * sum_j ||x_j||^2 (w_j - w'_j)^2
    (lstsq on X stacked over sqrt(ridge) * diag(||x_j||)), pruned values 0; float64."""
    x = inputs.astype(np.float64)
    if ridge:
        x = np.vstack([x, np.sqrt(ridge) * np.diag(np.linalg.norm(x, axis=0))])
    out = np.zeros(weight.shape, dtype=np.float64)
    for r in range(weight.shape[0]):
        kept = keep[r]
        if kept.any():
            out[r, kept] = np.linalg.lstsq(x[:, kept], x @ weight[r].astype(np.float64), rcond=None)[0]
    return out


def output_error(weight: np.ndarray, values: np.ndarray, inputs: np.ndarray) -> float:
    return float(np.linalg.norm(inputs @ (weight.astype(np.float64) - values.astype(np.float64)).T))


# ---- contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
@RECON
@given(problem=any_problems(), pattern=patterns())
def test_exact_pattern_and_nonzero_kept_values(kernel: Kernel, problem: tuple[np.ndarray, np.ndarray], pattern: dict[str, Any]) -> None:
    weight, gram = problem
    weight_before, gram_before = weight.copy(), gram.copy()
    result = kernel(weight, gram, **pattern)
    assert np.array_equal(weight, weight_before) and np.array_equal(gram, gram_before)
    keep, values = result.mask, result.values
    assert keep.dtype == np.bool_ and keep.shape == weight.shape
    assert values.dtype == weight.dtype and values.shape == weight.shape
    assert np.all(np.isfinite(values))
    assert (~keep).sum() == expected_pruned_count(weight.shape, pattern)
    if "n" in pattern:
        assert_nm_structure(keep, pattern["n"], pattern["m"])
    assert np.all(values[keep] != 0)
    assert np.all(values[~keep] == 0) and not np.any(np.signbit(values[~keep]))


@RECON
@given(problem=any_problems(), pattern=patterns(), block_size=st.integers(1, 5))
def test_sparsegpt_any_block_size(problem: tuple[np.ndarray, np.ndarray], pattern: dict[str, Any], block_size: int) -> None:
    weight, gram = problem
    result = sparsegpt(weight, gram, block_size=block_size, **pattern)
    assert (~result.mask).sum() == expected_pruned_count(weight.shape, pattern)
    if "n" in pattern:
        assert_nm_structure(result.mask, pattern["n"], pattern["m"])
    assert np.all(result.values[result.mask] != 0)


@given(
    target=st.integers(0, 10_000),
    rows=st.integers(1, 50),
    widths=st.lists(st.integers(1, 40), min_size=1, max_size=8),
)
def test_block_prune_counts(target: int, rows: int, widths: list[int]) -> None:
    ends = list(np.cumsum(widths).tolist())
    cols = ends[-1]
    target = min(target, rows * cols)
    counts = block_prune_counts(target, rows, ends, cols)
    assert sum(counts) == target
    for count, width in zip(counts, widths):
        share = target * rows * width / (rows * cols)
        assert 0 <= count <= rows * width and abs(count - share) < 1 + 1e-9


def test_ramp_fraction_is_cubic_and_reaches_one() -> None:
    assert ramp_fraction(0, 1) == 1.0 and ramp_fraction(14, 15) == 1.0 and ramp_fraction(19, 15) == 1.0
    assert ramp_fraction(0, 15) == pytest.approx(1 - (14 / 15) ** 3)
    fractions = [ramp_fraction(t, 15) for t in range(15)]
    assert fractions == sorted(fractions)


# ---- quality on well-conditioned data -----------------------------------------------------------

QUALITY_PATTERNS = st.sampled_from([{"n": 2, "m": 4}, {"n": 1, "m": 2}, {"n": 4, "m": 8}]) | st.builds(
    lambda s: {"target_sparsity": s}, st.floats(0.25, 0.75)
)


def magnitude_error(weight: np.ndarray, inputs: np.ndarray, pattern: dict[str, Any]) -> float:
    return output_error(weight, np.where(magnitude_mask(weight, pattern), weight, 0), inputs)


@RECON
@given(problem=good_problems(8, 16), pattern=QUALITY_PATTERNS)
def test_admm_not_worse_than_magnitude_pruning(problem: tuple[np.ndarray, np.ndarray], pattern: dict[str, Any]) -> None:
    weight, inputs = problem
    result = admm(weight, inputs.T @ inputs, **pattern)
    assert output_error(weight, result.values, inputs) <= magnitude_error(weight, inputs, pattern) * (1 + 1e-5)


@RECON
@given(problem=good_problems(16, 32), pattern=QUALITY_PATTERNS)
def test_sparsegpt_not_worse_than_magnitude_pruning(problem: tuple[np.ndarray, np.ndarray], pattern: dict[str, Any]) -> None:
    """Within 5%: SparseGPT's left-to-right greedy updates carry no guarantee against magnitude
    pruning on one small layer (on 4..8 correlated columns we measured up to 2x worse; on 16+
    columns within 1%); the averaged test below asks for a clear win."""
    weight, inputs = problem
    result = sparsegpt(weight, inputs.T @ inputs, **pattern)
    assert output_error(weight, result.values, inputs) <= magnitude_error(weight, inputs, pattern) * 1.05


@pytest.mark.parametrize("pattern", [{"target_sparsity": 0.5}, {"n": 2, "m": 4}], ids=["50%", "2:4"])
def test_reconstruction_beats_magnitude_on_average(pattern: dict[str, Any]) -> None:
    """Mean error ratio to magnitude pruning over ten 32x64 layers: both well below 1, ADMM
    (least squares on its mask) below SparseGPT."""
    ratios: dict[str, list[float]] = {"sparsegpt": [], "admm": []}
    for seed in range(10):
        weight, inputs = calibration(seed, 32, 64, 256)
        baseline = magnitude_error(weight, inputs, pattern)
        for name, kernel in (("sparsegpt", sparsegpt), ("admm", admm)):
            values = kernel(weight, inputs.T @ inputs, **pattern).values
            ratios[name].append(output_error(weight, values, inputs) / baseline)
    mean = {name: float(np.mean(values)) for name, values in ratios.items()}
    assert mean["admm"] < mean["sparsegpt"] < 0.9, mean


@RECON
@given(problem=good_problems(2, 16), pattern=QUALITY_PATTERNS, damp=st.sampled_from([0.0, 0.1]))
def test_admm_values_are_the_least_squares_optimum(problem: tuple[np.ndarray, np.ndarray], pattern: dict[str, Any], damp: float) -> None:
    weight, inputs = problem
    result = admm(weight, inputs.T @ inputs, damp=damp, **pattern)
    optimum = optimal_values(weight, inputs, result.mask, ridge=damp)
    scale = np.abs(weight).max()
    assert np.max(np.abs(result.values - optimum)) <= 1e-4 * scale
    augmented = np.vstack([inputs, np.sqrt(damp) * np.diag(np.linalg.norm(inputs, axis=0))])
    best = output_error(weight, optimum, augmented)
    assert output_error(weight, result.values, augmented) <= best * (1 + 1e-5) + 1e-6 * scale


@RECON
@given(problem=good_problems(8, 16), pattern=QUALITY_PATTERNS)
def test_sparsegpt_close_to_the_optimum_for_its_mask(problem: tuple[np.ndarray, np.ndarray], pattern: dict[str, Any]) -> None:
    weight, inputs = problem
    result = sparsegpt(weight, inputs.T @ inputs, **pattern)
    best = output_error(weight, optimal_values(weight, inputs, result.mask), inputs)
    assert output_error(weight, result.values, inputs) <= 1.6 * best + 1e-6 * np.linalg.norm(inputs @ weight.T)


# ---- hand-checkable cases -------------------------------------------------------------------


def test_independent_inputs_prune_by_activation_weighted_magnitude() -> None:
    """H diagonal: no update crosses columns; SparseGPT's score w^2 (H_jj + damp) and ADMM's
    |w| sqrt(H_jj) both keep w=1 on the loud input (H=16) and drop 2 and 3 on quiet ones."""
    weight = np.array([[1.0, -2.0, 3.0, -4.0]], dtype=np.float32)
    gram = np.diag([16.0, 1.0, 1.0, 1.0])
    expected = np.array([[1.0, 0.0, 0.0, -4.0]], dtype=np.float32)
    for result in (sparsegpt(weight, gram, target_sparsity=0.5), admm(weight, gram, target_sparsity=0.5, damp=0.0)):
        assert np.array_equal(result.mask, [[True, False, False, True]])
        np.testing.assert_allclose(result.values, expected, rtol=1e-6)


def test_duplicated_input_moves_the_pruned_weight_onto_its_twin() -> None:
    """Two identical inputs, w = [1, 2], prune one: the output 3x survives in the kept weight.

    SparseGPT, H = [[1, 1], [1, 1]] + 0.01 I: prunes w0 (score 1 / [H^-1]_00 vs 4 / [H^-1]_11)
    and sets w1 = 2 - 1 * [H^-1]_10 / [H^-1]_00 = 2 + 1/1.01. ADMM without dampening: w1 = 3;
    with damp 0.1 (Hn = [[1.1, 1], [1, 1.1]]): w1 = (1 + 1.1 * 2) / 1.1 = 32/11.
    """
    weight = np.array([[1.0, 2.0]], dtype=np.float32)
    gram = np.ones((2, 2))
    cases = [
        (sparsegpt(weight, gram, target_sparsity=0.5), 2 + 1 / 1.01),
        (admm(weight, gram, n=1, m=2, damp=0.0), 3.0),
        (admm(weight, gram, target_sparsity=0.5, damp=0.1), 32 / 11),
    ]
    for result, kept in cases:
        assert np.array_equal(result.mask, [[False, True]])
        np.testing.assert_allclose(result.values, [[0.0, kept]], rtol=1e-5)


def test_dead_input_channel_is_pruned_first() -> None:
    rng = np.random.default_rng(3)
    inputs = rng.standard_normal((40, 6))
    inputs[:, 2] = 0
    weight = (rng.standard_normal((3, 6)) + 10).astype(np.float32)  # column 2 is the largest
    weight[:, 2] = 100
    for kernel in (sparsegpt, admm):
        result = kernel(weight, inputs.T @ inputs, target_sparsity=0.5)
        assert not result.mask[:, 2].any()


def test_kept_zeros_are_nudged_with_the_sign_before_rounding() -> None:
    tiny16 = np.finfo(np.float16).smallest_subnormal
    values = np.array([[-1e-9, 1e-9, 0.0, -0.0, 5.0, 7.0]], dtype=np.float32)
    keep = np.array([[True, True, True, True, True, False]])
    out = _finish(values, keep, np.dtype(np.float16)).values
    assert out.dtype == np.float16
    assert out.tolist() == [[-tiny16, tiny16, tiny16, tiny16, 5.0, 0.0]]
    assert not np.signbit(out[0, 5])
    # the same through the kernels: nothing pruned, a zero weight stays kept
    weight = np.array([[0.0, -0.0, 1.0]], dtype=np.float16)
    for kernel in (sparsegpt, admm):
        result = kernel(weight, np.eye(3), target_sparsity=0.0)
        assert result.mask.all() and np.all(result.values != 0)


def test_fp16_values_are_clipped_to_the_finite_range() -> None:
    out = _finish(np.array([[1e6, -1e6]], dtype=np.float32), np.ones((1, 2), bool), np.dtype(np.float16))
    assert out.values.tolist() == [[65504.0, -65504.0]]


# ---- validation -----------------------------------------------------------------------------

W = np.ones((2, 3), dtype=np.float32)
G = np.eye(3)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "args, kwargs, words",
    [
        ((W, G), {}, ["target_sparsity", "n and m"]),
        ((W, G), {"target_sparsity": 1.5}, ["target_sparsity=1.5", "[0, 1]"]),
        ((W, G), {"target_sparsity": -0.1}, ["target_sparsity=-0.1", "[0, 1]"]),
        ((W, G), {"target_sparsity": 0.5, "n": 2, "m": 4}, ["not both"]),
        ((W, G), {"n": 5, "m": 4}, ["n=5", "[0, 4]"]),
        ((W, G), {"n": 1, "m": 0}, ["m=0", "m >= 1"]),
        ((W, G), {"n": 2}, ["n and m"]),
        ((W, np.eye(4)), {"target_sparsity": 0.5}, ["gram shape (4, 4)", "(3, 3)"]),
        ((W, np.full((3, 3), np.nan)), {"target_sparsity": 0.5}, ["gram", "non-finite"]),
        ((W, np.diag([1.0, -1.0, 1.0])), {"target_sparsity": 0.5}, ["gram", "negative diagonal"]),
        ((np.ones((2, 3, 1), np.float32), G), {"target_sparsity": 0.5}, ["rank 2", "(2, 3, 1)"]),
        ((np.full((2, 3), np.inf, np.float32), G), {"target_sparsity": 0.5}, ["weight", "non-finite"]),
        ((W, G), {"target_sparsity": 0.5, "damp": -1.0}, ["damp=-1.0", "damp >= 0"]),
    ],
)
def test_invalid_arguments(kernel: Kernel, args: tuple[Any, ...], kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        kernel(*args, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_invalid_kernel_specific_arguments() -> None:
    with pytest.raises(ValueError, match=r"block_size=0"):
        sparsegpt(W, G, target_sparsity=0.5, block_size=0)
    with pytest.raises(ValueError, match=r"ramp_iterations=30 .*\[1, iterations=20\]"):
        admm(W, G, target_sparsity=0.5, ramp_iterations=30)
    with pytest.raises(ValueError, match=r"rho=0.0 .*rho > 0"):
        admm(W, G, target_sparsity=0.5, rho=0.0)
    with pytest.raises(ValueError, match=r"iterations=0"):
        admm(W, G, target_sparsity=0.5, iterations=0)
    with pytest.raises(TypeError, match=r"int32"):
        sparsegpt(W.astype(np.int32), G, target_sparsity=0.5)
    with pytest.raises(ValueError, match=r"not positive definite"):
        sparsegpt(W, np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), target_sparsity=0.5)


def test_empty_weight() -> None:
    result = sparsegpt(np.zeros((0, 3), np.float16), G, target_sparsity=0.5)
    assert result.mask.shape == (0, 3) and result.values.dtype == np.float16
