"""Graph rewrites of the three passes on mb.program programs."""

from __future__ import annotations

from typing import Any, Callable

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private
from mil_sparsity.model import pymil as _graph
from mil_sparsity.plan import rules

from _mil_helpers import (
    bits,
    find_op,
    materialized,
    ref_block,
    ref_magnitude,
    ref_n_m,
    ref_threshold,
    run_pass,
    snapshot,
    sparse_ops,
    weight_of,
)

MAG = ms.PRUNE_BY_MAGNITUDE
THR = ms.PRUNE_BY_THRESHOLD
PACK = ms.SPARSE_PACK
TARGETS = [ct.target.iOS16, ct.target.iOS17, ct.target.iOS18]


def random_weight(shape: tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # distinct magnitudes (tie-free) so every reference rule has one answer
    values = rng.permutation(np.arange(1, int(np.prod(shape)) + 1)).astype(np.float64)
    signs = rng.choice([-1.0, 1.0], size=values.size)
    return (values * signs / values.size).reshape(shape).astype(dtype)


def linear_program(weight: np.ndarray, target: Any, name: str = "fc") -> Any:
    dtype = types.fp16 if weight.dtype == np.float16 else types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, weight.shape[1]), dtype=dtype)], opset_version=target)
    def prog(x: Any) -> Any:
        return mb.linear(x=x, weight=weight, name=name)

    return prog


def conv_program(weight: np.ndarray, target: Any) -> Any:
    dtype = types.fp16 if weight.dtype == np.float16 else types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, weight.shape[1], 9, 9), dtype=dtype)], opset_version=target)
    def prog(x: Any) -> Any:
        return mb.conv(x=x, weight=weight, name="conv")

    return prog


CASES: list[tuple[str, str, Any, Callable[[np.ndarray], np.ndarray]]] = [
    ("magnitude", MAG, ms.MagnitudeConfig(0.6, weight_threshold=0), lambda w: ref_magnitude(w, 0.6)),
    ("threshold", THR, ms.ThresholdConfig(0.3, 0.1, weight_threshold=0), lambda w: ref_threshold(w, 0.3)),
    ("n_m", MAG, ms.NMConfig(2, 4, dim=1, weight_threshold=0), lambda w: ref_n_m(w, 2, 4, 1)),
    ("n_m_dim0", MAG, ms.NMConfig(3, 4, dim=0, weight_threshold=0), lambda w: ref_n_m(w, 3, 4, 0)),
    ("block", MAG, ms.BlockConfig(0.5, 3, dim=0, weight_threshold=0), lambda w: ref_block(w, 0.5, 3, 0)),
    ("block_dim1", MAG, ms.BlockConfig(0.5, 4, dim=-1, weight_threshold=0), lambda w: ref_block(w, 0.5, 4, 1)),
]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_linear_weight_materializes_to_reference(case: Any, dtype: Any, target: Any) -> None:
    _, pass_name, config, reference = case
    weight = random_weight((13, 37), dtype)  # neither dim a multiple of 8, 4 or 3
    prog = linear_program(weight, target)
    report = run_pass(prog, pass_name, config)
    [op] = sparse_ops(prog)
    dense = private.materialized_value(op)
    assert dense.dtype == dtype and dense.shape == weight.shape
    np.testing.assert_array_equal(bits(dense), bits(reference(weight)))
    assert weight_of(find_op(prog, "fc")) is not None
    [record] = [r for r in report.records if r.packed]
    assert record.sparsity == pytest.approx(float((dense == 0).mean()))
    assert record.packed_bytes == int((dense != 0).sum()) * weight.itemsize + (weight.size + 7) // 8


