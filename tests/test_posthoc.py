"""ms.apply_pipeline on saved and in-memory ML Program models (no Core ML runtime)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct

import mil_sparsity as ms
from mil_sparsity.posthoc import load_program
from _mil_helpers import one_pass
from _reference import ref_magnitude, ref_threshold
from _models import (
    cond_linear_program,
    SPARSE_OP,
    assert_bit_equal,
    check_sparse_form,
    dense_value,
    hash_tree,
    iter_ops,
    make_mlp,
    mlp_model,
    save_and_load,
    trace,
    weight_vars,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TARGETS = [
    pytest.param(ct.target.iOS16, id="iOS16"),
    pytest.param(ct.target.iOS17, id="iOS17"),
    pytest.param(ct.target.iOS18, id="iOS18"),
]


def magnitude_pipeline(target_sparsity: float = 0.5, **options: Any) -> Any:
    return one_pass(ms.PRUNE_BY_MAGNITUDE, config=ms.MagnitudeConfig(target_sparsity=target_sparsity), **options)


def convert_mlp(target: Any, seed: int = 0, outputs: int = 32, **kwargs: Any) -> Any:
    """Linear(64, 128) -> ReLU -> Linear(128, outputs) as an ML Program (torch-free builder)."""
    return mlp_model(target, seed=seed, sizes=(64, 128, outputs), prezero=(), **kwargs)


def load(path: Path) -> Any:
    return ct.models.MLModel(str(path), skip_model_load=True)


def original_weights(function: Any) -> dict:
    """key -> const value of every weight of an unpruned function."""
    weights = {}
    for key, var in weight_vars(function).items():
        assert var.op.op_type == "const", key
        weights[key] = np.array(var.val)
    return weights


def check_pruned(function: Any, before: dict, target_sparsity: float, ios18: bool) -> None:
    """Every weight above 2048 elements is packed and equals the magnitude-pruned original."""
    after = weight_vars(function)
    assert set(after) == set(before)
    for key, value in before.items():
        var = after[key]
        if value.size <= 2048:
            assert var.op.op_type == "const", key
            assert_bit_equal(dense_value(var), value, str(key))
            continue
        assert var.op.op_type == SPARSE_OP, key
        check_sparse_form(var.op, ios18=ios18)
        assert_bit_equal(dense_value(var), ref_magnitude(value, target_sparsity), str(key))


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("as_type", [str, Path], ids=["str", "Path"])
def test_path_input_saves_reloads_and_is_untouched(target, as_type, tmp_path):
    source = tmp_path / "in.mlpackage"
    convert_mlp(target).save(str(source))
    digests = hash_tree(source)
    source_spec = load(source).get_spec()
    before = original_weights(load_program(load(source)).functions["main"])

    result = ms.apply_pipeline(as_type(source), magnitude_pipeline(0.5))
    assert isinstance(result, ct.models.MLModel)
    assert hash_tree(source) == digests

    prog = save_and_load(result, tmp_path / "out.mlpackage")
    assert hash_tree(source) == digests
    check_pruned(prog.functions["main"], before, 0.5, ios18=target >= ct.target.iOS18)

    out_spec = load(tmp_path / "out.mlpackage").get_spec()
    assert out_spec.specificationVersion == source_spec.specificationVersion
    assert out_spec.description.input == source_spec.description.input
    assert out_spec.description.output == source_spec.description.output


@pytest.mark.parametrize("target", TARGETS)
def test_mlmodel_input_is_untouched(target, tmp_path):
    mlmodel = convert_mlp(target)
    spec_bytes = mlmodel.get_spec().SerializeToString()
    package_digests = hash_tree(Path(mlmodel.package_path))
    before = original_weights(mlmodel._mil_program.functions["main"])

    result = ms.apply_pipeline(mlmodel, magnitude_pipeline(0.75))

    assert mlmodel.get_spec().SerializeToString() == spec_bytes
    assert hash_tree(Path(mlmodel.package_path)) == package_digests
    # the converter's own program is not rewritten either
    assert not any(op.op_type == SPARSE_OP for op in iter_ops(mlmodel._mil_program.functions["main"]))
    prog = save_and_load(result, tmp_path / "out.mlpackage")
    check_pruned(prog.functions["main"], before, 0.75, ios18=target >= ct.target.iOS18)


@pytest.mark.parametrize("target", TARGETS)
def test_builder_program_with_nested_blocks(target, tmp_path):
    """Weights inside cond branches are pruned too; a weight of exactly weight_threshold
    elements is left alone."""
    rng = np.random.default_rng(0)
    w_true = rng.standard_normal((64, 64)).astype(np.float32)
    w_false = rng.standard_normal((64, 64)).astype(np.float32)
    w_out = rng.standard_normal((32, 64)).astype(np.float32)  # 2048 elements: not > 2048
    prog = cond_linear_program(target, w_true, w_false, w_out)

    source = tmp_path / "cond.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target).save(str(source))
    digests = hash_tree(source)

    report = ms.SparsityReport()
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_THRESHOLD)
    pipeline.set_options(
        ms.PRUNE_BY_THRESHOLD,
        {"config": ms.ThresholdConfig(threshold=0.5, minimum_sparsity_percentile=0.2)},
    )
    result = ms.apply_pipeline(source, pipeline, report=report)
    assert hash_tree(source) == digests
    main = save_and_load(result, tmp_path / "out.mlpackage").functions["main"]

    linears = [op for op in iter_ops(main) if op.op_type == "linear"]
    assert len(linears) == 3
    by_name = {op.name: op.weight for op in linears}
    nested = [op for op in iter_ops(main) if op.op_type == "cond"][0]
    inner = {op.name for block in nested.blocks for op in block.operations if op.op_type == "linear"}
    assert len(inner) == 2
    expected = {"true": w_true, "false": w_false}
    found = set()
    for name in inner:
        weight = by_name[name]
        assert weight.op.op_type == SPARSE_OP, name
        check_sparse_form(weight.op, ios18=target >= ct.target.iOS18)
        dense = dense_value(weight)
        for branch, source_weight in expected.items():
            if np.array_equal(dense != 0, np.abs(source_weight.astype(np.float16)) > 0.5):
                assert_bit_equal(dense, ref_threshold(source_weight.astype(np.float16), 0.5), name)
                found.add(branch)
    assert found == {"true", "false"}
    (outer,) = [op for op in linears if op.name not in inner]
    assert outer.weight.op.op_type == "const"
    assert_bit_equal(dense_value(outer.weight), w_out.astype(np.float16), "outer linear")
    assert len(report.packed) == 2
    assert all(record.function == "main" for record in report)


def test_classifier_keeps_its_description(tmp_path):
    mlmodel = convert_mlp(
        ct.target.iOS16, outputs=3, classifier_config=ct.ClassifierConfig(["a", "b", "c"])
    )
    source = tmp_path / "classifier.mlpackage"
    mlmodel.save(str(source))
    source_spec = load(source).get_spec()
    assert source_spec.description.predictedFeatureName == "classLabel"

    result = ms.apply_pipeline(source, magnitude_pipeline(0.5))
    prog = save_and_load(result, tmp_path / "out.mlpackage")
    spec = load(tmp_path / "out.mlpackage").get_spec()

    assert spec.description == source_spec.description
    assert spec.description.predictedFeatureName == source_spec.description.predictedFeatureName
    assert spec.description.predictedProbabilitiesName == source_spec.description.predictedProbabilitiesName
    assert spec.description.output == source_spec.description.output
    assert spec.description.input == source_spec.description.input
    (classify,) = [op for op in iter_ops(prog.functions["main"]) if op.op_type == "classify"]
    assert list(classify.classes.val) == ["a", "b", "c"]
    weights = weight_vars(prog.functions["main"])
    assert weights[("linear", "weight", (128, 64))].op.op_type == SPARSE_OP
    assert weights[("linear", "weight", (3, 128))].op.op_type == "const"


def test_multifunction_package(tmp_path):
    from coremltools.models.utils import MultiFunctionDescriptor, save_multifunction

    originals = {}
    paths = {}
    for seed, name in enumerate(["f1", "f2"]):
        mlmodel = convert_mlp(ct.target.iOS18, seed=seed)
        originals[name] = original_weights(mlmodel._mil_program.functions["main"])
        paths[name] = tmp_path / f"{name}.mlpackage"
        mlmodel.save(str(paths[name]))
    descriptor = MultiFunctionDescriptor()
    for name, path in paths.items():
        descriptor.add_function(str(path), src_function_name="main", target_function_name=name)
    descriptor.default_function_name = "f2"
    source = tmp_path / "multi.mlpackage"
    save_multifunction(descriptor, str(source))
    digests = hash_tree(source)

    report = ms.SparsityReport()
    result = ms.apply_pipeline(source, magnitude_pipeline(0.5), report=report)
    assert hash_tree(source) == digests
    prog = save_and_load(result, tmp_path / "out.mlpackage")
    spec = load(tmp_path / "out.mlpackage").get_spec()

    assert sorted(f.name for f in spec.description.functions) == ["f1", "f2"]
    assert spec.description.defaultFunctionName == "f2"
    source_description = load(source).get_spec().description
    assert spec.description.functions == source_description.functions
    assert sorted(prog.functions) == ["f1", "f2"]
    for name in ("f1", "f2"):
        check_pruned(prog.functions[name], originals[name], 0.5, ios18=True)

    assert {record.function for record in report} == {"f1", "f2"}
    for name in ("f1", "f2"):
        packed = [r for r in report.packed if r.function == name]
        assert sorted(r.shape for r in packed) == [(32, 128), (128, 64)]
        assert all(r.pass_name == ms.PRUNE_BY_MAGNITUDE for r in packed)


def test_report_kwarg_does_not_replace_option_or_mutate_pipeline(tmp_path):
    source = tmp_path / "in.mlpackage"
    convert_mlp(ct.target.iOS18).save(str(source))

    pipeline = magnitude_pipeline(0.5)
    kwarg_report = ms.SparsityReport()
    result = ms.apply_pipeline(source, pipeline, report=kwarg_report)
    assert len(kwarg_report.packed) == 2
    # the caller's pipeline did not get a report option
    names = {option.option_name for option in pipeline.get_options(ms.PRUNE_BY_MAGNITUDE)}
    assert names == {"config"}
    assert isinstance(result, ct.models.MLModel)

    option_report = ms.SparsityReport()
    other = ms.SparsityReport()
    ms.apply_pipeline(source, magnitude_pipeline(0.5, report=option_report), report=other)
    assert len(option_report.packed) == 2
    assert len(other) == 0


def test_reapplying_changes_nothing(tmp_path):
    """On an already packed model the consts feed constexpr ops: nothing is packed twice."""
    first = ms.apply_pipeline(convert_mlp(ct.target.iOS18), magnitude_pipeline(0.5))
    before = {
        key: dense_value(var)
        for key, var in weight_vars(save_and_load(first, tmp_path / "first.mlpackage").functions["main"]).items()
    }
    report = ms.SparsityReport()
    second = ms.apply_pipeline(tmp_path / "first.mlpackage", magnitude_pipeline(0.9), report=report)
    assert report.packed == []
    main = save_and_load(second, tmp_path / "second.mlpackage").functions["main"]
    assert len([op for op in iter_ops(main) if op.op_type == SPARSE_OP]) == 2
    for key, var in weight_vars(main).items():
        assert_bit_equal(dense_value(var), before[key], str(key))


@pytest.mark.parametrize("target", TARGETS)
def test_sparse_pack_keeps_values_of_a_pruned_torch_model(target, tmp_path):
    """sparse_pack (default PackConfig) on weights zeroed in torch: values unchanged, only
    weights whose sparse form is smaller are packed."""
    torch = pytest.importorskip("torch")
    model = make_mlp(seed=0)
    with torch.no_grad():
        weight = model[0].weight
        weight[weight.abs() < weight.abs().flatten().kthvalue(int(0.6 * weight.numel())).values] = 0
    expected = {
        ("linear", "weight", (128, 64)): model[0].weight.detach().numpy().astype(np.float16),
        ("linear", "weight", (32, 128)): model[2].weight.detach().numpy().astype(np.float16),
    }
    assert np.mean(expected[("linear", "weight", (128, 64))] == 0) > 0.5
    mlmodel = ct.convert(
        trace(model, [(1, 64)]),
        inputs=[ct.TensorType(shape=(1, 64))],
        convert_to="mlprogram",
        minimum_deployment_target=target,
    )
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.SPARSE_PACK)
    report = ms.SparsityReport()
    result = ms.apply_pipeline(mlmodel, pipeline, report=report)
    weights = weight_vars(save_and_load(result, tmp_path / "out.mlpackage").functions["main"])
    packed = weights[("linear", "weight", (128, 64))]
    assert packed.op.op_type == SPARSE_OP
    check_sparse_form(packed.op, ios18=target >= ct.target.iOS18)
    dense = weights[("linear", "weight", (32, 128))]
    assert dense.op.op_type == "const"
    for key, value in expected.items():
        assert_bit_equal(dense_value(weights[key]), value, str(key))
    assert [r.shape for r in report.packed] == [(128, 64)]


# iOS15 models are raised to iOS16 post hoc: tests/test_posthoc_targets.py


# ---------------------------------------------------------------------------------------------
def test_neuralnetwork_model_is_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    del torch
    traced = trace(make_mlp(seed=0), [(1, 64)])
    nn_model = ct.convert(traced, inputs=[ct.TensorType(shape=(1, 64))], convert_to="neuralnetwork")
    with pytest.raises((TypeError, ValueError), match="mlprogram"):
        ms.apply_pipeline(nn_model, magnitude_pipeline())
    path = tmp_path / "nn.mlmodel"
    nn_model.save(str(path))
    with pytest.raises((TypeError, ValueError), match="mlprogram"):
        ms.apply_pipeline(path, magnitude_pipeline())


@pytest.mark.parametrize("as_type", [str, Path], ids=["str", "Path"])
def test_missing_path_raises_file_not_found(as_type, tmp_path):
    missing = tmp_path / "does_not_exist.mlpackage"
    with pytest.raises(FileNotFoundError):
        ms.apply_pipeline(as_type(missing), magnitude_pipeline())
    assert not os.path.exists(missing)


def test_pipeline_must_be_a_pass_pipeline(tmp_path):
    source = tmp_path / "in.mlpackage"
    convert_mlp(ct.target.iOS18).save(str(source))
    with pytest.raises(TypeError, match="PassPipeline"):
        ms.apply_pipeline(source, [ms.PRUNE_BY_MAGNITUDE])
