"""collect_activation_stats on small MIL programs, against activations computed by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

import coremltools as ct
import coremltools.optimize.coreml as cto
from mil_sparsity.calibration import ActivationStats, collect_activation_stats

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((6, 4)).astype(np.float32)        # linear weight [out, in]
W2 = RNG.standard_normal((5, 6)).astype(np.float32)        # matmul y, transpose_y: [out, in]
W3 = RNG.standard_normal((5, 6)).astype(np.float32)        # matmul x const: [m, k]
WC = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)  # grouped conv, groups=2, C_in=2


def _program():
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(2, 3, 4)), mb.TensorSpec(shape=(1, 2, 5, 5))],
        opset_version=ct.target.iOS16,
    )
    def prog(x, img):
        h = mb.linear(x=x, weight=mb.const(val=W1, name="w1"), name="lin")
        h = mb.relu(x=h, name="act")
        y = mb.matmul(x=h, y=mb.const(val=W2, name="w2"), transpose_y=True, name="mm")
        z = mb.matmul(x=mb.const(val=W3, name="w3"), y=mb.transpose(x=h, perm=[0, 2, 1]), name="mm2")
        c = mb.conv(x=img, weight=mb.const(val=WC, name="wc"), groups=2, name="conv")
        return y, z, c

    return prog


def _samples(n):
    return [
        {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32),
         "img": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)}
        for _ in range(n)
    ]


def test_statistics_match_hand_computed_activations(tmp_path):
    prog = _program()
    samples = _samples(3)
    stats = collect_activation_stats(prog, samples)
    xs = np.concatenate([s["x"].reshape(-1, 4) for s in samples]).astype(np.float64)
    hs = np.maximum(xs @ W1.T.astype(np.float64), 0)
    imgs = np.concatenate([s["img"] for s in samples]).astype(np.float64)

    def check(name, sums, rows):
        entry = stats.get(name)
        assert entry is not None, name
        np.testing.assert_allclose(entry.sum_squares, sums, rtol=1e-4)
        assert entry.rows == rows

    check("w1", (xs**2).sum(0), 18)
    check("w2", (hs**2).sum(0), 18)                 # contracted axis of h: its last
    check("w3", (hs**2).sum(0), 18)                 # y = h^T: contracted axis -2 = h's channels
    check("wc", (imgs**2).sum((0, 2, 3)), 3 * 25)   # per input channel, over batch and space
    assert len(stats) == 4
    path = tmp_path / "stats.npz"
    stats.save(path)
    assert set(ActivationStats.load(path)) == set(stats)


def test_statistics_accumulate_and_need_samples():
    prog = _program()
    samples = _samples(2)
    once = collect_activation_stats(prog, samples)
    twice = collect_activation_stats(prog, samples, stats=collect_activation_stats(prog, samples))
    np.testing.assert_allclose(twice.get("w1").sum_squares, 2 * once.get("w1").sum_squares)
    with pytest.raises(ValueError, match="at least one"):
        collect_activation_stats(prog, [])


def test_weights_behind_constexpr_ops_use_their_source_name():
    import mil_sparsity as ms
    from mil_sparsity.posthoc import apply_pipeline  # noqa: F401  (registers passes)

    prog = _program()
    samples = _samples(2)
    dense = collect_activation_stats(prog, samples)
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(
        ms.PRUNE_BY_MAGNITUDE, {"config": ms.MagnitudeConfig(target_sparsity=0.5, weight_threshold=0)}
    )
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager

    PassPipelineManager.apply_pipeline(prog, pipeline)
    types_ = {op.op_type for op in prog.functions["main"].operations}
    assert "constexpr_sparse_to_dense" in types_
    sparse = collect_activation_stats(prog, samples)
    assert set(sparse) == set(dense)
    np.testing.assert_allclose(sparse.get("w1").sum_squares, dense.get("w1").sum_squares)


# ---- jointly compressed models (sparse_pack(joint_compression=True)) --------------------------

def _half_zero(shape: tuple[int, ...], seed: int) -> np.ndarray:
    weight = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    weight[np.abs(weight) < np.quantile(np.abs(weight), 0.5)] = 0
    return weight


def _dense_ios18_model() -> Any:
    first, second = _half_zero((32, 64), 1), _half_zero((16, 32), 2)

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 64))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        h = mb.relu(x=mb.linear(x=x, weight=mb.const(val=first, name="w1"), name="fc1"))
        return mb.linear(x=h, weight=mb.const(val=second, name="w2"), name="fc2")

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)


@pytest.mark.parametrize(
    "compress, joint_op",
    [
        (lambda m: cto.palettize_weights(m, cto.OptimizationConfig(
            global_config=cto.OpPalettizerConfig(nbits=4, mode="kmeans", weight_threshold=0))),
         "constexpr_lut_to_sparse"),
        (lambda m: cto.linear_quantize_weights(m, cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))),
         "constexpr_sparse_blockwise_shift_scale"),
    ],
    ids=["palettized", "quantized"],
)
def test_jointly_compressed_weights_use_the_dense_names(compress: Any, joint_op: str) -> None:
    import mil_sparsity as ms
    from mil_sparsity.posthoc import load_program

    dense = _dense_ios18_model()
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.SPARSE_PACK)
    pipeline.set_options(ms.SPARSE_PACK, {"config": ms.PackConfig(weight_threshold=0), "joint_compression": True})
    joint = ms.apply_pipeline(compress(dense), pipeline)
    assert sum(op.op_type == joint_op for op in load_program(joint).functions["main"].operations) == 2

    samples = [{"x": RNG.standard_normal((4, 64)).astype(np.float32)} for _ in range(2)]
    dense_stats = collect_activation_stats(dense, samples)
    joint_stats = collect_activation_stats(joint, samples)
    assert set(joint_stats) == set(dense_stats) == {("main", "w1_to_fp16"), ("main", "w2_to_fp16")}
    np.testing.assert_allclose(joint_stats.get("w1_to_fp16").sum_squares,
                               dense_stats.get("w1_to_fp16").sum_squares, rtol=1e-6)

    # the pruning pass finds every weight of the dense model in the joint model's statistics
    prune = ct.PassPipeline.EMPTY
    prune.append_pass(ms.PRUNE_BY_MAGNITUDE)
    report = ms.SparsityReport()
    prune.set_options(ms.PRUNE_BY_MAGNITUDE, {
        "config": ms.MagnitudeConfig(0.75, weight_threshold=0, scoring="activation"),
        "calibration": joint_stats,
        "report": report,
    })
    ms.apply_pipeline(dense, prune)
    assert sorted(record.name for record in report.packed) == ["w1_to_fp16", "w2_to_fp16"]
