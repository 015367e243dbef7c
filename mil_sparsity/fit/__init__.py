"""Prune to a budget: :func:`fit` chooses each weight's sparsity from measured sensitivities.

- :mod:`.settings`: the candidate patterns per compute unit and the methods;
- :mod:`.probes`: one weight pruned alone, measured through the evaluator's overrides;
- :mod:`.allocate`: the greedy path over the probe table and the search along it;
- :mod:`.api`: :func:`fit` and :class:`FitResult`.
"""

from mil_sparsity.fit.api import FitResult, PlannedWeight, fit
from mil_sparsity.fit.probes import ProbeRow
from mil_sparsity.fit.settings import COMPUTE_UNITS, METHODS, Setting

__all__ = ["COMPUTE_UNITS", "METHODS", "FitResult", "PlannedWeight", "ProbeRow", "Setting", "fit"]
