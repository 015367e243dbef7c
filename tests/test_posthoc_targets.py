"""Deployment targets of post-hoc runs (mil_sparsity.plan.targets) and what apply_pipeline returns.

* An iOS15 model (ct.convert's default) is raised to iOS16, or to ``minimum_deployment_target``,
  by both paths (streaming and PyMIL) alike: same spec version, opsets, ops, description and
  bit-identical weights, equal to the reference pruning of the source; a note in the report
  and one log record.
* A target is never lowered; a pipeline that packs nothing still raises (as coremltools does);
  one without mil_sparsity passes does not.
* Inside ct.convert the passes still refuse iOS15; neuralnetwork models get a clear error
  everywhere (library paths and command line).
* apply_pipeline's result is the same kind of MLModel whichever path ran (but for
  ``_mil_program``, which only the PyMIL path's result has).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private
from mil_sparsity.plan import targets
from mil_sparsity.posthoc import load_program
from mil_sparsity.streaming import compress_package
from _cli_support import (  # noqa: F401  (fixtures)
    Main,
    Packages,
    assert_inputs_unchanged,
    error_line,
    input_hashes,
    leftovers,
    packages,
    run_main,
)
from _mil_helpers import one_pass
from _models import (
    SPARSE_OP,
    assert_bit_equal,
    check_sparse_form,
    hash_tree,
    iter_ops,
    mlp_program,
    neuralnetwork_mlp,
    ref_magnitude,
)
from test_streaming import assert_equivalent, spec_of

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAGNITUDE = ms.MagnitudeConfig(target_sparsity=0.5)
VERSION = {"iOS15": 6, "iOS16": 7, "iOS17": 8, "iOS18": 9}


def magnitude() -> Any:
    return one_pass(ms.PRUNE_BY_MAGNITUDE, config=MAGNITUDE)


def load(path: Path) -> Any:
    return ct.models.MLModel(str(path), skip_model_load=True)


def raise_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mil_sparsity" and "deployment target raised" in r.getMessage()]


def run_both(src: Path, tmp_path: Path, pipeline: Any, caplog: pytest.LogCaptureFixture, **kwargs: Any) -> dict[str, Any]:
    """Both paths on ``src``: path name -> (saved package, report, log records of the run)."""
    runs = {}
    for streaming in (True, False):
        name = "streamed" if streaming else "pymil"
        caplog.clear()
        report = ms.SparsityReport()
        with caplog.at_level(logging.WARNING, logger="mil_sparsity"):
            result = ms.apply_pipeline(src, pipeline, report=report, streaming=streaming, **kwargs)
        saved = tmp_path / f"{name}.mlpackage"
        result.save(str(saved))
        runs[name] = (saved, report, raise_records(caplog))
    return runs


def source_weights(path: Path) -> dict[str, np.ndarray]:
    prog = load_program(load(path))
    return {
        op.name: np.asarray(op.outputs[0].val)
        for function in prog.functions.values()
        for op in iter_ops(function)
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.size > 2048
    }


def check_pruned(saved: Path, source: dict[str, np.ndarray], ios18: bool) -> None:
    """Every weight above 2048 elements is a sparse op equal to the reference pruning."""
    prog = load_program(load(saved))
    sparse = {op.name: op for f in prog.functions.values() for op in iter_ops(f) if op.op_type == SPARSE_OP}
    assert sorted(sparse) == sorted(f"{name}_sparse" for name in source)
    for name, value in source.items():
        op = sparse[f"{name}_sparse"]
        check_sparse_form(op, ios18=ios18)
        assert_bit_equal(np.asarray(private.materialized_value(op)), ref_magnitude(value, 0.5), name)


# ---- raising an iOS15 model: both paths alike ---------------------------------------------------
CASES = [(model, None) for model in ("mlp", "conv", "lstm", "cond", "classifier")] + [
    ("mlp", "iOS17"),
    ("mlp", "iOS18"),
    ("conv", "iOS18"),
    ("cond", "iOS18"),
]


@pytest.mark.parametrize("model, requested", CASES, ids=[f"{m}-{r or 'default'}" for m, r in CASES])
def test_ios15_is_raised_alike_by_both_paths(model, requested, sources, tmp_path, caplog):
    src = sources.get(model, "iOS15")
    digests = hash_tree(src)
    expected = requested or "iOS16"
    kwargs = {} if requested is None else {"minimum_deployment_target": getattr(ct.target, requested)}

    runs = run_both(src, tmp_path, magnitude(), caplog, **kwargs)

    assert hash_tree(src) == digests
    weights = source_weights(src)
    for name, (saved, report, logged) in runs.items():
        spec = spec_of(saved)
        assert spec.specificationVersion == VERSION[expected], name
        opset = private.OPSET_NAMES[VERSION[expected]]
        assert {f.opset for f in spec.mlProgram.functions.values()} == {opset}, name
        assert all(list(f.block_specializations) == [opset] for f in spec.mlProgram.functions.values())
        check_pruned(saved, weights, ios18=expected == "iOS18")
        assert len(report.packed) == len(weights) > 0
        (note,) = report.notes
        assert f"from iOS15 to {expected}" in note
        assert ("minimum_deployment_target" in note) == (requested is not None)
        assert f"note: {note}" in report.format_table()
        assert report.to_dict()["notes"] == [note]
        assert [r.getMessage() for r in logged] == [note] and logged[0].levelno == logging.WARNING
    assert_equivalent(runs["streamed"][0], runs["pymil"][0])


def test_ios16_model_is_raised_only_when_asked(sources, tmp_path, caplog):
    src = sources.get("mlp", "iOS16")
    runs = run_both(src, tmp_path, magnitude(), caplog)
    for saved, report, logged in runs.values():
        assert spec_of(saved).specificationVersion == VERSION["iOS16"]
        assert report.notes == [] and logged == []
        assert "note:" not in report.format_table().splitlines()[-1]
    runs = run_both(src, tmp_path, magnitude(), caplog, minimum_deployment_target=ct.target.iOS18)
    for saved, report, logged in runs.values():
        assert spec_of(saved).specificationVersion == VERSION["iOS18"]
        assert [r.getMessage() for r in logged] == report.notes
        assert "from iOS16 to iOS18 (minimum_deployment_target=iOS18)" in report.notes[0]
    assert_equivalent(runs["streamed"][0], runs["pymil"][0])
    # the same target as the model's: nothing to say
    runs = run_both(src, tmp_path, magnitude(), caplog, minimum_deployment_target=ct.target.iOS16)
    assert all(report.notes == [] and logged == [] for _, report, logged in runs.values())


def test_compress_package_raises_and_notes_every_report(sources, tmp_path, caplog):
    """The note goes to the report returned and to a pass's own report option."""
    src = sources.get("mlp", "iOS15")
    own = ms.SparsityReport()
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.append_pass(ms.SPARSE_PACK)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": MAGNITUDE, "report": own})
    with caplog.at_level(logging.WARNING, logger="mil_sparsity"):
        returned = compress_package(src, tmp_path / "out.mlpackage", pipeline)
    assert returned.notes == own.notes and len(own.notes) == 1
    assert len(raise_records(caplog)) == 1
    assert spec_of(tmp_path / "out.mlpackage").specificationVersion == VERSION["iOS16"]


