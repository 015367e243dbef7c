"""Probing within ``max_probes``: the prior (:mod:`.prior`) ranks and predicts, probes decide.

1. Every weight gets its element scores, its outlier ratio (OWL) and its proxy loss at each
   setting; the exact bytes of each setting come from the pass's magnitude selection (same
   pattern, same count, so the same bytes whatever method runs).
2. Half the budget probes the middle setting of weights spread evenly over the outlier-ratio
   ranking; the median of measured loss over proxy loss turns every proxy into a predicted
   loss.
3. The allocation on measured-or-predicted losses (same rule as :func:`fit`) leaves some
   weights at an interior level: those are the uncertain ones. They are probed at every
   setting, least extreme outlier ratio first, while the budget lasts; the factor is refitted
   on every measurement and the table returned has measured rows where there are probes and
   predicted rows (``measured=False``) elsewhere.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import attrs
import numpy as np

from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.fit.allocate import Allocation, greedy_path
from mil_sparsity.fit.prior import outlier_ratio, proxy_losses, spread_pick
from mil_sparsity.fit.probes import ProbeJob, ProbeRow, choose, element_scores, method_for, options_of
from mil_sparsity.fit.settings import Setting
from mil_sparsity.model.inventory import ProgramWeight

RunProbes = Callable[[ProbeJob, Sequence[str]], list[ProbeRow]]
Choose = Callable[[Sequence[Allocation]], int]


@attrs.frozen
class _Prior:
    ratio: float
    proxy: np.ndarray  # per setting
    nbytes: tuple[Optional[int], ...]  # per setting; None: the pattern does not fit the weight
    sparsity: tuple[float, ...]


def _prior(item: ProgramWeight, settings: Sequence[Setting], stats: Optional[ActivationStats], palettize_nbits: Optional[int]) -> _Prior:
    scores = element_scores(item, stats)
    sizes, sparsities = [], []
    for setting in settings:
        made = choose(item, setting, ("magnitude",), None)
        sizes.append(None if made is None else made.nbytes(palettize_nbits))
        sparsities.append(setting.sparsity if made is None else float(made.outcome.sparsity))
    return _Prior(outlier_ratio(scores), proxy_losses(scores, sparsities), tuple(sizes), tuple(sparsities))


def _factor(measured: Sequence[ProbeRow], priors: dict[str, _Prior], index_of: Callable[[Setting], int], saved: dict[str, str]) -> float:
    ratios = [
        (1.0 - row.quality) / priors[saved[row.weight]].proxy[index_of(row.setting)]
        for row in measured
        if priors[saved[row.weight]].proxy[index_of(row.setting)] > 0
    ]
    return float(np.median(ratios)) if ratios else 1.0


def probe_within(
    job: ProbeJob,
    names: Sequence[str],
    found: dict[str, ProgramWeight],
    max_probes: int,
    run_probes: RunProbes,
    pick: Choose,
) -> tuple[list[ProbeRow], str]:
    """The probe table (measured and predicted rows) and a note on how it was made."""
    settings = job.settings
    index_of = settings.index
    priors = {name: _prior(found[name], settings, job.calibration, job.palettize_nbits) for name in names}
    saved = {found[name].weight.saved_name: name for name in names}
    order = sorted(names, key=lambda name: (priors[name].ratio, name))
    middle = len(settings) // 2
    first = spread_pick(order, max(1, min(len(names), max_probes // 2)))
    measured = run_probes(attrs.evolve(job, settings=(settings[middle],)), first)
    spent = len(first)

    def table() -> list[ProbeRow]:
        factor = _factor(measured, priors, index_of, saved)
        have = {(row.weight, index_of(row.setting)) for row in measured}
        rows = list(measured)
        for name in names:
            item, prior = found[name], priors[name]
            for index, setting in enumerate(settings):
                nbytes = prior.nbytes[index]
                if nbytes is None or (item.weight.saved_name, index) in have:
                    continue
                method = method_for(item, setting, job.methods, job.calibration)
                if method is None:
                    continue
                rows.append(ProbeRow(
                    weight=item.weight.saved_name, pattern=setting.pattern, sparsity=prior.sparsity[index],
                    method=method, quality=1.0 - factor * float(prior.proxy[index]), nbytes=nbytes,
                    dense_nbytes=item.weight.nbytes, setting=setting, measured=False,
                ))
        return rows

    rows = table()
    options = options_of(names, found, rows)
    path = greedy_path(options[0])
    chosen = path[pick(path)]
    interior = [
        name for name, level, levels in zip(names, chosen.levels, options[1])
        if 0 < level < len(levels)
    ]
    median = np.median([priors[name].ratio for name in names])
    interior.sort(key=lambda name: (abs(priors[name].ratio - median), name))
    full = []
    for name in interior:
        cost = len(settings) - (1 if name in first else 0)
        if spent + cost > max_probes:
            break
        full.append(name)
        spent += cost
    if full:
        fresh = run_probes(job, full)
        done = {(row.weight, index_of(row.setting)) for row in measured}
        measured.extend(row for row in fresh if (row.weight, index_of(row.setting)) not in done)
        rows = table()
    note = (
        f"fit: {spent} probes within max_probes={max_probes} (of {len(names) * len(settings)}): "
        f"{len(first)} weights at {settings[middle].label} to scale the outlier prior, "
        f"{len(full)} uncertain weights at every setting; the other rows are predicted"
    )
    return rows, note
