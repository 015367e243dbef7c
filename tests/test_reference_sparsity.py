"""Sparsity end to end: a program our passes rewrote computes exactly what the dense program
computes with its weights replaced by the pruned arrays.

For each pass and config, in the iOS16 (packed uint8 mask + shape) and iOS18 (uint1 mask)
forms: convert a zoo model with the pass appended to ``ct.PassPipeline.DEFAULT`` (sparse) and
without it (dense); in the dense program, write every sparse op's materialized value into the
const it replaced (same name without the ``_sparse`` suffix); evaluate both with the reference
evaluator on random inputs and require bit-identical outputs (``np.array_equal``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import coremltools as ct  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402

import _zoo  # noqa: E402
import mil_sparsity as ms  # noqa: E402
from _models import SPARSE_OP, check_sparse_form  # noqa: E402
from mil_sparsity import reference  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

# weight_threshold=0: every float weight qualifies, small CNN and LSTM weights included.
# Random-init transformer weights are N(0, 0.02); the CNN's are uniform within +-1/sqrt(fan_in).
PASSES = [
    pytest.param(
        ms.PRUNE_BY_THRESHOLD,
        ms.ThresholdConfig(threshold=0.02, minimum_sparsity_percentile=0.05, weight_threshold=0),
        id="threshold",
    ),
    pytest.param(ms.PRUNE_BY_MAGNITUDE, ms.MagnitudeConfig(target_sparsity=0.6, weight_threshold=0), id="magnitude"),
    pytest.param(
        ms.PRUNE_BY_MAGNITUDE, ms.BlockConfig(target_sparsity=0.5, block_size=4, weight_threshold=0), id="block"
    ),
    pytest.param(ms.PRUNE_BY_MAGNITUDE, ms.NMConfig(n=2, m=4, weight_threshold=0), id="n_m"),
]
TARGETS = [pytest.param(ct.target.iOS16, id="iOS16"), pytest.param(ct.target.iOS18, id="iOS18")]
# structured configs apply to conv/linear weights only: the LSTM model gets the unstructured ones
CASES = [
    pytest.param(family, *p.values, id=f"{family}-{p.id}")
    for family in ("bert", "cnn", "lstm")
    for p in PASSES
    if family != "lstm" or p.id in ("threshold", "magnitude")
]


def convert_with_pass(family: str, target: Any, pass_name: str, config: Any) -> Any:
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(pass_name)
    pipeline.set_options(pass_name, {"config": config})
    return _zoo.build(family).convert(target, ct.precision.FLOAT16, pass_pipeline=pipeline)


def replace_const(const_op: Any, value: np.ndarray) -> None:
    """Swap ``const_op`` for a const holding ``value`` (same dtype and shape) in place."""
    block = const_op.enclosing_block
    with block:
        new_var = mb.const(val=value, before_op=const_op, name=f"{const_op.name}_pruned")
    block.replace_uses_of_var_after_op(anchor_op=new_var.op, old_var=const_op.outputs[0], new_var=new_var)
    block.remove_ops([const_op])


def densify_with_pruned_weights(dense_program: Any, sparse_program: Any, ios18: bool) -> int:
    """Write every sparse op's materialized weight into the dense program's matching const;
    check on the way that the kept values are the dense ones. Returns the number of weights
    pruning changed (a const that was all zeros, e.g. an LSTM's initial state, may be packed
    too: it is replaced but not counted)."""
    dense_consts = {
        op.name: op
        for function in dense_program.functions.values()
        for op in _zoo.iter_ops(function)
        if op.op_type == "const"
    }
    changed = 0
    for function in sparse_program.functions.values():
        for op in list(_zoo.iter_ops(function)):
            if op.op_type != SPARSE_OP:
                continue
            check_sparse_form(op, ios18=ios18)
            assert op.name.endswith("_sparse"), op.name
            const_op = dense_consts[op.name[: -len("_sparse")]]
            original = np.asarray(const_op.outputs[0].val)
            pruned = np.asarray(op.materialized_val_inference())
            assert pruned.dtype == original.dtype and pruned.shape == original.shape, op.name
            kept = pruned != 0
            assert np.array_equal(pruned[kept], original[kept]), f"{op.name}: kept values changed"
            replace_const(const_op, pruned)
            changed += int(np.count_nonzero(original[~kept]) > 0)
    return changed


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family, pass_name, config", CASES)
def test_sparse_program_evaluates_exactly_like_dense_program_with_pruned_weights(family, pass_name, config, target):
    zoo = _zoo.build(family)
    sparse_model = convert_with_pass(family, target, pass_name, config)
    dense_model = _zoo.converted(family, target, ct.precision.FLOAT16)

    # a fresh dense program to edit (the cached conversion stays untouched)
    pruned_dense_program = zoo.convert(target, ct.precision.FLOAT16)._mil_program
    changed = densify_with_pruned_weights(
        pruned_dense_program, sparse_model._mil_program, ios18=target >= ct.target.iOS18
    )
    assert changed >= 2, f"pruning changed only {changed} weights"
    assert SPARSE_OP not in _zoo.op_types(pruned_dense_program)

    sparse_eval = reference.ReferenceEvaluator(sparse_model)
    pruned_dense_eval = reference.ReferenceEvaluator(pruned_dense_program)
    dense_eval = reference.ReferenceEvaluator(dense_model)
    for seed in (1, 2):
        inputs = zoo.random_inputs(seed)
        sparse_out = sparse_eval(inputs)
        pruned_out = pruned_dense_eval(inputs)
        dense_out = dense_eval(inputs)
        assert set(sparse_out) == set(pruned_out) == set(zoo.output_names)
        for name in zoo.output_names:
            assert np.array_equal(sparse_out[name], pruned_out[name]), (
                f"{name}: max |sparse - dense with pruned weights| = "
                f"{np.abs(sparse_out[name] - pruned_out[name]).max()}"
            )
        # the premise: pruning changed what the model computes
        assert any(not np.array_equal(sparse_out[n], dense_out[n]) for n in zoo.output_names)