@pytest.mark.parametrize("streaming", [True, False], ids=["streamed", "pymil"])
def test_a_target_is_never_lowered(streaming, sources, tmp_path, caplog, monkeypatch):
    src = sources.get("mlp", "iOS18")
    digests = hash_tree(src)
    private_tmp = tmp_path / "tmp"  # where a temporary package would appear (other processes share /tmp)
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    report = ms.SparsityReport()
    with caplog.at_level(logging.WARNING, logger="mil_sparsity"):
        with pytest.raises(ValueError) as error:
            ms.apply_pipeline(src, magnitude(), report=report, streaming=streaming, minimum_deployment_target=ct.target.iOS16)
        with pytest.raises(TypeError, match="minimum_deployment_target must be a ct.target member .*got str 'iOS18'"):
            ms.apply_pipeline(src, magnitude(), streaming=streaming, minimum_deployment_target="iOS18")
    message = str(error.value)
    assert "minimum_deployment_target=iOS16" in message and "below the model's target iOS18" in message
    assert f"allowed: iOS18 to {targets.version_name(targets.NEWEST_VERSION)}" in message
    assert len(report) == 0 and report.notes == [] and raise_records(caplog) == []
    assert hash_tree(src) == digests
    assert os.listdir(private_tmp) == []
    with pytest.raises(ValueError, match="below the model's target iOS18"):
        compress_package(src, tmp_path / "out.mlpackage", MAGNITUDE, minimum_deployment_target=ct.target.iOS17)
    assert not (tmp_path / "out.mlpackage").exists()


