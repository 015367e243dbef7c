"""Ops that own blocks: ``cond`` and ``while_loop``.

A block kernel gets the op's input values and ``run_block(index, block_inputs)``, which
evaluates the op's ``index``-th block on the given block-input values and returns the block's
output values; the kernel returns the op's output values.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

RunBlock = Callable[[int, Sequence[Any]], list[Any]]
BlockKernel = Callable[[Mapping[str, Any], RunBlock], Sequence[Any]]


def _cond(args: Mapping[str, Any], run_block: RunBlock) -> Sequence[Any]:
    """Block 0 when ``pred`` is true, block 1 otherwise; the op's outputs are its outputs."""
    return run_block(0 if bool(np.asarray(args["pred"]).item()) else 1, ())


def _while_loop(args: Mapping[str, Any], run_block: RunBlock) -> Sequence[Any]:
    """Block 0 (cond) decides, block 1 (body) maps loop vars to loop vars; the final loop vars
    are the op's outputs."""
    loop_vars: list[Any] = list(args["loop_vars"])
    while bool(np.asarray(run_block(0, loop_vars)[0]).item()):
        loop_vars = run_block(1, loop_vars)
    return loop_vars


BLOCK_OPS: dict[str, BlockKernel] = {"cond": _cond, "while_loop": _while_loop}
