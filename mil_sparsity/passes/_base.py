"""What the three sparsity passes share: select, plan, then commit all-or-nothing.

Contract of every pass:

* Before: ``const(w) -> op``. After: ``const(nonzero_data), const(mask)[, const(shape)] ->
  constexpr_sparse_to_dense -> op`` for every selected weight, in every function and nested
  block; the old const is removed. The materialized value equals the pruned weight bit for bit
  (``-0.0`` becomes ``+0.0``).
* Phase 1 (select + plan) reads the program only: it resolves each const's config, checks it,
  and computes every replacement with the numpy kernels. Config conflicts, out-of-range dims
  and kernel errors all surface here, while the program is untouched.
* Phase 2 (commit) creates all new ops, then rewires all uses, then removes the old consts. If
  anything fails, what was done is undone and the error is re-raised: the program is unchanged.
* Every const considered gets a :class:`~mil_sparsity.report.WeightRecord` with its decision.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import attrs
import numpy as np
from coremltools.converters.mil.mil.block import Block
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.var import Var

from mil_sparsity import _graph
from mil_sparsity.configs import SparsityConfig, config_to_dict
from mil_sparsity.handlers import Skip, run_handler
from mil_sparsity.kernels import SparseWeight, zero_fraction
from mil_sparsity.report import PACKED, SKIPPED, SparsityReport, WeightRecord
from mil_sparsity.selector import OpSelector, as_selector


@attrs.frozen
class _Planned:
    """One replacement computed in phase 1 and applied in phase 2."""

    block: Block
    op: Operation
    inputs: dict[str, np.ndarray]  # constexpr_sparse_to_dense inputs, in the opset's form


@attrs.frozen
class _ConstView:
    """What the selection needs to know about one const."""

    function: str
    block: Block
    op: Operation
    value: np.ndarray
    consumers: list[tuple[Operation, tuple[str, ...]]]

    @property
    def name(self) -> str:
        return str(self.op.name)

    @property
    def consumer_types(self) -> tuple[str, ...]:
        return tuple(str(op.op_type) for op, _ in self.consumers)


class SparsityPass(AbstractGraphPass):  # type: ignore[misc]
    """Base of the mil_sparsity passes. Options: ``config`` and ``report``."""

    pass_name: ClassVar[str]
    description: ClassVar[str]
    accepted_configs: ClassVar[tuple[type, ...]]
    supported_dtypes: ClassVar[frozenset[str]] = frozenset({"float16", "float32"})

    def __init__(self) -> None:
        super().__init__()
        self._selector: Optional[OpSelector] = None
        self.report: Optional[SparsityReport] = None

    # ----- options -----------------------------------------------------------------------
    @property
    def config(self) -> Optional[OpSelector]:
        return self._selector

    @config.setter
    def config(self, value: Any) -> None:
        self._selector = None if value is None else self._checked(as_selector(value))

    def _checked(self, selector: OpSelector) -> OpSelector:
        accepted = ", ".join(cls.__name__ for cls in self.accepted_configs)
        for where, config in selector.entries():
            if config is not None and not isinstance(config, self.accepted_configs):
                raise ValueError(
                    f"{self.pass_name} takes {accepted}; {where} is a {type(config).__name__}"
                )
        return selector

    def default_selector(self) -> OpSelector:
        """The selection used when no ``config`` option was given."""
        raise ValueError(f"{self.pass_name} needs a config option")

    # ----- the pass ----------------------------------------------------------------------
    def apply(self, prog: Program) -> None:
        if not isinstance(prog, Program):
            raise TypeError(f"{self.pass_name} applies to a PyMIL Program, got {type(prog).__name__}")
        if self.report is not None and not isinstance(self.report, SparsityReport):
            raise TypeError(
                f"{self.pass_name}: option report must be a SparsityReport, "
                f"got {type(self.report).__name__}"
            )
        selector = self._selector if self._selector is not None else self.default_selector()
        _graph.check_opsets(prog, self.pass_name)
        planned, records = self._plan(prog, selector)
        _commit(planned)
        if self.report is not None:
            self.report.extend(records)

    def _plan(
        self, prog: Program, selector: OpSelector
    ) -> tuple[list[_Planned], list[WeightRecord]]:
        planned: list[_Planned] = []
        records: list[WeightRecord] = []
        for function_name, function in prog.functions.items():
            ios18 = _graph.uses_ios18_form(function)
            for block in _graph.iter_blocks(function):
                for op in _graph.weight_consts(block):
                    var = op.outputs[0]
                    view = _ConstView(
                        function_name, block, op, var.val, _graph.consumers(var)
                    )
                    outcome, config, note = self._decide(view, selector)
                    records.append(self._record(view, outcome, config, note))
                    if isinstance(outcome, SparseWeight):
                        inputs = _graph.sparse_op_inputs(outcome, ios18)
                        planned.append(_Planned(block, op, inputs))
        return planned, records

    def _decide(
        self, view: _ConstView, selector: OpSelector
    ) -> tuple[SparseWeight | Skip, Optional[SparsityConfig], str]:
        """Phase 1 for one const: (sparse form or skip, config applied, how it was chosen)."""
        var = view.op.outputs[0]
        if _graph.feeds_block_output(var):
            return Skip("feeds a block output directly"), None, ""
        constexpr_users = sorted(t for t in view.consumer_types if t.startswith("constexpr_"))
        if constexpr_users:
            return Skip(f"already feeds {constexpr_users[0]}"), None, ""
        if not view.consumers:
            return Skip("not used by any op"), None, ""
        if view.value.ndim <= 1:
            return Skip(f"rank {view.value.ndim} const (only rank >= 2 is sparsified)"), None, ""
        config, source, by_name = self._resolve(view, selector)
        if config is None:
            return Skip(f"no config selected ({source} is None)"), None, source
        if view.value.size <= config.weight_threshold:
            return (
                Skip(f"{view.value.size} elements <= weight_threshold {config.weight_threshold}"),
                config,
                source,
            )
        dtype = str(view.value.dtype)
        if dtype not in self.supported_dtypes:
            allowed = ", ".join(sorted(self.supported_dtypes))
            return Skip(f"dtype {dtype} not handled by this pass (handles {allowed})"), config, source
        if getattr(config, "structured", False) and not by_name and not self._in_structured_scope(view):
            return (
                Skip(
                    f"{config.kind} sparsity applies by default only to conv/conv_transpose/linear "
                    "weights and constant matmul operands; select this const by name to force it"
                ),
                config,
                source,
            )
        return run_handler(view.value, config), config, source

    def _resolve(
        self, view: _ConstView, selector: OpSelector
    ) -> tuple[Optional[SparsityConfig], str, bool]:
        """One config for the const, or ValueError if its consumers disagree."""
        resolutions = [
            (op, selector.resolve(view.name, str(op.name), str(op.op_type)))
            for op, _ in view.consumers
        ]

        def effective(config: Optional[SparsityConfig]) -> Optional[SparsityConfig]:
            if config is None or view.value.size <= config.weight_threshold:
                return None
            return config

        first_op, first = resolutions[0]
        for op, other in resolutions[1:]:
            if effective(other.config) != effective(first.config):
                raise ValueError(
                    f"{self.pass_name}: const {view.name!r} is shared by ops {first_op.name!r} "
                    f"({first_op.op_type}, {first.source} = {first.config}) and {op.name!r} "
                    f"({op.op_type}, {other.source} = {other.config}), whose configs differ. "
                    f"Give the const one config with op_name_configs[{view.name!r}]."
                )
        by_name = all(resolution.by_name for _, resolution in resolutions)
        return first.config, first.source, by_name

    @staticmethod
    def _in_structured_scope(view: _ConstView) -> bool:
        for op, input_names in view.consumers:
            allowed = _graph.STRUCTURED_SCOPE.get(str(op.op_type))
            if allowed is None or not set(input_names) <= allowed:
                return False
        return True

    def _record(
        self,
        view: _ConstView,
        outcome: SparseWeight | Skip,
        config: Optional[SparsityConfig],
        source: str,
    ) -> WeightRecord:
        value = view.value
        dense = int(value.nbytes)
        common = dict(
            pass_name=self.pass_name,
            function=view.function,
            name=view.name,
            shape=tuple(int(d) for d in value.shape),
            dtype=str(value.dtype),
            consumer_types=view.consumer_types,
            config=None if config is None else config_to_dict(config),
            dense_bytes=dense,
        )
        if isinstance(outcome, SparseWeight):
            return WeightRecord(
                decision=PACKED,
                reason=f"config from {source}",
                sparsity=outcome.sparsity,
                packed_bytes=outcome.packed_nbytes,
                **common,  # type: ignore[arg-type]
            )
        sparsity = outcome.sparsity
        if sparsity is None and value.size <= 1 << 16:
            sparsity = zero_fraction(value)
        return WeightRecord(
            decision=SKIPPED,
            reason=outcome.reason,
            sparsity=sparsity,
            packed_bytes=None,
            **common,  # type: ignore[arg-type]
        )


def _commit(planned: list[_Planned]) -> None:
    """Phase 2: create all new ops, rewire all uses, remove the old consts; undo on failure."""
    created: list[tuple[_Planned, Var]] = []
    rewired: list[tuple[_Planned, Var]] = []
    try:
        by_block: dict[int, list[_Planned]] = {}
        for item in planned:
            by_block.setdefault(id(item.block), []).append(item)
        for items in by_block.values():
            with items[0].block:
                for item in items:
                    created.append((item, _graph.build_sparse_op(item.op, item.inputs)))
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
            raise RuntimeError(f"consts still in use after rewiring: {still_used}")
        for items in by_block.values():
            items[0].block.remove_ops([item.op for item in items])
    except BaseException:
        _undo(created, rewired)
        raise


def _undo(created: list[tuple[_Planned, Var]], rewired: list[tuple[_Planned, Var]]) -> None:
    for item, new_var in reversed(rewired):
        if item.op.enclosing_block is None:  # already removed: put nothing back we can't
            continue
        item.block.replace_uses_of_var_after_op(
            anchor_op=None, old_var=new_var, new_var=item.op.outputs[0], force_replace=True
        )
    for _, new_var in reversed(created):
        if new_var.op is not None and new_var.op.enclosing_block is not None:
            _graph.remove_new_op(new_var)