def test_a_pipeline_that_packs_nothing_still_raises(sources, tmp_path, caplog):
    """Decision (mil_sparsity.plan.targets): the target depends on the run, not on the weights, as
    in coremltools' prune_weights. A minimum sparsity nothing reaches packs nothing; the
    result is still iOS16, its weights unchanged, and the note says so."""
    src = sources.get("mlp", "iOS15")
    pipeline = one_pass(ms.SPARSE_PACK, config=ms.PackConfig(minimum_sparsity_percentile=1.0))
    runs = run_both(src, tmp_path, pipeline, caplog)
    weights = source_weights(src)
    for saved, report, logged in runs.values():
        assert report.packed == [] and len(report) > 0
        assert spec_of(saved).specificationVersion == VERSION["iOS16"]
        assert len(report.notes) == 1 and len(logged) == 1
        after = source_weights(saved)
        assert sorted(after) == sorted(weights)
        for name, value in weights.items():
            assert_bit_equal(after[name], value, name)
    assert_equivalent(runs["streamed"][0], runs["pymil"][0])


def test_a_pipeline_without_our_passes_keeps_the_target(sources, tmp_path, caplog):
    src = sources.get("mlp", "iOS15")
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass("common::dead_code_elimination")
    report = ms.SparsityReport()
    with caplog.at_level(logging.WARNING, logger="mil_sparsity"):
        kept = ms.apply_pipeline(src, pipeline, report=report)
        raised = ms.apply_pipeline(src, pipeline, report=report, minimum_deployment_target=ct.target.iOS17)
    assert kept.get_spec().specificationVersion == VERSION["iOS15"]
    assert raised.get_spec().specificationVersion == VERSION["iOS17"]
    assert len(report.notes) == 1 and "(minimum_deployment_target=iOS17)" in report.notes[0]
    assert len(raise_records(caplog)) == 1


def test_inside_convert_ios15_still_raises_its_error():
    """ct.convert fixes the target: the pass cannot raise it and says how to convert."""
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": MAGNITUDE})
    with pytest.raises(ValueError, match=r"targets iOS15, but constexpr_sparse_to_dense needs iOS16.*minimum_deployment_target=ct\.target\.iOS16"):
        ct.convert(
            mlp_program(ct.target.iOS15),
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS15,
            pass_pipeline=pipeline,
        )


# ---- neuralnetwork models ------------------------------------------------------------------------
def test_neuralnetwork_model_gets_a_clear_error_on_both_paths(tmp_path):
    model = neuralnetwork_mlp()
    as_file, as_package = tmp_path / "nn.mlmodel", tmp_path / "nn.mlpackage"
    model.save(str(as_file))
    model.save(str(as_package))
    requested = {"minimum_deployment_target": ct.target.iOS18}
    for source in (model, as_file, as_package):
        for kwargs in ({}, requested):
            with pytest.raises(TypeError, match="ML Program models, but this model is a 'neuralNetwork'"):
                ms.apply_pipeline(source, magnitude(), streaming=False, **kwargs)
    with pytest.raises(TypeError, match="streaming works on ML Program models"):
        ms.apply_pipeline(as_package, magnitude(), **requested)
    with pytest.raises(TypeError, match="streaming works on ML Program models"):
        compress_package(as_package, tmp_path / "out.mlpackage", MAGNITUDE, **requested)
    assert not (tmp_path / "out.mlpackage").exists()


