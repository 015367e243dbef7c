"""Plan a function's evaluation once: which ops run, in what order, and when each value dies.

A plan lists, for one block (nested blocks get their own plans), the ops in program order and,
for each op, the values to free once it has run: the last reader of a value frees it; a value
nobody reads is freed right after its op. Vars read inside a nested block but defined outside
it count as read by the op that owns the block.

A *partial* plan (:func:`plan_partial`) covers only the top-level ops that the requested
values need, walking back from them and stopping at values the caller gives (function inputs
or intermediates): ``outputs=["h3"]`` runs the ops up to ``h3``; ``start={"h3": ...}`` never
runs what ``h3`` depends on. Kernels are resolved per op here, once, so running a plan does no
table lookups.

In place: a step whose kernel has an in-place variant (:func:`~._registry.inplace`) gets it,
bound to the inputs it may overwrite: values made in this block by a fresh kernel (a new array
that no other value shares), that die at this step, that it reads once, and that no op read
whose kernel could have returned a view of them (a reshape, a user's kernel, a block op).
Function inputs, ``start`` values, consts and overrides are never written.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import attrs
import numpy as np
from coremltools.converters.mil.mil.block import Block, Function
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.var import Var

from mil_sparsity import _coremltools_private as private
from mil_sparsity.reference._registry import FRESH_OUTPUTS, INPLACE, Kernel
from mil_sparsity.reference.inputs import compute_dtype

#: op -> the kernel that computes it (None: const, constexpr and block ops, run by the engine)
KernelFor = Callable[[Operation], Optional[Kernel]]


def walk(block: Block) -> Iterator[Operation]:
    """Every op of ``block``, nested blocks included, in program order."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from walk(inner)


def flat_inputs(op: Operation) -> list[Var]:
    """An op's input vars, variadic inputs flattened."""
    result: list[Var] = []
    for value in op.inputs.values():
        result.extend(value if isinstance(value, (list, tuple)) else (value,))
    return result


def storage_dtype(var: Var) -> Optional[np.dtype[Any]]:
    """The numpy dtype of a var's element type; None for lists, strings and states."""
    try:
        storage = private.numpy_dtype_of(var.dtype)
    except Exception:  # not a numeric element type: left as the kernel returns it
        return None
    return storage if storage.kind in "biuf" else None


def _compute_dtype(var: Var) -> Optional[np.dtype[Any]]:
    """float32 for float types, the declared dtype otherwise; None for non-tensor values."""
    storage = storage_dtype(var)
    return None if storage is None else compute_dtype(storage)


@attrs.frozen
class Step:
    """One op to run: its kernel, its outputs (var id, compute dtype, is fp16), the values that
    die after it and, if some of its inputs may be overwritten, its kernel's in-place variant
    bound to them (used by runs without a capture callback)."""

    op: Operation
    kernel: Optional[Kernel]
    outputs: tuple[tuple[int, Optional[np.dtype[Any]], bool], ...]
    free_after: tuple[int, ...]
    inplace: Optional[Kernel] = None


def _bind(variant: Callable[[Mapping[str, Any], frozenset[str]], Any], writable: frozenset[str]) -> Kernel:
    return lambda args: variant(args, writable)


def _inplace_kernels(
    ops: Sequence[Operation], kernels: Sequence[Optional[Kernel]], reads: Sequence[set[int]],
    inputs: Sequence[int], free_after: Sequence[Sequence[int]],
) -> list[Optional[Kernel]]:
    """Per op, its kernel's in-place variant bound to the inputs it may overwrite, or None."""
    fresh: set[int] = set()
    viewed: set[int] = set(inputs)  # values whose memory something else may share
    for op, kernel, used in zip(ops, kernels, reads):
        if kernel is not None and kernel in FRESH_OUTPUTS and len(op.outputs) == 1:
            fresh.add(id(op.outputs[0]))
        else:  # its outputs may be (views of) what it reads
            viewed.update(used)
    result: list[Optional[Kernel]] = []
    for index, (op, kernel) in enumerate(zip(ops, kernels)):
        entry = INPLACE.get(kernel) if kernel is not None else None
        if entry is None:
            result.append(None)
            continue
        names, variant = entry
        dying = set(free_after[index])
        counts = Counter(id(v) for v in flat_inputs(op))
        writable = frozenset(
            name
            for name in names
            if isinstance(var := op.inputs.get(name), Var)
            and id(var) in fresh and id(var) in dying and id(var) not in viewed and counts[id(var)] == 1
        )
        result.append(_bind(variant, writable) if writable else None)
    return result


@attrs.frozen
class BlockPlan:
    """The steps of one block; ``inputs`` are the ids the caller binds before the steps run."""

    inputs: tuple[int, ...]
    steps: tuple[Step, ...]
    outputs: tuple[int, ...]
    owned_outputs: tuple[int, ...]  # outputs the plan defines (freed on exit)
    nested: Mapping[int, tuple["BlockPlan", ...]]  # op id -> plans of its blocks


def block_inputs(block: Block) -> list[Var]:
    """A block's input vars (a Function keeps them in a name -> Var dict)."""
    inputs = block.inputs
    return list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)


def _free_vars(block: Block) -> set[int]:
    """Vars read in ``block`` (nested blocks included) but defined outside it."""
    defined = {id(v) for v in block_inputs(block)}
    read: set[int] = set()
    for op in block.operations:
        defined.update(id(v) for v in op.outputs)
        read.update(id(v) for v in flat_inputs(op))
        for inner in op.blocks:
            read.update(_free_vars(inner))
    read.update(id(v) for v in block.outputs)
    return read - defined


