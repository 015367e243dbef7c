"""Crafted packages (issue 21): nothing is read or written outside a package, sizes are
checked before memory is spent, and every path gives the same clear error.

The source is the session's iOS18 MLP package (two 64/128-wide linears, fp16 blobs in
``weights/weight.bin``), copied into ``tmp/in/up.mlpackage`` and edited; the output goes to
``tmp/out/out.mlpackage``; ``tmp/victim`` holds files the crafted entries point at.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import coremltools as ct
import numpy as np
import pytest
from coremltools.proto import MIL_pb2, Model_pb2

import mil_sparsity as ms
from mil_sparsity.format import package_guard
from mil_sparsity.format.blob import BlobReader
from mil_sparsity.cli import main
from mil_sparsity.errors import InvalidInputError, UnsafePackageError
from mil_sparsity.samples import input_specs, random_samples
from mil_sparsity.streaming import compress_package

from _models import hash_tree

SPEC = "Data/com.apple.CoreML/model.mlmodel"
WEIGHTS = "Data/com.apple.CoreML/weights/weight.bin"


@pytest.fixture
def layout(sources: Any, tmp_path: Path) -> dict[str, Path]:
    package = tmp_path / "in" / "up.mlpackage"
    package.parent.mkdir()
    shutil.copytree(sources.get("mlp", "iOS18"), package)
    (tmp_path / "out").mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.mlmodel").write_bytes(b"precious")
    return {"package": package, "out": tmp_path / "out" / "out.mlpackage", "victim": victim, "tmp": tmp_path}


def edit_manifest(package: Path, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
    """``edit(manifest, root_item)`` changes the manifest in place."""
    path = package / "Manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest, manifest["itemInfoEntries"][manifest["rootModelIdentifier"]])
    path.write_text(json.dumps(manifest))


def load_spec(package: Path) -> Any:
    spec = Model_pb2.Model()
    spec.ParseFromString((package / SPEC).read_bytes())
    return spec


def save_spec(package: Path, spec: Any) -> None:
    (package / SPEC).write_bytes(spec.SerializeToString())


def blob_consts(spec: Any) -> list[Any]:
    """The blob-backed ``val`` Values of the main function's consts, in program order."""
    block = spec.mlProgram.functions["main"].block_specializations["CoreML8"]
    return [
        op.attributes["val"]
        for op in block.operations
        if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue"
    ]


def outside_snapshot(root: Path, out: Path) -> dict[str, str]:
    return {name: digest for name, digest in hash_tree(root).items() if not (root / name).is_relative_to(out)}