# ---- the command line -----------------------------------------------------------------------------
def cli_spec(path: Path) -> Any:
    return load(path).get_spec()


@pytest.mark.parametrize("streaming", [[], ["--streaming"]], ids=["pymil", "streamed"])
def test_cli_raises_ios15_and_says_so(run_main: Main, packages: Packages, tmp_path: Path, streaming: list[str]) -> None:
    out = tmp_path / "o.mlpackage"
    code, stdout, _ = run_main("prune", packages.ios15, "-o", out, "--n-m", "3:4", *streaming)
    assert code == 0
    assert cli_spec(out).specificationVersion == VERSION["iOS16"]
    assert "note: deployment target raised from iOS15 to iOS16" in stdout
    packed = tmp_path / "p.mlpackage"
    code, stdout, _ = run_main("pack", packages.ios15, "-o", packed, "--json", *streaming)
    assert code == 0
    import json

    notes = json.loads(stdout)["report"]["notes"]
    assert len(notes) == 1 and "from iOS15 to iOS16" in notes[0]
    assert cli_spec(packed).specificationVersion == VERSION["iOS16"]


@pytest.mark.parametrize("command", [["prune", "--n-m", "3:4"], ["pack"]], ids=["prune", "pack"])
@pytest.mark.parametrize("streaming", [[], ["--streaming"]], ids=["pymil", "streamed"])
def test_cli_min_deployment_target_raises_further(
    run_main: Main, packages: Packages, tmp_path: Path, command: list[str], streaming: list[str]
) -> None:
    source = packages.trained if command == ["pack"] else packages.ios16
    out = tmp_path / "o.mlpackage"
    name, *options = command
    # the trained package is iOS18 already: asking for iOS18 changes nothing
    code, stdout, _ = run_main(name, source, "-o", out, *options, "--min-deployment-target", "ios18", *streaming)
    assert code == 0
    spec = cli_spec(out)
    assert spec.specificationVersion == VERSION["iOS18"]
    prog = load_program(load(out))
    sparse = [op for op in iter_ops(prog.functions["main"]) if op.op_type == SPARSE_OP]
    assert sparse
    for op in sparse:
        check_sparse_form(op, ios18=True)
    assert ("from iOS16 to iOS18" in stdout) == (source == packages.ios16)


@pytest.mark.parametrize("streaming", [[], ["--streaming"]], ids=["pymil", "streamed"])
def test_cli_refuses_to_lower_the_target(
    run_main: Main, packages: Packages, tmp_path: Path, input_hashes: dict[Path, dict[str, str]], streaming: list[str]
) -> None:
    out = tmp_path / "o.mlpackage"
    for argv in (["prune", packages.ios18, "--n-m", "3:4"], ["pack", packages.trained]):
        code, stdout, err = run_main(*argv[:2], "-o", out, *argv[2:], "--min-deployment-target", "iOS17", *streaming)
        assert code == 2, err
        line = error_line(err)
        assert "--min-deployment-target=iOS17 is below the model's target iOS18" in line
        assert "allowed: iOS18 to" in line
        assert stdout == ""
    code, _, err = run_main("pack", packages.ios18, "-o", out, "--min-deployment-target", "iOS15", *streaming)
    assert code == 2 and f"expected one of {', '.join(targets.posthoc_target_names())}" in error_line(err)
    assert not out.exists() and leftovers(tmp_path) == []
    assert_inputs_unchanged(packages, input_hashes)