def _reads(op: Operation) -> set[int]:
    """The ids of every value ``op`` needs, those its nested blocks read from outside included."""
    used = {id(v) for v in flat_inputs(op)}
    for inner in op.blocks:
        used.update(_free_vars(inner))
    return used


def _plan(
    ops: Sequence[Operation],
    inputs: Sequence[int],
    outputs: Sequence[int],
    kernel_for: KernelFor,
) -> BlockPlan:
    reads = [_reads(op) for op in ops]
    defined_here = set(inputs) | {id(v) for op in ops for v in op.outputs}
    kept = set(outputs)
    last_reader: dict[int, int] = {}
    for index, used in enumerate(reads):
        for var_id in used:
            last_reader[var_id] = index
    free_after: list[list[int]] = [[] for _ in ops]
    for var_id, index in last_reader.items():
        if var_id in defined_here and var_id not in kept:
            free_after[index].append(var_id)
    for index, op in enumerate(ops):
        for var in op.outputs:
            if id(var) not in last_reader and id(var) not in kept:
                free_after[index].append(id(var))
    kernels = [kernel_for(op) for op in ops]
    inplace = _inplace_kernels(ops, kernels, reads, inputs, free_after)
    steps = tuple(
        Step(
            op=op,
            kernel=kernels[index],
            outputs=tuple(
                (id(v), _compute_dtype(v), storage_dtype(v) == np.float16) for v in op.outputs
            ),
            free_after=tuple(free_after[index]),
            inplace=inplace[index],
        )
        for index, op in enumerate(ops)
    )
    nested = {
        id(op): tuple(plan_block(inner, kernel_for) for inner in op.blocks) for op in ops if op.blocks
    }
    return BlockPlan(
        inputs=tuple(inputs),
        steps=steps,
        outputs=tuple(outputs),
        owned_outputs=tuple(var_id for var_id in outputs if var_id in defined_here),
        nested=nested,
    )


def plan_block(block: Block, kernel_for: KernelFor) -> BlockPlan:
    """Every op of ``block`` in order; its inputs bound by the caller, its outputs kept."""
    return _plan(
        list(block.operations),
        [id(v) for v in block_inputs(block)],
        [id(v) for v in block.outputs],
        kernel_for,
    )


@attrs.frozen
class PartialPlan:
    """A plan that computes ``targets`` from ``given`` values; ``needed_inputs`` are the
    function inputs (by name) it reads."""

    plan: BlockPlan
    needed_inputs: tuple[str, ...]


def plan_partial(
    function: Function,
    targets: Sequence[Var],
    given: Iterable[Var],
    kernel_for: KernelFor,
) -> PartialPlan:
    """The top-level ops of ``function`` that ``targets`` need when ``given`` values are bound.

    Walks back from each target through the producers of what it reads, stopping at given
    values and at function inputs (which become ``needed_inputs``). The ops keep program order.
    """
    producer = {id(v): op for op in function.operations for v in op.outputs}
    input_names = {id(var): name for name, var in function.inputs.items()}
    given_ids = {id(v) for v in given}
    chosen: set[int] = set()
    needed: set[int] = set()
    pending = [id(v) for v in targets]
    seen: set[int] = set()
    while pending:
        var_id = pending.pop()
        if var_id in seen:
            continue
        seen.add(var_id)
        if var_id in given_ids:
            continue
        if var_id in input_names:
            needed.add(var_id)
            continue
        op = producer.get(var_id)
        if op is None or id(op) in chosen:
            continue
        chosen.add(id(op))
        pending.extend(_reads(op))
    ops = [op for op in function.operations if id(op) in chosen]
    bound = [var_id for var_id in given_ids] + sorted(needed)
    plan = _plan(ops, bound, [id(v) for v in targets], kernel_for)
    names = tuple(name for var_id, name in input_names.items() if var_id in needed)
    return PartialPlan(plan=plan, needed_inputs=names)


def live_before(function: Function, names: Iterable[str], skip: frozenset[str]) -> list[Var]:
    """The values to bind (``start``) to re-run ``function`` from the first top-level op that
    reads any value named in ``names`` (for a value inside a nested block: the top-level op that
    owns the block): those defined by earlier top-level ops, not of an op
    type in ``skip`` (consts: cheap to recompute, and an override must still reach them), and
    read at or after that op or returned by the function. Function inputs are not included.
    """
    wanted = set(names)
    ops = list(function.operations)
    position = {id(op): index for index, op in enumerate(ops)}
    # a value defined inside a nested block is first needed by the top-level op owning that block
    defining = [op for op in walk(function) if any(str(v.name) in wanted for v in op.outputs)]
    owners = [position[id(_top_level(op, position))] for op in defining if id(op) not in position]
    wanted_ids = {id(v) for op in ops for v in op.outputs if str(v.name) in wanted}
    readers = (i for i, op in enumerate(ops) if _reads(op) & wanted_ids)
    first = min(owners + [next(readers, len(ops))])
    later: set[int] = {id(v) for v in function.outputs}
    for op in ops[first:]:
        later.update(_reads(op))
    return [
        v for op in ops[:first] if op.op_type not in skip for v in op.outputs if id(v) in later
    ]


def _top_level(op: Operation, position: Mapping[int, int]) -> Operation:
    """The top-level op of the function that holds ``op`` (itself, or the owner of its block)."""
    while id(op) not in position:
        op = op.enclosing_block.outer_op
    return op
