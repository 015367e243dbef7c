"""The passes, one per module (their metadata is their catalog entry,
:mod:`mil_sparsity.plan.catalog`), and their registration in coremltools' pass registry."""

from __future__ import annotations

import importlib

from mil_sparsity import _coremltools_private as private
from mil_sparsity.passes._base import PassResult, SparsityPass
from mil_sparsity.passes.prune_by_magnitude import PruneByMagnitude
from mil_sparsity.passes.prune_by_threshold import PruneByThreshold
from mil_sparsity.passes.sparse_pack import SparsePack
from mil_sparsity.plan import catalog

def _implementation(entry: catalog.PassEntry) -> type[SparsityPass]:
    module, _, name = entry.implementation.partition(":")
    cls: type[SparsityPass] = getattr(importlib.import_module(module), name)
    return cls


#: one class per catalog entry, in catalog order: a new pass is its module plus its entry
PASS_CLASSES: tuple[type[SparsityPass], ...] = tuple(_implementation(entry) for entry in catalog.CATALOG)


def register_passes() -> None:
    """Register (or re-register after a reload) every pass under ``mil_sparsity::``.

    Replaces an existing entry only if it is one of ours (same module and class name), so a
    re-import or ``importlib.reload`` works while a foreign pass of the same name is not hidden.
    """
    for cls in PASS_CLASSES:
        namespace, name = cls.pass_name.split("::")
        existing = private.registered_pass(cls.pass_name)
        ours = existing is None or (
            getattr(existing, "__module__", None) == cls.__module__
            and getattr(existing, "__qualname__", None) == cls.__qualname__
        )
        if not ours:
            raise KeyError(f"{cls.pass_name} is already registered by {existing!r}")
        private.register_pass(cls, namespace, name)


__all__ = ["PASS_CLASSES", "PassResult", "PruneByMagnitude", "PruneByThreshold", "SparsePack", "SparsityPass", "register_passes"]
