"""The three passes, one per module, and their registration in coremltools' pass registry."""

from __future__ import annotations

from mil_sparsity import _coremltools_private as private
from mil_sparsity.passes._base import SparsityPass
from mil_sparsity.passes.prune_by_magnitude import PruneByMagnitude
from mil_sparsity.passes.prune_by_threshold import PruneByThreshold
from mil_sparsity.passes.sparse_pack import SparsePack
from mil_sparsity.selector import OpSelector

NAMESPACE = "mil_sparsity"
PASS_CLASSES: tuple[type[SparsityPass], ...] = (PruneByThreshold, PruneByMagnitude, SparsePack)


def pass_for_selector(selector: OpSelector, where: str = "config") -> str:
    """The name of the one pass that takes every config kind in ``selector``.

    threshold -> prune_by_threshold; magnitude, block, n_m -> prune_by_magnitude;
    pack -> sparse_pack. ValueError if no config is set or the kinds span several passes.
    """
    owner = {
        config_cls.kind: cls.pass_name
        for cls in PASS_CLASSES
        for config_cls in cls.accepted_configs
    }
    kinds = sorted({config.kind for _, config in selector.entries() if config is not None})
    if not kinds:
        raise ValueError(f"{where}: no config set (every entry is null): nothing to do")
    passes = sorted({owner[kind] for kind in kinds})
    if len(passes) > 1:
        detail = "; ".join(
            f"{name} takes {', '.join(k for k in kinds if owner[k] == name)}" for name in passes
        )
        raise ValueError(
            f"{where}: mixes config kinds of different passes ({detail}); one run applies one "
            "pass, so split it per pass"
        )
    return passes[0]


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


__all__ = ["PASS_CLASSES", "pass_for_selector", "PruneByMagnitude", "PruneByThreshold", "SparsePack", "SparsityPass", "register_passes"]
