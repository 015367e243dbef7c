"""Training-time pruning (MagnitudePruner, torch.nn.utils.prune) and joint compression."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import coremltools as ct  # noqa: E402
import coremltools.optimize.coreml as cto  # noqa: E402

import mil_sparsity as ms  # noqa: E402
from mil_sparsity import _coremltools_private as private  # noqa: E402
from mil_sparsity.posthoc import load_program  # noqa: E402

from _mil_helpers import all_ops, bits, one_pass, sparse_ops  # noqa: E402

from _examples import load_example  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "training_time_pruning.py"


example = load_example("training_time_pruning")


def weights_by_consumer(prog: Any) -> dict[str, tuple[str, np.ndarray]]:
    """Consumer op name -> (how the weight is stored, its dense value) for conv/linear weights."""
    out = {}
    for op in all_ops(prog):
        if op.op_type in ("conv", "linear"):
            source = op.inputs["weight"].op
            if source.op_type == "constexpr_sparse_to_dense":
                out[op.name] = ("sparse", private.materialized_value(source))
            else:
                out[op.name] = (source.op_type, op.inputs["weight"].val)
    return out


def expected_fp16(parameter: Any) -> np.ndarray:
    return parameter.detach().numpy().astype(np.float16)


@pytest.mark.parametrize("target", [ct.target.iOS17, ct.target.iOS18], ids=lambda t: t.name)
@pytest.mark.parametrize("granularity", ["per_scalar", "block", "n_m"])
def test_example_magnitude_pruner_weights_arrive_packed_bit_for_bit(granularity: str, target: Any) -> None:
    model = example.train_with_pruner(example.build_model(), example.pruner_config(granularity))
    example.strip_coreml_compression_metadata(model)
    report = ms.SparsityReport()
    mlmodel = example.convert_with_sparse_pack(model, report, target)
    prog = load_program(mlmodel)
    stored = list(weights_by_consumer(prog).values())
    params = [model.conv1.weight, model.conv2.weight, model.fc.weight]
    assert len(stored) == 3
    for (kind, value), parameter in zip(stored, params):
        expected = expected_fp16(parameter)
        zeros = float((expected == 0).mean())
        if parameter.numel() > example.WEIGHT_THRESHOLD and zeros > 1 / 16:
            assert kind == "sparse", (parameter.shape, zeros)
        else:
            assert kind == "const", (parameter.shape, zeros)  # fc: not pruned, stays dense
        np.testing.assert_array_equal(bits(value), bits(expected))
    conv_zeros = float((expected_fp16(model.conv2.weight) == 0).mean())
    assert conv_zeros == pytest.approx(0.75, abs=0.01)
    # named as the saved model names them (the backend renames conv1.weight_to_fp16 after our pass)
    assert {r.name for r in report.packed} == {"conv1_weight_to_fp16", "conv2_weight_to_fp16"}
    assert {f"{r.name}_sparse" for r in report.packed} <= {op.name for op in all_ops(prog)}
    if granularity == "n_m":  # 3 of every 4 along the input channels of conv2
        groups = np.moveaxis(expected_fp16(model.conv2.weight) == 0, 1, -1).reshape(-1, 4)
        assert np.all(groups.sum(axis=1) == 3)


def test_with_coremltools_metadata_kept_sparse_pack_reports_already_packed() -> None:
    model = example.train_with_pruner(example.build_model(), example.pruner_config("per_scalar"))
    report = ms.SparsityReport()
    prog = load_program(example.convert_with_sparse_pack(model, report, ct.target.iOS18))
    assert report.packed == []
    assert any("already feeds constexpr_sparse_to_dense" in r.reason for r in report.records)
    kind, value = weights_by_consumer(prog)[next(iter(weights_by_consumer(prog)))]
    assert kind == "sparse"
    np.testing.assert_array_equal(bits(value), bits(expected_fp16(model.conv1.weight)))


def test_example_runs_as_a_script() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--granularity", "per_scalar"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "conv2_weight_to_fp16" in done.stdout and "packed" in done.stdout


def torch_prune_model(method: str) -> Any:
    from torch.nn.utils import prune

    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 32, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32 * 6 * 6, 64)
    ).eval()
    for module in (model[0], model[3]):
        if method == "l1_unstructured":
            prune.l1_unstructured(module, name="weight", amount=0.6)
        else:
            prune.ln_structured(module, name="weight", amount=0.5, n=2, dim=0)
        prune.remove(module, "weight")
    return model


@pytest.mark.parametrize("target", [ct.target.iOS16, ct.target.iOS18], ids=lambda t: t.name)
@pytest.mark.parametrize("method", ["l1_unstructured", "ln_structured"])
def test_torch_nn_utils_prune_then_sparse_pack(method: str, target: Any) -> None:
    model = torch_prune_model(method)
    traced = torch.jit.trace(model, torch.rand(1, 4, 8, 8))
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(ms.SPARSE_PACK)
    report = ms.SparsityReport()
    pipeline.set_options(ms.SPARSE_PACK, {"config": ms.PackConfig(weight_threshold=512), "report": report})
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(shape=(1, 4, 8, 8))], pass_pipeline=pipeline,
                         minimum_deployment_target=target, convert_to="mlprogram")
    stored = weights_by_consumer(load_program(mlmodel))
    for (kind, value), parameter in zip(stored.values(), (model[0].weight, model[3].weight)):
        assert kind == "sparse"
        np.testing.assert_array_equal(bits(value), bits(expected_fp16(parameter)))
    assert len(report.packed) == 2
    expected_sparsity = 0.6 if method == "l1_unstructured" else 0.5
    assert all(r.sparsity == pytest.approx(expected_sparsity, abs=0.01) for r in report.packed)


# ---- joint compression ----------------------------------------------------------------------

def sparse_linear_model(target: Any) -> Any:
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((128, 256)).astype(np.float32)
    weight[np.abs(weight) < 0.6] = 0  # about 45% zeros, as training-time pruning leaves

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 256))], opset_version=target)
    def prog(x: Any) -> Any:
        return mb.linear(x=x, weight=weight, name="fc")

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target)


def palettized(model: Any, nbits: int = 4, mode: str = "kmeans") -> Any:
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=nbits, mode=mode))
    return cto.palettize_weights(model, config)


def quantized(model: Any) -> Any:
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))
    return cto.linear_quantize_weights(model, config)


def joint_pipeline(report: ms.SparsityReport | None = None, joint: Any = True) -> Any:
    options: dict[str, Any] = {"joint_compression": joint}
    if report is not None:
        options["report"] = report
    return one_pass(ms.SPARSE_PACK, **options)


def decompressed(prog: Any) -> np.ndarray:
    [linear] = [op for op in all_ops(prog) if op.op_type == "linear"]
    source = linear.inputs["weight"].op
    return private.materialized_value(source)


@pytest.mark.parametrize(
    "compress, chain",
    [
        (lambda m: palettized(m, 4), ["constexpr_lut_to_sparse", "constexpr_sparse_to_dense"]),
        (lambda m: palettized(m, 6), ["constexpr_lut_to_sparse", "constexpr_sparse_to_dense"]),
        (quantized, ["constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_to_dense"]),
    ],
    ids=["lut4", "lut6", "int8"],
)
def test_joint_compression_adds_sparse_mask_values_unchanged(compress: Any, chain: list[str], tmp_path: Path) -> None:
    source = compress(sparse_linear_model(ct.target.iOS18))
    before = decompressed(load_program(source))
    report = ms.SparsityReport()
    out = ms.apply_pipeline(source, joint_pipeline(report))
    out.save(str(tmp_path / "joint.mlpackage"))
    prog = load_program(ct.models.MLModel(str(tmp_path / "joint.mlpackage"), skip_model_load=True))
    types_in_order = [op.op_type for op in all_ops(prog) if op.op_type.startswith("constexpr_")]
    assert types_in_order == chain
    after = decompressed(prog)
    np.testing.assert_array_equal(bits(after), bits(before))
    [record] = report.packed
    assert record.sparsity == pytest.approx(float((before == 0).mean()))
    assert record.packed_bytes < record.dense_bytes
    prog.validate()


def test_joint_compression_skips_when_not_sparse_enough() -> None:
    rng = np.random.default_rng(1)
    from coremltools.converters.mil import Builder as mb

    weight = rng.standard_normal((64, 128)).astype(np.float32) + 3.0  # no zeros

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 128))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        return mb.linear(x=x, weight=weight)

    source = palettized(ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18), mode="uniform")
    report = ms.SparsityReport()
    out = load_program(ms.apply_pipeline(source, joint_pipeline(report)))
    assert not sparse_ops(out)
    assert any("break-even" in r.reason for r in report.records)


def test_joint_compression_below_ios18_raises() -> None:
    source = palettized(sparse_linear_model(ct.target.iOS17))
    with pytest.raises(ValueError, match="joint_compression needs iOS18"):
        ms.apply_pipeline(source, joint_pipeline())


def test_joint_compression_option_must_be_bool() -> None:
    with pytest.raises(TypeError, match="joint_compression must be a bool"):
        ms.apply_pipeline(palettized(sparse_linear_model(ct.target.iOS18)), joint_pipeline(joint="yes"))


@pytest.mark.parametrize("then", ["palettize", "quantize"])
def test_our_pruning_then_coremltools_joint_compression_keeps_zeros(then: str) -> None:
    dense = sparse_linear_model(ct.target.iOS18)
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": ms.MagnitudeConfig(0.75)})
    pruned = ms.apply_pipeline(dense, pipeline)
    ours = decompressed(load_program(pruned))
    assert float((ours == 0).mean()) == pytest.approx(0.75, abs=1e-3)
    if then == "palettize":
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=4, mode="kmeans"))
        joint = cto.palettize_weights(pruned, config, joint_compression=True)
        expected_ops = {"constexpr_lut_to_sparse", "constexpr_sparse_to_dense"}
    else:
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))
        joint = cto.linear_quantize_weights(pruned, config, joint_compression=True)
        expected_ops = {"constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_to_dense"}
    prog = load_program(joint)
    prog.validate()
    assert expected_ops <= {op.op_type for op in all_ops(prog)}
    result = decompressed(prog)
    assert np.all(result[ours == 0] == 0)  # every zero we made is still a zero
    assert float((result == 0).mean()) == pytest.approx(0.75, abs=1e-3)