def test_cli_neuralnetwork_is_rejected(run_main: Main, packages: Packages, tmp_path: Path) -> None:
    out = tmp_path / "o.mlpackage"
    for argv in (["prune", packages.neuralnetwork, "-o", out, "--n-m", "3:4"], ["pack", packages.neuralnetwork, "-o", out]):
        for extra in ([], ["--min-deployment-target", "iOS18"]):
            code, _, err = run_main(*argv, *extra)
            assert code == 1
            assert "'neuralNetwork' model; mil-sparsity works on ML Program models" in error_line(err)
    assert not out.exists()


# ---- apply_pipeline's result is the same kind of model on both paths ---------------------------------
def zero_offsets(spec: Any) -> bytes:
    """The spec's bytes with every weight-file reference pointing at offset 0."""
    def blocks(block: Any) -> Any:
        yield block
        for op in block.operations:
            for inner in op.blocks:
                yield from blocks(inner)

    for function in spec.mlProgram.functions.values():
        for block in blocks(function.block_specializations[function.opset]):
            for op in block.operations:
                values = [v for v in op.attributes.values()]
                values += [b.value for a in op.inputs.values() for b in a.arguments if b.WhichOneof("binding") == "value"]
                for value in values:
                    if value.WhichOneof("value") == "blobFileValue":
                        value.blobFileValue.offset = 0
    return bytes(spec.SerializeToString(deterministic=True))


ATTRIBUTES = ("is_package", "is_temp_package", "compute_unit", "function_name", "optimization_hints")


@pytest.mark.parametrize("model, target", [("mlp", "iOS18"), ("classifier", "iOS16"), ("mlp", "iOS15")])
def test_result_is_the_same_model_whichever_path_ran(model, target, sources, tmp_path):
    src = tmp_path / "src.mlpackage"
    source = load(sources.get(model, target))
    source.user_defined_metadata["origin"] = "test"
    source.author = "mil_sparsity tests"
    source.save(str(src))
    results = {
        "streamed": ms.apply_pipeline(src, magnitude(), streaming=True),
        "pymil": ms.apply_pipeline(src, magnitude(), streaming=False),
    }
    specs = {}
    for name, result in results.items():
        assert type(result) is ct.models.MLModel
        assert result.is_package and result.is_temp_package and result.__proxy__ is None
        # the PyMIL path's result carries its program, as coremltools' do; a streamed one has none
        assert (result._mil_program is None) == (name == "streamed")
        assert result.compute_unit == ct.ComputeUnit.ALL
        package = Path(result.package_path)
        assert package.is_dir() and package.parent == Path(tempfile.gettempdir())
        assert Path(result.weights_dir).parent == package / "Data" / "com.apple.CoreML"
        assert result.user_defined_metadata["origin"] == "test" and result.author == "mil_sparsity tests"
        assert result.get_spec().description == load(src).get_spec().description
        saved = tmp_path / f"{name}.mlpackage"
        result.save(str(saved))
        # what the object says is what its package holds
        assert result.get_spec().SerializeToString(deterministic=True) == load(saved).get_spec().SerializeToString(deterministic=True)
        assert hash_tree(saved / "Data/com.apple.CoreML/weights") == hash_tree(package / "Data/com.apple.CoreML/weights")
        specs[name] = result.get_spec()
    assert {a: getattr(results["streamed"], a) for a in ATTRIBUTES} == {a: getattr(results["pymil"], a) for a in ATTRIBUTES}
    assert zero_offsets(specs["streamed"]) == zero_offsets(specs["pymil"])
    assert_equivalent(tmp_path / "streamed.mlpackage", tmp_path / "pymil.mlpackage")


def test_result_of_an_mlmodel_keeps_its_compute_unit(sources):
    mlmodel = ct.models.MLModel(str(sources.get("mlp", "iOS18")), skip_model_load=True, compute_units=ct.ComputeUnit.CPU_ONLY)
    result = ms.apply_pipeline(mlmodel, magnitude())
    assert result.compute_unit == ct.ComputeUnit.CPU_ONLY
    assert result._mil_program is not None and result.is_temp_package
    assert sum(op.type == SPARSE_OP for f in result.get_spec().mlProgram.functions.values() for op in f.block_specializations[f.opset].operations) == 2