def operations(layout: dict[str, Path]) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Every way a package enters the library: streaming, PyMIL, report, evaluator."""
    package, out = str(layout["package"]), str(layout["out"])
    config = ms.MagnitudeConfig(target_sparsity=0.5)
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": config})
    yield "compress_package", lambda: compress_package(package, out, config)
    yield "prune_weights (streams)", lambda: ms.prune_weights(package, config)
    yield "apply_pipeline streaming=False", lambda: ms.apply_pipeline(package, pipeline, streaming=False)
    yield "inspect_model", lambda: __import__("mil_sparsity.inspect_model").inspect_model.inspect_model(package)

    def evaluate() -> Any:
        model = ms.posthoc.load_model(package)
        samples = random_samples(input_specs(model), 1)
        return ms.reference.ReferenceEvaluator(model).run(samples[0])

    yield "reference evaluator", evaluate


def cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def assert_refused_everywhere(
    layout: dict[str, Path], *fragments: str, error: type[Exception] = UnsafePackageError, exit_code: int = 2
) -> None:
    """Every operation raises ``error`` with ``fragments`` in its message; the CLI prints that
    message as one line and exits ``exit_code`` (2: refused as unsafe; 1: a corrupt package);
    nothing outside the output changes and no output (nor a temporary sibling) is left."""
    before = outside_snapshot(layout["tmp"], layout["out"])
    for what, run in operations(layout):
        with pytest.raises(error) as raised:
            run()
        for fragment in fragments:
            assert fragment in str(raised.value), (what, str(raised.value))
    package, out = str(layout["package"]), str(layout["out"])
    for argv in (
        ["prune", package, "-o", out, "--target-sparsity", "0.5", "--streaming"],
        ["prune", package, "-o", out, "--target-sparsity", "0.5"],
        ["report", package],
        ["compare", package, package, "--random-inputs", "1"],
    ):
        code, err = cli(*argv)
        assert code == exit_code, (argv, err)
        assert err.count("\n") == 1 and err.startswith("mil-sparsity: error: ") and "unexpected" not in err
        for fragment in fragments:
            assert fragment in err, (argv, err)
    assert outside_snapshot(layout["tmp"], layout["out"]) == before
    assert os.listdir(layout["out"].parent) == []


def test_manifest_root_model_outside_is_refused(layout: dict[str, Path]) -> None:
    written = "../../../victim/model.mlmodel"
    edit_manifest(layout["package"], lambda manifest, root: root.update(path=written))
    assert_refused_everywhere(layout, written, str(layout["victim"] / "model.mlmodel"), "outside the package")
    assert (layout["victim"] / "model.mlmodel").read_bytes() == b"precious"


def test_manifest_weights_item_outside_and_absolute_paths_are_refused(layout: dict[str, Path]) -> None:
    shutil.copytree(layout["package"] / "Data/com.apple.CoreML/weights", layout["victim"] / "weights")
    original = (layout["package"] / "Manifest.json").read_text()

    def point_weights_outside(manifest: dict[str, Any], root: dict[str, Any]) -> None:
        for item in manifest["itemInfoEntries"].values():
            if item["name"] == "weights":
                item["path"] = "../../victim/weights"

    edit_manifest(layout["package"], point_weights_outside)
    assert_refused_everywhere(layout, "../../victim/weights", "outside the package")
    (layout["package"] / "Manifest.json").write_text(original)
    edit_manifest(layout["package"], lambda manifest, root: root.update(path=str(layout["victim"] / "model.mlmodel")))
    assert_refused_everywhere(layout, "absolute path")


def test_blob_file_name_outside_is_refused(layout: dict[str, Path]) -> None:
    elsewhere = layout["package"].parent / "elsewhere.bin"  # @model_path is Data/com.apple.CoreML
    shutil.copy(layout["package"] / WEIGHTS, elsewhere)
    spec = load_spec(layout["package"])
    written = "@model_path/weights/../../../../elsewhere.bin"
    for value in blob_consts(spec):
        value.blobFileValue.fileName = written
    save_spec(layout["package"], spec)
    assert_refused_everywhere(layout, written, str(elsewhere), "outside the package")


def test_symlinks_leading_outside_are_refused(layout: dict[str, Path]) -> None:
    weights = layout["package"] / WEIGHTS
    shutil.move(weights, layout["victim"] / "weight.bin")
    weights.symlink_to(layout["victim"] / "weight.bin")
    assert_refused_everywhere(layout, "outside the package")
    weights.unlink()
    shutil.move(layout["victim"] / "weight.bin", weights)
    manifest = layout["package"] / "Manifest.json"
    shutil.move(manifest, layout["victim"] / "Manifest.json")
    manifest.symlink_to(layout["victim"] / "Manifest.json")
    assert_refused_everywhere(layout, "Manifest.json", "outside the package")


def test_declared_size_must_match_the_blob(layout: dict[str, Path]) -> None:
    spec = load_spec(layout["package"])
    dims = blob_consts(spec)[0].type.tensorType.dimensions
    dims[0].constant.size = 1 << 40  # 2**40 x 64 fp16: 128 TiB, refused before any allocation
    save_spec(layout["package"], spec)
    assert_refused_everywhere(layout, "declares", str((1 << 40) * 64), "does not match")


def test_blob_metadata_past_the_end_of_the_file_is_refused(layout: dict[str, Path]) -> None:
    spec = load_spec(layout["package"])
    offset = blob_consts(spec)[0].blobFileValue.offset
    weights = layout["package"] / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[offset + 8 : offset + 16] = (1 << 62).to_bytes(8, "little")  # size_in_bytes
    weights.write_bytes(bytes(data))
    assert_refused_everywhere(layout, "needs bytes", "truncated", error=InvalidInputError, exit_code=1)
    weights.write_bytes(bytes(data[: offset + 32]))  # cut inside the metadata record
    assert_refused_everywhere(layout, "past the end", error=InvalidInputError, exit_code=1)


def test_immediate_value_must_hold_its_declared_elements(layout: dict[str, Path]) -> None:
    """A bias moved from the weight file into the spec (as coremltools stores small consts)
    loads as before; the same immediate declaring 1000x its elements is refused."""
    spec = load_spec(layout["package"])
    bias = next(value for value in blob_consts(spec) if value.type.tensorType.rank == 1)
    with BlobReader(str(layout["package"] / WEIGHTS)) as reader:
        stored = reader.read_raw(reader.info(bias.blobFileValue.offset)).tobytes()
    bias.immediateValue.tensor.bytes.values = stored
    save_spec(layout["package"], spec)
    assert package_guard.check_storage(spec, package_guard.open_package(layout["package"])).files
    ms.apply_pipeline(str(layout["package"]), _pipeline(ms.MagnitudeConfig(target_sparsity=0.5)), streaming=False)
    bias.type.tensorType.dimensions[0].constant.size *= 1000
    save_spec(layout["package"], spec)
    assert_refused_everywhere(layout, "declares", "but stores")


def test_input_larger_than_memory_is_refused_before_the_evaluator_allocates(layout: dict[str, Path]) -> None:
    spec = load_spec(layout["package"])
    huge = package_guard.memory_bytes()  # elements: x2 bytes each for fp16 or x4 for fp32
    spec.mlProgram.functions["main"].inputs[0].type.tensorType.dimensions[0].constant.size = huge
    spec.description.input[0].type.multiArrayType.shape[0] = huge
    save_spec(layout["package"], spec)
    model = ms.posthoc.load_model(str(layout["package"]))
    with pytest.raises(UnsafePackageError, match="more than this machine's memory"):
        ms.reference.ReferenceEvaluator(model)
    with pytest.raises(UnsafePackageError, match="more than this machine's memory"):
        random_samples(input_specs(model), 1)


def test_state_larger_than_memory_is_refused_before_make_state_allocates(tmp_path: Path) -> None:
    """A state input declaring more than the machine's memory (only there: the ops' types
    untouched) is refused before the evaluator could allocate its buffer."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(2,), dtype=types.fp16), mb.StateTensorSpec(shape=(2,), dtype=types.fp16)],
        opset_version=ct.target.iOS18,
    )
    def prog(x: Any, s: Any) -> Any:
        return mb.coreml_update_state(state=s, value=mb.add(x=mb.read_state(input=s), y=x))

    package = tmp_path / "stateful.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18).save(str(package))
    assert ms.reference.ReferenceEvaluator(package).make_state().names == ("s",)
    spec = load_spec(package)
    (state,) = [item for item in spec.mlProgram.functions["main"].inputs if item.name == "s"]
    state.type.stateType.wrappedType.tensorType.dimensions[0].constant.size = package_guard.memory_bytes()
    save_spec(package, spec)
    with pytest.raises(UnsafePackageError, match=r"input 's' declares a tensor of .* more than this machine's memory"):
        ms.reference.ReferenceEvaluator(package)


