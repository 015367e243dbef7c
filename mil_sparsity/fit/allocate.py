"""Choose one level per weight: the greedy path over probe results, and the search along it.

Each weight has levels 0..k: level 0 is the dense weight (its dense bytes, loss 0), level j a
pruned setting with its stored bytes and its measured loss (1 - the worst output's mean cosine
when only this weight is pruned). The model's loss is predicted as the sum of its weights'
losses.

:func:`greedy_path` starts from every weight dense and repeatedly takes the single move (one
weight to any higher level) with the most bytes saved per unit of predicted loss added; the
path lists every allocation it passes through, so bytes fall and predicted loss rises along it.
A move that saves bytes at no measured loss (noise can make a loss negative) is taken first.

:func:`first_within_size` picks the first allocation on the path that meets a byte budget;
:func:`last_meeting_quality` searches the path for the furthest allocation whose *measured*
quality (a callback that evaluates the whole pruned model) meets a floor, starting where the
prediction puts it and bisecting, so the budget holds on the samples and not only in the
prediction.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import attrs

from mil_sparsity.errors import InvalidInputError

_TINY = 1e-12


@attrs.frozen
class Options:
    """One weight's levels: ``nbytes[j]`` stored bytes and ``loss[j]`` measured loss; level 0
    is the dense weight (loss 0)."""

    nbytes: tuple[int, ...]
    loss: tuple[float, ...]

    def __attrs_post_init__(self) -> None:
        if len(self.nbytes) != len(self.loss) or not self.nbytes:
            raise InvalidInputError(
                f"Options: nbytes and loss need one entry per level, got {len(self.nbytes)} and {len(self.loss)}"
            )


@attrs.frozen
class Allocation:
    """One point of the path: a level per weight, its total bytes and predicted loss."""

    levels: tuple[int, ...]
    nbytes: int
    predicted_loss: float


def _allocation(options: Sequence[Options], levels: list[int]) -> Allocation:
    return Allocation(
        levels=tuple(levels),
        nbytes=sum(o.nbytes[j] for o, j in zip(options, levels)),
        predicted_loss=sum(max(o.loss[j], 0.0) for o, j in zip(options, levels)),
    )


def greedy_path(options: Sequence[Options]) -> list[Allocation]:
    """Every allocation the greedy passes through, from all dense to no move left."""
    levels = [0] * len(options)
    path = [_allocation(options, levels)]
    while True:
        best: Optional[tuple[float, int, int, int]] = None  # (efficiency, saved, -weight, level)
        for index, option in enumerate(options):
            current = levels[index]
            for level in range(current + 1, len(option.nbytes)):
                saved = option.nbytes[current] - option.nbytes[level]
                if saved <= 0:
                    continue
                added = max(option.loss[level], 0.0) - max(option.loss[current], 0.0)
                candidate = (saved / max(added, _TINY), saved, -index, level)
                if best is None or candidate > best:
                    best = candidate
        if best is None:
            return path
        levels[-best[2]] = best[3]
        path.append(_allocation(options, levels))


def first_within_size(path: Sequence[Allocation], max_bytes: int) -> Optional[int]:
    """The index of the first allocation with at most ``max_bytes``, or None if none has."""
    return next((i for i, a in enumerate(path) if a.nbytes <= max_bytes), None)


def last_meeting_quality(
    path: Sequence[Allocation],
    max_loss: float,
    measure: Callable[[int], float],
    *,
    max_checks: int = 12,
) -> tuple[int, dict[int, float]]:
    """The furthest path index whose measured loss (``measure(index)``) is at most
    ``max_loss``, found by bisection from the predicted index; 0 (all dense) if none is.
    Returns the index and every measurement made (index -> loss)."""
    measured: dict[int, float] = {0: 0.0}

    def ok(index: int) -> bool:
        if index not in measured:
            measured[index] = measure(index)
        return measured[index] <= max_loss

    predicted = max((i for i, a in enumerate(path) if a.predicted_loss <= max_loss), default=0)
    good, bad = 0, len(path)  # invariant: good meets the floor; bad does not (or is past the end)
    if ok(predicted):
        good = predicted
        step = 1
        while good + step < len(path) and len(measured) < max_checks:  # gallop forward
            if ok(good + step):
                good += step
                step *= 2
            else:
                bad = good + step
                break
    else:
        bad = predicted
    while bad - good > 1 and len(measured) < max_checks:
        middle = (good + bad) // 2
        if ok(middle):
            good = middle
        else:
            bad = middle
    return good, measured


def spend_leftover(options: Sequence[Options], allocation: Allocation, max_bytes: int) -> Allocation:
    """``allocation`` with bytes left under ``max_bytes`` spent back: repeatedly move one weight
    to a lower level (denser, less loss) that still fits, the move that removes the most
    predicted loss per byte added, until none fits."""
    levels = list(allocation.levels)
    total = allocation.nbytes
    while True:
        best: Optional[tuple[float, int, int]] = None  # (loss removed per byte, -weight, level)
        for index, option in enumerate(options):
            current = levels[index]
            for level in range(current):
                added = option.nbytes[level] - option.nbytes[current]
                removed = max(option.loss[current], 0.0) - max(option.loss[level], 0.0)
                if added <= 0 or total + added > max_bytes or removed <= 0:
                    continue
                candidate = (removed / added, -index, level)
                if best is None or candidate > best:
                    best = candidate
        if best is None:
            return _allocation(options, levels)
        index = -best[1]
        total += options[index].nbytes[best[2]] - options[index].nbytes[levels[index]]
        levels[index] = best[2]
