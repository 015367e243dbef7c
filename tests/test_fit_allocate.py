"""fit's allocation alone: the greedy path over a probe table and the searches along it."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mil_sparsity.fit.allocate import Options, first_within_size, greedy_path, last_meeting_quality


def table(*weights: list[tuple[int, float]]) -> list[Options]:
    return [Options(tuple(b for b, _ in levels), tuple(l for _, l in levels)) for levels in weights]


# a sensitive weight, a robust one of the same size, and a small one
SENSITIVE = [(1000, 0.0), (600, 0.05), (300, 0.30)]
ROBUST = [(1000, 0.0), (600, 0.001), (300, 0.004)]
SMALL = [(100, 0.0), (60, 0.0005), (30, 0.002)]


def test_the_robust_weight_is_pruned_first_and_furthest() -> None:
    path = greedy_path(table(SENSITIVE, ROBUST, SMALL))
    assert path[0].levels == (0, 0, 0) and path[-1].levels == (2, 2, 2)
    # before the sensitive weight moves at all, the robust one is at its sparsest
    first_sensitive = next(a for a in path if a.levels[0] > 0)
    assert first_sensitive.levels[1] == 2
    within = path[first_within_size(path, 1400) or 0]
    assert within.levels[0] == 0 and within.nbytes <= 1400


def test_a_size_nothing_reaches_gives_none() -> None:
    path = greedy_path(table(SENSITIVE, ROBUST))
    assert first_within_size(path, 599) is None
    assert first_within_size(path, 2000) == 0


@pytest.mark.parametrize("truth_scale", [0.5, 1.0, 2.0, 5.0])
def test_the_quality_search_finds_the_furthest_point_that_really_meets_the_floor(truth_scale: float) -> None:
    path = greedy_path(table(SENSITIVE, ROBUST, SMALL))

    def measure(index: int) -> float:  # the model's true loss: the prediction off by a factor
        return path[index].predicted_loss * truth_scale

    index, measured = last_meeting_quality(path, 0.06, measure)
    best = max(i for i, a in enumerate(path) if a.predicted_loss * truth_scale <= 0.06)
    assert index == best
    assert len(measured) <= 12


def test_when_nothing_meets_the_floor_the_answer_is_all_dense() -> None:
    path = greedy_path(table(SENSITIVE))
    index, _ = last_meeting_quality(path, 0.01, lambda i: 1.0)
    assert index == 0


def test_levels_that_save_nothing_are_never_taken() -> None:
    path = greedy_path(table([(100, 0.0), (120, 0.0), (50, 0.1)]))
    assert [a.levels for a in path] == [(0,), (2,)]


def test_options_need_one_loss_per_level() -> None:
    with pytest.raises(ValueError, match="one entry per level"):
        Options((1, 2), (0.0,))


levels = st.lists(
    st.tuples(st.integers(1, 1000), st.floats(0, 1, allow_nan=False)), min_size=1, max_size=4
).map(lambda rest: [(2000, 0.0)] + sorted(rest, key=lambda x: -x[0]))


@settings(max_examples=60, deadline=None)
@given(st.lists(levels, min_size=1, max_size=4), st.floats(0, 2, allow_nan=False))
def test_path_properties(weights: list[list[tuple[int, float]]], floor: float) -> None:
    options = table(*weights)
    path = greedy_path(options)
    assert all(b.nbytes < a.nbytes for a, b in itertools.pairwise(path))
    assert path[0].nbytes == 2000 * len(weights)
    # the end of the path is the fewest bytes any allocation reaches
    assert path[-1].nbytes == sum(min(o.nbytes) for o in options)
    index, _ = last_meeting_quality(path, floor, lambda i: path[i].predicted_loss, max_checks=64)
    assert path[index].predicted_loss <= floor or index == 0
    monotone = all(b.predicted_loss >= a.predicted_loss for a, b in itertools.pairwise(path))
    if monotone and index + 1 < len(path):
        assert path[index + 1].predicted_loss > floor


def test_bytes_left_under_the_budget_are_spent_back_where_they_help_most() -> None:
    from mil_sparsity.fit.allocate import spend_leftover

    options = table(SENSITIVE, ROBUST)
    path = greedy_path(options)
    index = first_within_size(path, 1200)
    assert index is not None
    spent = spend_leftover(options, path[index], 1200)
    assert spent.nbytes <= 1200 and spent.predicted_loss <= path[index].predicted_loss
    # brute force over every allocation: nothing within 1200 bytes has less predicted loss
    best = min(
        sum(o.loss[j] for o, j in zip(options, levels))
        for levels in itertools.product(range(3), range(3))
        if sum(o.nbytes[j] for o, j in zip(options, levels)) <= 1200
    )
    assert spent.predicted_loss == pytest.approx(best)


# ---- the prior ---------------------------------------------------------------------------------
import numpy as np  # noqa: E402

from mil_sparsity.fit.prior import outlier_ratio, proxy_losses, spread_pick  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=200))
def test_proxy_losses_grow_with_sparsity_from_0_to_1(values: list[float]) -> None:
    scores = np.array(values, dtype=np.float32)
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    losses = proxy_losses(scores, levels)
    assert np.all(np.diff(losses) >= -1e-12)
    assert losses[0] == 0.0
    assert losses[-1] == pytest.approx(1.0) or not np.any(scores)
    assert np.all((losses >= 0) & (losses <= 1 + 1e-12))


def test_proxy_loss_is_the_energy_share_of_the_lowest_scores() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    np.testing.assert_allclose(proxy_losses(scores, [0.5]), [(1 + 4) / 30])


def test_outlier_ratio_counts_scores_far_above_the_mean() -> None:
    scores = np.ones(100, np.float32)
    assert outlier_ratio(scores) == 0.0
    scores[:2] = 1000.0  # mean ~ 21: two scores are above 5x it
    assert outlier_ratio(scores) == 0.02
    assert outlier_ratio(np.zeros(5)) == 0.0


def test_spread_pick_keeps_both_ends() -> None:
    assert spread_pick(list("abcdefg"), 3) == ["a", "d", "g"]
    assert spread_pick(list("ab"), 5) == ["a", "b"]
    assert spread_pick(list("ab"), 0) == []