def test_streaming_reads_each_blob_from_the_file_its_spec_names(layout: dict[str, Path]) -> None:
    """One const's blob moves to weights/second.bin and its bytes in weight.bin are zeroed:
    streaming must read second.bin (as coremltools' loader does) and write canonical names."""
    package = layout["package"]
    weights = package / WEIGHTS
    shutil.copy(weights, weights.with_name("second.bin"))
    spec = load_spec(package)
    moved = blob_consts(spec)[0]
    moved.blobFileValue.fileName = "@model_path/weights/second.bin"
    save_spec(package, spec)
    with BlobReader(str(weights)) as reader:  # zero the moved blob's data in weight.bin
        info = reader.info(moved.blobFileValue.offset)
    data = bytearray(weights.read_bytes())
    data[info.data_offset : info.data_offset + info.nbytes] = bytes(info.nbytes)
    weights.write_bytes(bytes(data))

    config = ms.MagnitudeConfig(target_sparsity=0.5)
    compress_package(str(package), str(layout["out"]), config)
    pymil = ms.apply_pipeline(str(package), _pipeline(config), streaming=False)
    streamed_spec = load_spec(layout["out"])
    names = {value.blobFileValue.fileName for value in package_guard.blob_values(streamed_spec)}
    assert names == {package_guard.CANONICAL_BLOB_NAME}
    assert sorted(os.listdir(layout["out"] / "Data/com.apple.CoreML/weights")) == ["weight.bin"]
    streamed = ms.posthoc.load_program(ct.models.MLModel(str(layout["out"]), skip_model_load=True))
    expected = ms.posthoc.load_program(pymil)
    sparse = _sparse_values(streamed)
    assert sparse.keys() == _sparse_values(expected).keys() and len(sparse) == 2
    for name, value in _sparse_values(expected).items():
        np.testing.assert_array_equal(sparse[name], value)
        assert np.count_nonzero(value) > 0  # the moved weight was read from second.bin, not zeros


def _pipeline(config: Any) -> Any:
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": config})
    return pipeline


def _sparse_values(prog: Any) -> dict[str, np.ndarray]:
    from mil_sparsity import _coremltools_private as private

    return {
        op.name: private.materialized_value(op)
        for op in prog.functions["main"].operations
        if op.op_type == "constexpr_sparse_to_dense"
    }


def test_outputs_are_self_contained_and_writes_follow_no_symlink(layout: dict[str, Path]) -> None:
    """The output holds only names of our own, no symlink; an output path that is a symlink
    to a directory is replaced (with --force), never written through."""
    out = layout["out"]
    out.symlink_to(layout["victim"], target_is_directory=True)
    before = hash_tree(layout["victim"])
    code, err = cli("prune", str(layout["package"]), "-o", str(out), "--target-sparsity", "0.5", "--streaming", "--force")
    assert code == 0, err
    assert hash_tree(layout["victim"]) == before
    assert not out.is_symlink()
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file() or path.is_symlink())
    assert files == ["Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin", "Manifest.json"]
    layout_out = package_guard.open_package(out)
    package_guard.check_storage(load_spec(out), layout_out, memory_bound=True)


def test_security_note_is_in_the_readme_and_the_cli_help() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert " ".join(package_guard.SECURITY_NOTE.split()) in " ".join(readme.split())
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["--help"]) == 0
    assert " ".join(package_guard.SECURITY_NOTE.split()) in " ".join(out.getvalue().split())
