"""Calibration for activation-aware pruning: statistics of the activations that meet each
weight, collected with the reference evaluator (:func:`collect_activation_stats`; with
``sequential=config``, each weight's from the model pruned before it:
:mod:`mil_sparsity.calibration.sequential`), saved and loaded as .npz (:class:`ActivationStats`)."""

from mil_sparsity.calibration.collect import (
    ProductSite,
    collect_activation_stats,
    product_sites,
    source_names,
)
from mil_sparsity.calibration.stats import ActivationStats, ChannelStats, channel_sum_squares

__all__ = [
    "ActivationStats",
    "ChannelStats",
    "ProductSite",
    "channel_sum_squares",
    "collect_activation_stats",
    "product_sites",
    "source_names",
]
