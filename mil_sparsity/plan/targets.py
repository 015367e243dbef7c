"""The deployment target of a post-hoc run, and raising a saved model's spec to it.

``constexpr_sparse_to_dense`` exists from iOS16 on, and ``ct.convert`` without
``minimum_deployment_target`` gives an iOS15 ML Program. So a post-hoc run
(:func:`mil_sparsity.apply_pipeline`, :func:`mil_sparsity.streaming.compress_package`,
:func:`mil_sparsity.prune_weights`, the command line's ``prune`` and ``pack``) gives its result
the target

    max(the model's target, ``minimum_deployment_target`` if given, iOS16 if the pipeline has a
    mil_sparsity pass)

as coremltools' own post-hoc compression raises the specification version to at least iOS16
before it runs its pass. Decisions:

* The raise depends on the run, never on the weights: a pipeline with a mil_sparsity pass
  raises an iOS15 model to iOS16 even when it ends up packing nothing (coremltools does the
  same), so one command always gives one target. A pipeline without mil_sparsity passes is
  raised only to an explicit ``minimum_deployment_target``.
* A target is never lowered: a ``minimum_deployment_target`` below the model's own is a
  ValueError naming the option, the value and the allowed range.
* Inside ``ct.convert`` the passes cannot change the target and still raise their own error
  below iOS16 (``sparse_format.checked_form``).

Each raise is reported twice: a note in every :class:`~mil_sparsity.report.SparsityReport` of
the run (``notes``), and one WARNING record on the ``"mil_sparsity"`` logger (the result no
longer runs on the old target).

Raising a spec without PyMIL (:func:`raise_spec`, for streaming) sets ``specificationVersion``
and renames every function's opset (its block specialization moves to the new opset key); the
ops stay as they are. The PyMIL path (load at the new opset, export) gives the same spec, ops
included: ``tests/test_posthoc_targets.py`` compares both.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import attrs
import coremltools as ct

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity import _coremltools_private as private
from mil_sparsity.format import sparse_format
from mil_sparsity.plan import catalog
from mil_sparsity.report import SparsityReport

LOGGER = logging.getLogger("mil_sparsity")
OPTION = "minimum_deployment_target"
#: spec version of the smallest target with the sparse op (iOS16: 7)
SPARSE_VERSION: int = int(sparse_format.MINIMUM_TARGET.value)
#: spec version of the newest target this coremltools has an ML Program opset for
NEWEST_VERSION: int = max(private.OPSET_NAMES)


def posthoc_target_names() -> tuple[str, ...]:
    """Names of the targets a post-hoc run can give its result (iOS16 to the newest)."""
    return tuple(version_name(v) for v in sorted(private.OPSET_NAMES) if SPARSE_VERSION <= v)


def version_name(version: int) -> str:
    """``"iOS16"`` for spec version 7 (``"spec version N"`` if no ct.target has it)."""
    try:
        return sparse_format.target_name(ct.target(version))
    except ValueError:
        return f"spec version {version}"


def writes_sparse(pass_names: Iterable[str]) -> bool:
    """True if one of the passes is a mil_sparsity pass (every one of them writes sparse ops)."""
    return any(catalog.is_ours(name) for name in pass_names)


def requested_version(requested: Any, model_version: int, option: str = OPTION) -> Optional[int]:
    """The spec version of ``requested`` (a ``ct.target`` member or None), checked against the
    model's: TypeError if it is no ct.target member, ValueError if it lowers the model's target
    or has no ML Program opset in this coremltools."""
    if requested is None:
        return None
    allowed = f"{version_name(model_version)} to {version_name(NEWEST_VERSION)}"
    if not isinstance(requested, ct.target):
        raise InvalidTypeError(
            f"{option} must be a ct.target member ({allowed}), got {type(requested).__name__} "
            f"{requested!r}"
        )
    version = int(requested.value)
    if version < model_version:
        raise InvalidInputError(
            f"{option}={version_name(version)} is below the model's target "
            f"{version_name(model_version)}: the post-hoc path raises a target, never lowers it "
            f"(allowed: {allowed}, or omit it to keep {version_name(model_version)})"
        )
    if version not in private.OPSET_NAMES:
        raise InvalidInputError(f"{option}={version_name(version)} has no ML Program opset (allowed: {allowed})")
    return version


@attrs.frozen
class TargetChange:
    """A post-hoc run moves the model from spec version ``old`` to ``new``."""

    old: int
    new: int
    reason: str

    def note(self) -> str:
        return (
            f"deployment target raised from {version_name(self.old)} to {version_name(self.new)} "
            f"({self.reason}): the result runs on {version_name(self.new)} or later only"
        )


def plan(model_version: int, requested: Any, pass_names: Iterable[str], option: str = OPTION) -> Optional[TargetChange]:
    """The change of target a run makes (module doc), or None if it keeps the model's."""
    asked = requested_version(requested, model_version, option)
    needed = SPARSE_VERSION if writes_sparse(pass_names) else model_version
    new = max(model_version, needed, asked if asked is not None else model_version)
    if new == model_version:
        return None
    if asked is not None and asked == new:
        reason = f"{option}={version_name(asked)}"
    else:
        reason = (
            f"{sparse_format.OP_TYPE} needs {version_name(SPARSE_VERSION)} or later; coremltools' "
            "own post-hoc compression raises it too"
        )
    return TargetChange(model_version, new, reason)


def raise_spec(spec: Any, version: int) -> None:
    """Set an ML Program spec's version and every lower function opset to ``version``, in place."""
    opset = private.OPSET_NAMES[version]
    spec.specificationVersion = max(int(spec.specificationVersion), version)
    for name, function in spec.mlProgram.functions.items():
        if sparse_format.target_of_opset(name, function.opset).value >= version:
            continue
        old = function.opset
        function.block_specializations[opset].CopyFrom(function.block_specializations[old])
        del function.block_specializations[old]
        function.opset = opset


def announce(change: Optional[TargetChange], reports: Iterable[Optional[SparsityReport]]) -> None:
    """Add the change's note to each distinct report and log it once (no-op for None)."""
    if change is None:
        return
    note = change.note()
    seen: set[int] = set()
    for report in reports:
        if report is not None and id(report) not in seen:
            seen.add(id(report))
            report.notes.append(note)
    LOGGER.warning("%s", note)