@pytest.mark.parametrize("target", [ct.target.iOS16, ct.target.iOS18], ids=lambda t: t.name)
def test_op_form_follows_opset(target: Any) -> None:
    weight = random_weight((5, 3, 3, 3), np.float16)
    prog = conv_program(weight, target)
    run_pass(prog, MAG, ms.MagnitudeConfig(0.5, weight_threshold=0))
    [op] = sparse_ops(prog)
    expected_mask = ref_magnitude(weight, 0.5) != 0
    if target >= ct.target.iOS18:
        assert set(op.inputs) == {"nonzero_data", "mask"}
        assert op.mask.dtype == types.uint1 and op.mask.shape == weight.shape
        np.testing.assert_array_equal(op.mask.val.astype(bool), expected_mask)
    else:
        assert set(op.inputs) == {"nonzero_data", "mask", "shape"}
        assert op.mask.dtype == types.uint8 and op.mask.shape == ((weight.size + 7) // 8,)
        np.testing.assert_array_equal(op.shape.val, np.array(weight.shape, dtype=np.uint32))
        # bits little-endian in row-major order, padding bits zero
        expected = np.packbits(expected_mask.ravel(), bitorder="little")
        np.testing.assert_array_equal(op.mask.val, expected)
    assert op.nonzero_data.dtype == types.fp16


def test_ios15_program_raises_with_fix() -> None:
    prog = linear_program(random_weight((64, 64), np.float32), ct.target.iOS15)
    before = snapshot(prog)
    with pytest.raises(ValueError, match="minimum_deployment_target=ct.target.iOS16"):
        run_pass(prog, PACK)
    assert snapshot(prog) == before


def test_prune_by_magnitude_without_config_raises() -> None:
    prog = linear_program(random_weight((64, 64), np.float32), ct.target.iOS18)
    with pytest.raises(ValueError, match="no default sparsity"):
        run_pass(prog, MAG)


@pytest.mark.parametrize(
    "pass_name, config",
    [(THR, ms.MagnitudeConfig(0.5)), (MAG, ms.ThresholdConfig()), (PACK, ms.NMConfig(2, 4)),
     (MAG, ms.OpSelector(op_name_configs={"x": ms.PackConfig()}))],
)
def test_config_of_wrong_kind_raises(pass_name: str, config: Any) -> None:
    prog = linear_program(random_weight((64, 64), np.float32), ct.target.iOS18)
    with pytest.raises(ValueError, match="takes"):
        run_pass(prog, pass_name, config)


def test_weight_threshold_is_strict() -> None:
    at_threshold = random_weight((8, 8), np.float32)
    prog = linear_program(at_threshold, ct.target.iOS18)
    report = run_pass(prog, MAG, ms.MagnitudeConfig(0.5, weight_threshold=64))
    assert not sparse_ops(prog)
    assert "64 elements <= weight_threshold 64" in report.records[0].reason
    prog = linear_program(at_threshold, ct.target.iOS18)
    run_pass(prog, MAG, ms.MagnitudeConfig(0.5, weight_threshold=63))
    assert len(sparse_ops(prog)) == 1


def test_threshold_below_minimum_sparsity_leaves_weight_untouched() -> None:
    weight = random_weight((32, 32), np.float32)
    prog = linear_program(weight, ct.target.iOS18)
    before = snapshot(prog)
    report = run_pass(prog, THR, ms.ThresholdConfig(threshold=0.1, minimum_sparsity_percentile=0.5, weight_threshold=0))
    assert snapshot(prog) == before
    [record] = [r for r in report.records if r.name.startswith("fc_weight")]
    assert record.decision == "skipped" and "minimum_sparsity_percentile" in record.reason
    assert record.sparsity == pytest.approx(float((np.abs(weight) <= 0.1).mean()))


# iOS17 is the first opset whose cast reads int8/uint8; it still uses the iOS16 sparse form
@pytest.mark.parametrize("target", [ct.target.iOS17, ct.target.iOS18], ids=lambda t: t.name)
@pytest.mark.parametrize("dtype, break_even", [(np.float16, 1 / 16), (np.float32, 1 / 32), (np.int8, 1 / 8), (np.uint8, 1 / 8)])
def test_sparse_pack_break_even(dtype: Any, break_even: float, target: Any) -> None:
    size = 64 * 64
    base = np.arange(1, size + 1).reshape(64, 64) % 100 + 1
    for zeros, packs in [(int(size * break_even) - 8, False), (int(size * break_even) + 8, True)]:
        weight = base.astype(dtype)
        weight.ravel()[:zeros] = 0

        @mb.program(input_specs=[mb.TensorSpec(shape=(64, 64))], opset_version=target)
        def prog(x: Any) -> Any:
            return mb.add(x=x, y=mb.cast(x=mb.const(val=weight, name="w"), dtype="fp32"))

        report = run_pass(prog, PACK, ms.PackConfig(weight_threshold=0))
        [record] = report.records
        assert record.packed is packs, record.reason
        if packs:
            [op] = sparse_ops(prog)
            np.testing.assert_array_equal(private.materialized_value(op), weight)
            assert record.packed_bytes < record.dense_bytes


def test_pruning_passes_skip_int8_with_reason() -> None:
    weight = (np.arange(64 * 64).reshape(64, 64) % 50).astype(np.int8)

    @mb.program(input_specs=[mb.TensorSpec(shape=(64, 64))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        return mb.add(x=x, y=mb.cast(x=mb.const(val=weight, name="w"), dtype="fp32"))

    report = run_pass(prog, MAG, ms.MagnitudeConfig(0.5))
    assert not sparse_ops(prog)
    assert "dtype int8" in report.records[0].reason


def shared_const_program(weight: np.ndarray, extra: np.ndarray | None = None) -> Any:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, weight.shape[1]))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        if extra is not None:
            x = mb.linear(x=x, weight=extra, name="first")
        w = mb.const(val=weight, name="shared_w")
        a = mb.linear(x=x, weight=w, name="lin_a")
        b = mb.matmul(x=x, y=w, transpose_y=True, name="mm_b")
        return mb.add(x=a, y=b)

    return prog


def test_shared_const_same_config_gets_one_sparse_op() -> None:
    weight = random_weight((64, 64), np.float32)
    prog = shared_const_program(weight)
    run_pass(prog, MAG, ms.NMConfig(2, 4))
    [op] = sparse_ops(prog)
    assert {child.name for child in op.outputs[0].child_ops} == {"lin_a", "mm_b"}
    np.testing.assert_array_equal(private.materialized_value(op), ref_n_m(weight, 2, 4, 1))


def test_shared_const_conflict_raises_and_changes_nothing() -> None:
    weight = random_weight((64, 64), np.float32)
    prog = shared_const_program(weight, extra=random_weight((64, 64), np.float32, seed=1))
    before = snapshot(prog)
    selector = ms.OpSelector(
        global_config=ms.MagnitudeConfig(0.5),  # "first" would be pruned before the conflict
        op_type_configs={"matmul": ms.MagnitudeConfig(0.75)},
    )
    with pytest.raises(ValueError, match="lin_a.*mm_b|mm_b.*lin_a"):
        run_pass(prog, MAG, selector)
    assert snapshot(prog) == before
    # naming the const resolves the conflict
    selector = ms.OpSelector(
        global_config=ms.MagnitudeConfig(0.5),
        op_type_configs={"matmul": ms.MagnitudeConfig(0.75)},
        op_name_configs={"shared_w": ms.MagnitudeConfig(0.25)},
    )
    run_pass(prog, MAG, selector)
    assert len(sparse_ops(prog)) == 2


def test_const_feeding_block_output_is_skipped() -> None:
    weight = random_weight((64, 64), np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        w = mb.const(val=weight, name="out_w")
        return mb.relu(x=x), w

    report = run_pass(prog, PACK, ms.PackConfig(minimum_sparsity_percentile=0.0, weight_threshold=0))
    assert not sparse_ops(prog)
    assert report.records[0].reason == "feeds a block output directly"


def test_consts_in_cond_and_while_bodies_are_packed() -> None:
    w_true, w_false, w_loop = (random_weight((64, 64), np.float32, seed=s) for s in (1, 2, 3))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        pred = mb.greater(x=mb.reduce_sum(x=x), y=0.0)
        y = mb.cond(
            pred=pred,
            _true_fn=lambda: mb.linear(x=x, weight=w_true, name="in_true"),
            _false_fn=lambda: mb.linear(x=x, weight=w_false, name="in_false"),
        )
        _, z = mb.while_loop(
            _cond=lambda i, v: mb.less(x=i, y=3.0),
            _body=lambda i, v: (mb.add(x=i, y=1.0), mb.linear(x=v, weight=w_loop, name="in_loop")),
            loop_vars=(mb.const(val=0.0), y),
        )
        return z

    run_pass(prog, MAG, ms.MagnitudeConfig(0.5))
    assert len(sparse_ops(prog)) == 3
    for name, weight in [("in_true", w_true), ("in_false", w_false), ("in_loop", w_loop)]:
        np.testing.assert_array_equal(weight_of(find_op(prog, name)), ref_magnitude(weight, 0.5))
    prog.validate()


def two_function_program() -> Any:
    progs = [linear_program(random_weight((64, 64), np.float16, seed=s), ct.target.iOS18, name=f"fc{s}") for s in (1, 2)]
    progs[0].add_function("second", progs[1].functions["main"])
    return progs[0]


def test_every_function_is_visited() -> None:
    prog = two_function_program()
    report = run_pass(prog, MAG, ms.MagnitudeConfig(0.5))
    assert {r.function for r in report.packed} == {"main", "second"}
    assert len(sparse_ops(prog)) == 2


def test_running_twice_changes_nothing_the_second_time() -> None:
    prog = conv_program(random_weight((16, 8, 3, 3), np.float16), ct.target.iOS16)
    run_pass(prog, MAG, ms.MagnitudeConfig(0.5, weight_threshold=0))
    assert len(sparse_ops(prog)) == 1
    after_first = snapshot(prog)
    report = run_pass(prog, MAG, ms.MagnitudeConfig(0.5, weight_threshold=0))
    assert snapshot(prog) == after_first
    assert not report.packed
    assert any("already feeds constexpr_sparse_to_dense" in r.reason for r in report.records)


def test_empty_program_is_a_no_op() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        return mb.relu(x=x)

    before = snapshot(prog)
    report = run_pass(prog, PACK)
    assert snapshot(prog) == before and len(report) == 0


def test_structured_configs_default_scope() -> None:
    weight = random_weight((64, 64), np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(64, 64))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        return mb.add(x=x, y=mb.const(val=weight, name="bias_like"))

    report = run_pass(prog, MAG, ms.NMConfig(2, 4))
    assert not sparse_ops(prog) and "select this const by name" in report.records[0].reason
    run_pass(prog, MAG, ms.OpSelector(op_name_configs={"bias_like": ms.NMConfig(2, 4, dim=1)}))
    np.testing.assert_array_equal(private.materialized_value(sparse_ops(prog)[0]), ref_n_m(weight, 2, 4, 1))


def test_n_m_dim_shorter_than_m_is_skipped_with_reason() -> None:
    prog = linear_program(random_weight((64, 3), np.float32), ct.target.iOS18)
    report = run_pass(prog, MAG, ms.NMConfig(2, 4, weight_threshold=0))
    assert not sparse_ops(prog)
    assert "fewer than m=4" in report.records[0].reason


def test_dim_out_of_range_raises_before_any_change() -> None:
    prog = linear_program(random_weight((64, 64), np.float32), ct.target.iOS18)
    before = snapshot(prog)
    with pytest.raises(ValueError, match=r"BlockConfig.dim=2 .*\[-2, 1\]"):
        run_pass(prog, MAG, ms.BlockConfig(0.5, 4, dim=2))
    assert snapshot(prog) == before


def selector_program() -> Any:
    weights = {name: random_weight((64, 64), np.float32, seed=i) for i, name in enumerate(["enc_a", "enc_b", "dec", "head"])}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        x = mb.linear(x=x, weight=mb.const(val=weights["enc_a"], name="enc_a_w"), name="encoder_a")
        x = mb.linear(x=x, weight=mb.const(val=weights["enc_b"], name="enc_b_w"), name="encoder_b")
        x = mb.matmul(x=x, y=mb.const(val=weights["dec"], name="dec_w"), name="decoder")
        return mb.linear(x=x, weight=mb.const(val=weights["head"], name="head_w"), name="head")

    return prog


def test_selector_precedence_name_then_glob_then_type_then_global() -> None:
    prog = selector_program()
    selector = ms.OpSelector(
        global_config=ms.MagnitudeConfig(0.25),
        op_type_configs={"matmul": ms.MagnitudeConfig(0.5), "linear": ms.MagnitudeConfig(0.125)},
        op_name_configs={"encoder_*": ms.MagnitudeConfig(0.75), "encoder_b": ms.MagnitudeConfig(0.625), "head_w": None},
    )
    report = run_pass(prog, MAG, selector)
    sparsity = {r.name: r.sparsity for r in report.packed}
    assert sparsity == {"enc_a_w": 0.75, "enc_b_w": 0.625, "dec_w": 0.5}
    head = next(r for r in report.records if r.name == "head_w")
    assert head.decision == "skipped" and "op_name_configs['head_w'] is None" in head.reason


def test_failure_in_a_kernel_leaves_program_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    prog = selector_program()
    before = snapshot(prog)
    calls = {"n": 0}
    real = rules.run_handler

    def flaky(weight: Any, config: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("kernel exploded")
        return real(weight, config)

    monkeypatch.setattr(rules, "run_handler", flaky)
    with pytest.raises(RuntimeError, match="kernel exploded"):
        run_pass(prog, MAG, ms.MagnitudeConfig(0.5))
    assert snapshot(prog) == before


@pytest.mark.parametrize("fail_at", ["build", "rewire"])
def test_failure_during_rewrite_is_rolled_back(monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    prog = selector_program()
    before = snapshot(prog)
    calls = {"n": 0}
    if fail_at == "build":
        real_build = _graph.build_sparse_op

        def flaky_build(*args: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("op creation failed")
            return real_build(*args)

        monkeypatch.setattr(_graph, "build_sparse_op", flaky_build)
    else:
        from coremltools.converters.mil.mil.block import Block

        real_replace = Block.replace_uses_of_var_after_op

        def flaky_replace(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("rewire failed")
            return real_replace(self, *args, **kwargs)

        monkeypatch.setattr(Block, "replace_uses_of_var_after_op", flaky_replace)
    with pytest.raises(RuntimeError, match="failed"):
        run_pass(prog, MAG, ms.MagnitudeConfig(0.5))
    monkeypatch.undo()
    assert snapshot(prog) == before
    prog.validate()
    # and the pass still works on the restored program
    run_pass(prog, MAG, ms.MagnitudeConfig(0.5))
    assert len(sparse_ops(prog)) == 4


def test_report_to_dict_has_every_field() -> None:
    prog = selector_program()
    report = run_pass(prog, MAG, ms.MagnitudeConfig(0.5))
    data = report.to_dict()
    record = data["records"][0]
    for key in ["name", "shape", "dtype", "consumer_types", "config", "sparsity", "dense_bytes", "packed_bytes", "decision", "reason", "function", "pass_name"]:
        assert key in record
    assert record["config"] == {"kind": "magnitude", "target_sparsity": 0.5, "weight_threshold": 2048, "scoring": "magnitude", "method": "prune"}
    assert data["totals"]["packed"] == 4
    assert materialized(prog)


def three_layer_ios16_program() -> Any:
    weights = [random_weight((64, 64), np.float16, seed=s) for s in range(3)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64), dtype=types.fp16)], opset_version=ct.target.iOS16)
    def prog16(x: Any) -> Any:
        for index, weight in enumerate(weights):
            x = mb.linear(x=x, weight=weight, name=f"l{index}")
        return x

    return prog16


def count_ios16_op_builds(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Observe (not change) coremltools' iOS16 sparse op type inference, which counts the
    mask bits in a Python loop every time it runs."""
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_sparse_to_dense

    calls = {"n": 0}
    real = constexpr_sparse_to_dense.type_inference

    def counting(self: Any) -> Any:
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(constexpr_sparse_to_dense, "type_inference", counting)
    return calls


def test_ios16_op_is_built_once_per_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_ios16_op_builds(monkeypatch)
    prog16 = three_layer_ios16_program()
    run_pass(prog16, MAG, ms.MagnitudeConfig(0.5))
    assert calls["n"] == 3
    prog16.validate()
    assert calls["n"] == 3


def test_ios16_op_built_once_per_weight_through_apply_pipeline_and_save(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    model = ct.convert(three_layer_ios16_program(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
    calls = count_ios16_op_builds(monkeypatch)
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(MAG)
    pipeline.set_options(MAG, {"config": ms.MagnitudeConfig(0.5)})
    ms.apply_pipeline(model, pipeline).save(str(tmp_path / "out.mlpackage"))
    assert calls["n"] == 3


def test_structured_configs_apply_to_conv_transpose_weights_by_default() -> None:
    weight = random_weight((16, 8, 3, 3), np.float32)  # conv_transpose weight: [C_in, C_out / groups, kH, kW]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16, 5, 5))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        return mb.conv_transpose(x=x, weight=mb.const(val=weight, name="deconv_w"), name="deconv")

    run_pass(prog, MAG, ms.NMConfig(2, 4, dim=1, weight_threshold=0))
    [op] = sparse_ops(prog)
    np.testing.assert_array_equal(private.materialized_value(op), ref_n_m(weight, 2, 4, 1))


def test_apply_returns_what_changed() -> None:
    """A pass's apply returns a PassResult (modified, one record per weight), as onnx-ir's do."""
    from coremltools.converters.mil import Builder as mb

    from mil_sparsity.passes import PassResult, PruneByMagnitude

    weight = np.arange(1, 65, dtype=np.float32).reshape(8, 8)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8))], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.linear(x=x, weight=mb.const(val=weight, name="w"), name="fc")

    graph_pass = PruneByMagnitude()
    graph_pass.config = ms.MagnitudeConfig(target_sparsity=0.5, weight_threshold=0)
    result = graph_pass.apply(prog)
    assert isinstance(result, PassResult) and result.modified and result.packed == ("w",)
    again = PruneByMagnitude()
    again.config = ms.MagnitudeConfig(target_sparsity=0.5, weight_threshold=0)
    second = again.apply(prog)  # nothing left to prune: the const now feeds a constexpr op
    assert not second.modified and second.packed == ()
