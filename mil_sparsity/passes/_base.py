"""What the three sparsity passes share: select, plan, then commit all-or-nothing.

Contract of every pass:

* Before: ``const(w) -> op``. After: ``const(nonzero_data), const(mask)[, const(shape)] ->
  constexpr_sparse_to_dense -> op`` for every selected weight, in every function and nested
  block; the old const is removed. The materialized value is the handler's outcome, mask +
  values (:mod:`mil_sparsity.plan.handlers`): for pruning, the weight with the pruned elements
  zeroed, bit for bit (``-0.0`` becomes ``+0.0``); a reconstruction method stores new values.
* Phase 1 (select, then plan) reads the program only: it first resolves every const's config
  and checks it (config conflicts, conflicting reduction axes, missing calibration statistics
  surface before any weight is pruned), then computes every replacement with the numpy
  kernels (out-of-range dims and kernel errors surface here). The program is untouched.
* Phase 2 (commit) creates all new ops, then rewires all uses, then removes the old consts. If
  anything fails, what was done is undone and the error is re-raised: the program is unchanged.
* Every const considered gets a :class:`~mil_sparsity.report.WeightRecord` with its decision.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Generic, Iterator, Optional, TypeVar, overload

import attrs
from coremltools.converters.mil.mil.block import Block
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.var import Var

from mil_sparsity.errors import InvalidTypeError
from mil_sparsity.model import pymil as _graph
from mil_sparsity.format import sparse_format
from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.configs import SparsityConfig
from mil_sparsity.kernels import SparseWeight
from mil_sparsity.plan import catalog
from mil_sparsity.plan.catalog import PassEntry
from mil_sparsity.plan.pipeline import rules_of
from mil_sparsity.report import SparsityReport, WeightRecord
from mil_sparsity.model.inventory import Weight, program_weights
from mil_sparsity.plan.rules import Decision, PassRules, record, run_selected, select
from mil_sparsity.selector import OpSelector


@attrs.frozen
class Planned:
    """One replacement computed in phase 1 and applied in phase 2.

    ``build`` creates the new op(s) just before ``op`` (the block is the current builder
    context) and returns the var that replaces ``op``'s output; it only runs mb calls on
    arrays computed in phase 1.
    """

    block: Block
    op: Operation
    build: Callable[[], Var]


@attrs.frozen
class PassResult:
    """What one run of a pass did (as onnx-ir's ``PassResult``): whether it changed the
    program, and one report row per weight it considered (also appended to its ``report``)."""

    modified: bool
    records: tuple[WeightRecord, ...]

    @property
    def packed(self) -> tuple[str, ...]:
        """The names of the weights now stored sparse."""
        return tuple(record.name for record in self.records if record.packed)


T = TypeVar("T")


class PassOption(Generic[T]):
    """A pass option, declared as a class attribute: reading gives the value set (``default``
    until then); every value set (by coremltools' pipeline manager through ``setattr``, or
    directly) is checked and normalised by the pass's catalog entry
    (:meth:`~mil_sparsity.plan.catalog.PassEntry.check_option`)."""

    def __init__(self, default: T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> "PassOption[T]": ...

    @overload
    def __get__(self, obj: "SparsityPass", owner: type) -> T: ...

    def __get__(self, obj: "SparsityPass | None", owner: type) -> "T | PassOption[T]":
        if obj is None:
            return self
        value: T = obj.__dict__.get(self.name, self.default)
        return value

    def __set__(self, obj: "SparsityPass", value: object) -> None:
        obj.__dict__[self.name] = obj.entry.check_option(self.name, value)


class SparsityPass(AbstractGraphPass):  # type: ignore[misc]
    """Base of the mil_sparsity passes. Options: ``config`` and ``report`` (and what the pass's
    catalog entry adds); every value is checked by the entry (:mod:`mil_sparsity.plan.catalog`)."""

    entry: ClassVar[PassEntry]
    pass_name: ClassVar[str]
    description: ClassVar[str]
    accepted_configs: ClassVar[tuple[type[SparsityConfig], ...]]
    supported_dtypes: ClassVar[frozenset[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.pass_name = cls.entry.name
        cls.description = cls.entry.description
        cls.accepted_configs = cls.entry.configs
        cls.supported_dtypes = cls.entry.dtypes

    # ----- options (each checked by the catalog entry) -------------------------------------
    config: PassOption[Optional[OpSelector]] = PassOption(None)
    report: PassOption[Optional[SparsityReport]] = PassOption(None)

    def calibration_stats(self) -> Optional[ActivationStats]:
        """The ``calibration`` option's statistics (None for passes without that option)."""
        stats: Optional[ActivationStats] = getattr(self, catalog.CALIBRATION, None)
        return stats

    @classmethod
    def rules(cls) -> PassRules:
        return rules_of(cls.entry)

    def default_selector(self) -> OpSelector:
        """The selection used when no ``config`` option was given (the catalog's)."""
        return self.entry.default_selector()

    # ----- the pass ----------------------------------------------------------------------
    def apply(self, prog: Program) -> PassResult:
        """Select, plan, commit (see the module doc); returns what changed. coremltools'
        pipeline manager ignores the result; direct callers may read it."""
        if not isinstance(prog, Program):
            raise InvalidTypeError(f"{self.pass_name} applies to a PyMIL Program, got {type(prog).__name__}")
        selector = self.config if self.config is not None else self.default_selector()
        _graph.check_opsets(prog, self.pass_name)
        self.entry.check_calibration(selector, self.calibration_stats())
        planned, records = self._plan(prog, selector)
        _commit(planned)
        if self.report is not None:
            self.report.extend(records)
        return PassResult(bool(planned), tuple(records))

    def _plan(
        self, prog: Program, selector: OpSelector
    ) -> tuple[list[Planned], list[WeightRecord]]:
        rules = self.rules()
        planned: list[Planned] = []
        records: list[WeightRecord] = []
        consts_by_block: dict[int, list[tuple[Operation, Weight]]] = {}
        for found in program_weights(prog):  # the inventory: uncompressed consts, by block
            if not found.weight.compressed:
                consts_by_block.setdefault(id(found.block), []).append((found.op, found.weight))
        chosen_by_block: list[tuple[str, Block, list[tuple[Operation, Weight, Any]]]] = []
        for function_name, function in prog.functions.items():  # select every const first
            for block in _graph.iter_blocks(function):
                chosen = [
                    (op, site, select(site, selector, rules, self.calibration_stats()))
                    for op, site in consts_by_block.get(id(block), [])
                ]
                chosen_by_block.append((function_name, block, chosen))
        for function_name, block, chosen in chosen_by_block:
            form = _graph.function_form(function_name, prog.functions[function_name])
            for op, site, selected in chosen:
                value = op.outputs[0].val
                decision = selected if isinstance(selected, Decision) else run_selected(selected, value)
                records.append(record(site, decision, rules, lambda: value))
                if isinstance(decision.outcome, SparseWeight):
                    replacement = sparse_format.replacement(str(op.name), decision.outcome, form)
                    planned.append(Planned(block, op, _graph.sparse_op_builder(op, replacement)))
            for item, row in self._plan_more(function_name, block, selector):
                records.append(row)
                if item is not None:
                    planned.append(item)
        return planned, records

    def _plan_more(
        self, function_name: str, block: Block, selector: OpSelector
    ) -> Iterator[tuple[Optional[Planned], WeightRecord]]:
        """Hook for passes that also rewrite non-const ops (sparse_pack's joint compression)."""
        return iter(())


def _commit(planned: list[Planned]) -> None:
    """Phase 2: create all new ops, rewire all uses, remove the old ops; undo on failure."""
    created: list[tuple[Planned, Var]] = []
    rewired: list[tuple[Planned, Var]] = []
    try:
        by_block: dict[int, list[Planned]] = {}
        for item in planned:
            by_block.setdefault(id(item.block), []).append(item)
        for items in by_block.values():
            with items[0].block:
                for item in items:
                    created.append((item, item.build()))
        for item, new_var in created:
            item.block.replace_uses_of_var_after_op(
                anchor_op=item.op,
                old_var=item.op.outputs[0],
                new_var=new_var,
                force_replace=True,
            )
            rewired.append((item, new_var))
        still_used = [item.op.name for item, _ in created if item.op.outputs[0].child_ops]
        if still_used:
            raise RuntimeError(f"ops still in use after rewiring: {still_used}")
        for items in by_block.values():
            _graph.remove_with_orphans(items[0].block, [item.op for item in items])
    except BaseException:
        _undo(created, rewired)
        raise


def _undo(created: list[tuple[Planned, Var]], rewired: list[tuple[Planned, Var]]) -> None:
    for item, new_var in reversed(rewired):
        if item.op.enclosing_block is None:  # already removed: put nothing back we can't
            continue
        item.block.replace_uses_of_var_after_op(
            anchor_op=None, old_var=new_var, new_var=item.op.outputs[0], force_replace=True
        )
    for _, new_var in reversed(created):
        if new_var.op is not None and new_var.op.enclosing_block is not None:
            _graph.remove_with_orphans(new_var.op.enclosing_block, [new_var.op])
