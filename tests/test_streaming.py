"""mil_sparsity.streaming.compress_package: the streaming package rewriter.

What is checked (no Core ML runtime: everything goes through the saved spec and PyMIL):

* equivalence with the PyMIL path (``apply_pipeline(..., streaming=False)``): same ops (proto
  level, nested blocks included, blob offsets aside) and bit-identical weights, for several
  models, deployment targets and configs;
* ``apply_pipeline`` streams in auto mode for package paths, and uses PyMIL for MLModels;
* blobs shared by the functions of a multifunction package stay shared;
* already compressed (palettized, quantized) models: untouched blobs, sub-byte ones included,
  are copied bit for bit;
* the report, and where its records go;
* errors: a clear exception, nothing at ``dst``, no temporary directory left, source unchanged;
* one weight in memory at a time: every read is one weight, each shared blob read once.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline
from coremltools.proto import MIL_pb2

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private
from mil_sparsity import posthoc, streaming
from mil_sparsity.format import blob as _blob
from mil_sparsity.posthoc import load_program
from mil_sparsity.streaming import compress_package, rewrite
from _models import SPARSE_OP, hash_tree, iter_ops, neuralnetwork_mlp
from _mil_helpers import one_pass
from _packages import Sources

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TARGETS = {"iOS16": ct.target.iOS16, "iOS17": ct.target.iOS17, "iOS18": ct.target.iOS18}
WEIGHT_DATA_TYPES = {"FLOAT16", "FLOAT32", "INT8", "UINT8"}
# what PyMIL holds in a weight numpy dtype (sub-byte types are uint8/int8 arrays there), so the
# PyMIL passes' report lists them too
STORED_AS_WEIGHT_DTYPE = WEIGHT_DATA_TYPES | {"INT4", "UINT1", "UINT2", "UINT3", "UINT4", "UINT6"}
BIG = 2048  # the configs' default weight_threshold: only larger weights are considered


# =============================================================================================
# source models: tests/_packages.py (torch-free MIL models), through conftest's ``sources``
# =============================================================================================
def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# =============================================================================================
# reading packages: spec, blobs, PyMIL values
# =============================================================================================
def load(path: Path) -> Any:
    return ct.models.MLModel(str(path), skip_model_load=True)


def spec_of(path: Path) -> Any:
    return load(path).get_spec()


def weight_bin(path: Path) -> Path:
    return Path(path) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"


def spec_file(path: Path) -> Path:
    return Path(path) / "Data" / "com.apple.CoreML" / "model.mlmodel"


def proto_blocks(block: Any) -> Iterator[Any]:
    yield block
    for op in block.operations:
        for inner in op.blocks:
            yield from proto_blocks(inner)


def proto_ops(function: Any) -> Iterator[Any]:
    for block in proto_blocks(function.block_specializations[function.opset]):
        yield from block.operations


def op_name(op: Any) -> str:
    if "name" in op.attributes:
        values = op.attributes["name"].immediateValue.tensor.strings.values
        if values:
            return str(values[0])
    return str(op.outputs[0].name)


def data_type(value: Any) -> str:
    return str(MIL_pb2.DataType.Name(value.type.tensorType.dataType))


def type_sig(value_type: Any) -> Any:
    if value_type.WhichOneof("type") == "tensorType":
        tensor = value_type.tensorType
        dims = tuple(
            d.constant.size if d.WhichOneof("dimension") == "constant" else "?"
            for d in tensor.dimensions
        )
        return ("tensor", MIL_pb2.DataType.Name(tensor.dataType), tensor.rank, dims)
    return (value_type.WhichOneof("type"), value_type.SerializeToString(deterministic=True))


def value_sig(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "immediateValue":
        return ("immediate", type_sig(value.type), value.immediateValue.SerializeToString(deterministic=True))
    if kind == "blobFileValue":  # the offset is where the writer put it: not compared
        return ("blob", type_sig(value.type), value.blobFileValue.fileName)
    return (kind, type_sig(value.type))


def binding_sig(binding: Any) -> Any:
    if binding.WhichOneof("binding") == "name":
        return ("name", binding.name)
    return ("value", value_sig(binding.value))


def block_sig(block: Any, used: set[str]) -> Any:
    return (
        tuple((i.name, type_sig(i.type)) for i in block.inputs),
        tuple(block.outputs),
        tuple(
            op_sig(op, used)
            for op in block.operations
            if not (op.type == "const" and is_dead_auto_const(op_name(op), op.outputs[0].name in used))
        ),
    )


def used_names(block: Any) -> set[str]:
    """Every var name read by an op or returned by a block, nested blocks included."""
    names: set[str] = set()
    for inner in proto_blocks(block):
        names.update(inner.outputs)
        for op in inner.operations:
            for argument in op.inputs.values():
                names.update(b.name for b in argument.arguments if b.WhichOneof("binding") == "name")
    return names


def op_sig(op: Any, used: set[str] = frozenset()) -> Any:
    """(type, outputs, input keys, attribute keys, their values' types, nested blocks)."""
    return (
        op.type,
        tuple((o.name, type_sig(o.type)) for o in op.outputs),
        tuple(sorted(op.inputs)),
        tuple(sorted(op.attributes)),
        tuple((key, tuple(binding_sig(b) for b in op.inputs[key].arguments)) for key in sorted(op.inputs)),
        tuple((key, value_sig(op.attributes[key])) for key in sorted(op.attributes)),
        tuple(block_sig(inner, used) for inner in op.blocks),
    )


def program_sig(path: Path) -> dict[str, Any]:
    spec = spec_of(path)
    sig: dict[str, Any] = {}
    for name, function in spec.mlProgram.functions.items():
        block = function.block_specializations[function.opset]
        sig[name] = (
            function.opset,
            tuple((i.name, type_sig(i.type)) for i in function.inputs),
            block_sig(block, used_names(block)),
        )
    return sig


def blob_values(spec: Any) -> Iterator[tuple[str, Any, str, Any]]:
    """(function, op, input/attribute key, Value) for every reference into the weight file."""
    for function_name, function in spec.mlProgram.functions.items():
        for op in proto_ops(function):
            for key, value in blob_values_of(op):
                yield function_name, op, key, value


def blob_value(op: Any, key: str) -> Any:
    if key in op.attributes:
        return op.attributes[key]
    (binding,) = op.inputs[key].arguments
    return binding.value


def blob_info(path: Path, offset: int) -> Any:
    with _blob.BlobReader(str(weight_bin(path))) as reader:
        return reader.info(offset)


def blob_raw(path: Path, offset: int) -> tuple[int, int, bytes]:
    """(dtype code, padding bits, stored bytes) of one blob."""
    with _blob.BlobReader(str(weight_bin(path))) as reader:
        info = reader.info(offset)
        return info.code, info.padding_bits, reader.read_raw(info).tobytes()


AUTO_NAME = re.compile(r"const_\d+")


def is_dead_auto_const(name: str, used: bool) -> bool:
    """An unused const named by coremltools' global counter: the PyMIL round trip (load, then
    export) makes such scalar consts for cond ops, so the PyMIL path has a few the source and
    the streamed package don't. They are no weights and are not compared."""
    return not used and AUTO_NAME.fullmatch(name) is not None


def weight_values(path: Path) -> dict[str, list[tuple[str, str, Any]]]:
    """Per function, in op order: (op name, kind, value) for the materialized value of every
    constexpr op and the value of every const feeding a non-constexpr op (or a block output).
    Auto-named consts (``const_<n>``, numbered per process) are listed as ``const_*``."""
    prog = load_program(load(path))
    found: dict[str, list[tuple[str, str, Any]]] = {}
    for function_name, function in prog.functions.items():
        rows = found.setdefault(function_name, [])
        for op in iter_ops(function):
            name = "const_*" if AUTO_NAME.fullmatch(op.name) else op.name
            if op.op_type.startswith("constexpr_"):
                rows.append((name, op.op_type, np.asarray(op.materialized_val_inference())))
            elif op.op_type == "const":
                var = op.outputs[0]
                used = bool(private.feeds_block_output(var) or var.child_ops)
                if is_dead_auto_const(op.name, used):
                    continue
                if not used or any(not child.op_type.startswith("constexpr_") for child in var.child_ops):
                    rows.append((name, "const", var.val))
    return found


def as_bits(value: Any) -> tuple[str, tuple[int, ...], Any]:
    array = np.asarray(value)
    if array.dtype.kind in "fiub":
        unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[array.dtype.itemsize]
        return str(array.dtype), array.shape, np.ascontiguousarray(array).view(unsigned).tolist()
    return str(array.dtype), array.shape, array.tolist()


def assert_same_weights(actual: Path, expected: Path) -> None:
    a, b = weight_values(actual), weight_values(expected)
    assert sorted(a) == sorted(b)
    for function in a:
        assert [(n, k) for n, k, _ in a[function]] == [(n, k) for n, k, _ in b[function]], function
        for (name, kind, x), (_, _, y) in zip(a[function], b[function]):
            assert as_bits(x) == as_bits(y), f"{function}/{name} ({kind}): values differ"


def assert_equivalent(streamed: Path, pymil: Path) -> None:
    """Same ops (proto level, offsets aside), same description, bit-identical weights."""
    spec_a, spec_b = spec_of(streamed), spec_of(pymil)
    assert spec_a.specificationVersion == spec_b.specificationVersion
    assert spec_a.description == spec_b.description
    sig_a, sig_b = program_sig(streamed), program_sig(pymil)
    assert sorted(sig_a) == sorted(sig_b)
    for function in sig_a:
        if sig_a[function] != sig_b[function]:
            raise AssertionError(f"function {function}: ops differ\n{first_difference(streamed, pymil, function)}")
    assert_same_weights(streamed, pymil)


def flat_ops(path: Path, function: str) -> list[Any]:
    """(type, output names, inputs by name) of every op, nested ones included, in order."""
    rows = []
    proto = spec_of(path).mlProgram.functions[function]
    used = used_names(proto.block_specializations[proto.opset])
    for op in proto_ops(proto):
        if op.type == "const" and is_dead_auto_const(op_name(op), op.outputs[0].name in used):
            continue
        inputs = {k: [b.name if b.WhichOneof("binding") == "name" else "<value>" for b in a.arguments] for k, a in op.inputs.items()}
        rows.append((op.type, [o.name for o in op.outputs], dict(sorted(inputs.items())), sorted(op.attributes)))
    return rows


def first_difference(a: Path, b: Path, function: str) -> str:
    ops_a, ops_b = flat_ops(a, function), flat_ops(b, function)
    for index, (x, y) in enumerate(zip(ops_a, ops_b)):
        if x != y:
            return f"op {index}:\n  streamed: {x}\n  pymil:    {y}"
    if len(ops_a) != len(ops_b):
        return f"{len(ops_a)} ops streamed, {len(ops_b)} via pymil"
    by_name = {}
    for path, tag in ((a, "streamed"), (b, "pymil")):
        for op in proto_ops(spec_of(path).mlProgram.functions[function]):
            by_name.setdefault(op_name(op), {})[tag] = op_sig(op)
    for name, sigs in by_name.items():
        if sigs.get("streamed") != sigs.get("pymil"):
            return f"op {name}:\n  streamed: {sigs.get('streamed')}\n  pymil:    {sigs.get('pymil')}"
    return "function inputs or block outputs differ"


def sparse_op_count(path: Path) -> int:
    return sum(
        1
        for function in spec_of(path).mlProgram.functions.values()
        for op in proto_ops(function)
        if op.type == SPARSE_OP
    )


# =============================================================================================
# configs and pipelines
# =============================================================================================
def big_weights(path: Path) -> tuple[list[str], list[str]]:
    """Names of the weights above weight_threshold in the first function: (pre-zeroed, dense)."""
    prog = load_program(load(path))
    function = next(iter(prog.functions.values()))
    zeroed, dense = [], []
    for op in iter_ops(function):
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.size > BIG:
            value = op.outputs[0].val
            (zeroed if np.mean(value == 0) > 0.5 else dense).append(op.name)
    assert zeroed and dense, (zeroed, dense)
    return zeroed, dense


def pass_for(config: Any) -> str:
    selector = ms.OpSelector(global_config=config) if not isinstance(config, ms.OpSelector) else config
    kinds = {c.kind for _, c in selector.entries() if c is not None}
    if kinds <= {"threshold"}:
        return ms.PRUNE_BY_THRESHOLD
    if kinds <= {"pack"}:
        return ms.SPARSE_PACK
    assert kinds <= {"magnitude", "block", "n_m"}, kinds
    return ms.PRUNE_BY_MAGNITUDE


def as_pipeline(config_or_pipeline: Any) -> PassPipeline:
    if isinstance(config_or_pipeline, PassPipeline):
        return config_or_pipeline
    return one_pass(pass_for(config_or_pipeline), config=config_or_pipeline)


def two_pass_pipeline(zeroed: list[str], dense: list[str]) -> PassPipeline:
    """prune_by_threshold then sparse_pack. The threshold pass packs the last dense weight,
    and leaves the pre-zeroed ones dense (their sparsity is below its minimum): sparse_pack
    must then pack those."""
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_THRESHOLD)
    pipeline.append_pass(ms.SPARSE_PACK)
    pipeline.set_options(
        ms.PRUNE_BY_THRESHOLD,
        {
            "config": ms.OpSelector(
                global_config=ms.ThresholdConfig(threshold=1e-3, minimum_sparsity_percentile=0.7),
                op_name_configs={dense[-1]: ms.ThresholdConfig(threshold=0.05, minimum_sparsity_percentile=0.2)},
            )
        },
    )
    return pipeline


CONFIGS: dict[str, Callable[[list[str], list[str]], Any]] = {
    "magnitude": lambda zeroed, dense: ms.MagnitudeConfig(target_sparsity=0.5),
    "n_m": lambda zeroed, dense: ms.NMConfig(2, 4),
    "block": lambda zeroed, dense: ms.BlockConfig(target_sparsity=0.5, block_size=4),
    "threshold": lambda zeroed, dense: ms.ThresholdConfig(threshold=0.05, minimum_sparsity_percentile=0.3),
    "pack": lambda zeroed, dense: ms.PackConfig(),
    "selector": lambda zeroed, dense: ms.OpSelector(
        global_config=ms.MagnitudeConfig(target_sparsity=0.3),
        op_type_configs={"linear": ms.NMConfig(2, 4), "lstm": None},
        op_name_configs={dense[-1]: ms.BlockConfig(target_sparsity=0.5, block_size=4)},
    ),
    "two_pass": two_pass_pipeline,
}

MODELS = ["conv", "mlp", "lstm", "classifier", "cond", "multifunction"]


def run_both(src: Path, tmp_path: Path, config: Any) -> tuple[Path, Path, ms.SparsityReport, ms.SparsityReport]:
    """compress_package and the PyMIL path on the same config: (streamed, pymil, reports)."""
    streamed, pymil = tmp_path / "streamed.mlpackage", tmp_path / "pymil.mlpackage"
    stream_report, pymil_report = ms.SparsityReport(), ms.SparsityReport()
    returned = compress_package(src, streamed, config, report=stream_report)
    assert returned is stream_report
    ms.apply_pipeline(src, as_pipeline(config), streaming=False, report=pymil_report).save(str(pymil))
    return streamed, pymil, stream_report, pymil_report


# =============================================================================================
# 1. equivalence with the PyMIL path
# =============================================================================================
@pytest.mark.parametrize("config_id", list(CONFIGS))
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("model", MODELS)
def test_streaming_equals_pymil(model, target, config_id, sources, tmp_path):
    src = sources.get(model, target)
    digests = hash_tree(src)
    config = CONFIGS[config_id](*big_weights(src))

    streamed, pymil, _, _ = run_both(src, tmp_path, config)

    assert hash_tree(src) == digests
    assert sparse_op_count(pymil) > 0, "the case must pack something"
    assert_equivalent(streamed, pymil)


# =============================================================================================
# 2. apply_pipeline: auto mode streams package paths, MLModels go through PyMIL
# =============================================================================================
def test_apply_pipeline_streams_package_paths(sources, tmp_path, monkeypatch):
    src = sources.get("conv", "iOS18")
    digests = hash_tree(src)
    pipeline = one_pass(ms.PRUNE_BY_MAGNITUDE, config=ms.MagnitudeConfig(target_sparsity=0.5))

    calls = []
    original = streaming.run_plan  # what apply_pipeline's streaming path executes

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    def no_pymil(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("auto mode must not load the program into PyMIL")

    monkeypatch.setattr(streaming, "run_plan", spy)
    monkeypatch.setattr(posthoc, "load_program", no_pymil)
    report = ms.SparsityReport()
    siblings = sorted(os.listdir(src.parent))
    result = ms.apply_pipeline(src, pipeline, report=report)
    monkeypatch.undo()

    assert len(calls) == 1
    assert isinstance(result, ct.models.MLModel)
    assert hash_tree(src) == digests
    assert [r.name for r in report.packed]  # the report kwarg was filled
    saved = tmp_path / "saved.mlpackage"
    result.save(str(saved))
    load_program(load(saved))  # loadable

    expected = tmp_path / "expected.mlpackage"
    compress_package(src, expected, pipeline)
    assert spec_of(saved) == spec_of(expected)
    assert weight_bin(saved).read_bytes() == weight_bin(expected).read_bytes()

    # the model owns a temporary package (coremltools removes it at exit), not one next to src
    assert result.is_temp_package
    assert Path(result.package_path).parent != src.parent
    assert sorted(os.listdir(src.parent)) == siblings


def test_apply_pipeline_with_str_path_and_explicit_streaming(sources, tmp_path):
    src = sources.get("mlp", "iOS16")
    pipeline = one_pass(ms.SPARSE_PACK)
    result = ms.apply_pipeline(str(src), pipeline, streaming=True)
    saved = tmp_path / "saved.mlpackage"
    result.save(str(saved))
    expected = tmp_path / "expected.mlpackage"
    compress_package(src, expected, pipeline)
    assert spec_of(saved) == spec_of(expected)
    assert weight_bin(saved).read_bytes() == weight_bin(expected).read_bytes()
    assert sparse_op_count(saved) == 1


def test_apply_pipeline_uses_pymil_for_mlmodels(sources, tmp_path, monkeypatch):
    src = sources.get("mlp", "iOS18")
    pipeline = one_pass(ms.PRUNE_BY_MAGNITUDE, config=ms.MagnitudeConfig(target_sparsity=0.5))

    def no_streaming(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an MLModel input must go through PyMIL")

    monkeypatch.setattr(streaming, "run_plan", no_streaming)
    result = ms.apply_pipeline(load(src), pipeline)
    with pytest.raises(TypeError, match="path"):
        ms.apply_pipeline(load(src), pipeline, streaming=True)
    # a path with streaming=False, or a pipeline with a pass that is not ours, also use PyMIL
    forced = ms.apply_pipeline(src, pipeline, streaming=False)
    mixed = ct.PassPipeline.EMPTY
    mixed.append_pass("common::dead_code_elimination")
    mixed.append_pass(ms.PRUNE_BY_MAGNITUDE)
    mixed.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": ms.MagnitudeConfig(target_sparsity=0.5)})
    with_foreign_pass = ms.apply_pipeline(src, mixed)
    monkeypatch.undo()

    streamed = tmp_path / "streamed.mlpackage"
    compress_package(src, streamed, pipeline)
    for index, model in enumerate([result, forced, with_foreign_pass]):
        out = tmp_path / f"pymil{index}.mlpackage"
        model.save(str(out))
        assert_equivalent(streamed, out)


# =============================================================================================
# 3. multifunction packages: a blob shared by two functions stays shared
# =============================================================================================
@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
def test_shared_blob_stays_shared(target, sources, tmp_path):
    src = sources.get("shared", target)
    source_spec = spec_of(src)
    source_offsets: dict[str, dict[str, int]] = {}
    for function, op, key, value in blob_values(source_spec):
        source_offsets.setdefault(function, {})[op_name(op)] = value.blobFileValue.offset
    assert sorted(source_offsets) == ["f1", "f2"]
    assert source_offsets["f1"] == source_offsets["f2"], "premise: save_multifunction shares the blobs"

    config = ms.MagnitudeConfig(target_sparsity=0.5)
    streamed, pymil, report, _ = run_both(src, tmp_path, config)
    assert_equivalent(streamed, pymil)

    spec = spec_of(streamed)
    sparse: dict[str, dict[str, tuple[int, int]]] = {}
    for name, function in spec.mlProgram.functions.items():
        for op in proto_ops(function):
            if op.type == SPARSE_OP:
                offsets = tuple(blob_value(op, key).blobFileValue.offset for key in ("nonzero_data", "mask"))
                sparse.setdefault(name, {})[op_name(op)] = offsets
    assert len(sparse["f1"]) == 2
    assert sparse["f1"] == sparse["f2"], "both functions must point at one packed blob"
    all_offsets = {value.blobFileValue.offset for _, _, _, value in blob_values(spec)}
    with _blob.BlobReader(str(weight_bin(streamed))) as reader:
        assert reader.count == len(all_offsets), "one blob per distinct reference, nothing else"
    assert os.path.getsize(weight_bin(streamed)) < os.path.getsize(weight_bin(pymil))
    packed_names = sorted(name.removesuffix("_sparse") for name in sparse["f1"])
    assert sorted((r.function, r.name) for r in report.packed) == [
        (function, name) for function in ("f1", "f2") for name in packed_names
    ]


# =============================================================================================
# 4. already compressed models: untouched blobs are copied bit for bit
# =============================================================================================
COMPRESSED = [
    ("iOS16", "palettize2"),
    ("iOS16", "palettize4"),
    ("iOS16", "int8"),
    ("iOS18", "palettize2"),
    ("iOS18", "palettize3"),
    ("iOS18", "palettize4"),
    ("iOS18", "palettize6"),
    ("iOS18", "int8"),
    ("iOS18", "int4"),
]


def constexpr_ops(src: Path) -> list[tuple[str, Any]]:
    """(function, op) of every constexpr op in the spec."""
    return [
        (function, op)
        for function, f in spec_of(src).mlProgram.functions.items()
        for op in proto_ops(f)
        if op.type.startswith("constexpr_")
    ]


def compressed_source(sources: Sources, target: str, kind: str) -> Path:
    src = sources.get(kind, target)
    ((_, op),) = constexpr_ops(src)
    if kind.startswith("palettize") and target == "iOS18":
        nbits = int(kind.removeprefix("palettize"))
        assert data_type(blob_value(op, "indices")) == f"UINT{nbits}", "premise: a sub-byte blob"
    if kind == "int4":
        assert data_type(blob_value(op, "data")) == "INT4", "premise: a signed sub-byte blob"
    return src


@pytest.mark.parametrize("config", [ms.PackConfig(), ms.MagnitudeConfig(target_sparsity=0.5)], ids=["pack", "magnitude"])
@pytest.mark.parametrize("target,kind", COMPRESSED, ids=[f"{t}-{k}" for t, k in COMPRESSED])
def test_compressed_blobs_are_copied_exactly(target, kind, config, sources, tmp_path):
    src = compressed_source(sources, target, kind)
    digests = hash_tree(src)

    streamed, pymil, report, _ = run_both(src, tmp_path, config)
    assert hash_tree(src) == digests
    assert_equivalent(streamed, pymil)
    # only the ordinary weight is packed
    assert [r.name for r in report.packed] == ["op_2_weight_to_fp16"]

    # every blob a constexpr op reads is stored exactly as before: dtype code, padding, bytes
    spec = spec_of(streamed)
    for function, source_op in constexpr_ops(src):
        (op,) = [o for o in proto_ops(spec.mlProgram.functions[function]) if op_name(o) == op_name(source_op)]
        assert op_sig(op) == op_sig(source_op)
        for key, value in blob_values_of(source_op):
            new_value = blob_value(op, key)
            assert blob_raw(streamed, new_value.blobFileValue.offset) == blob_raw(src, value.blobFileValue.offset), key
    # ... and materializes to the same weight, bit for bit
    before, after = weight_values(src), weight_values(streamed)
    for function, rows in before.items():
        source_constexpr = {name: value for name, op_type, value in rows if op_type.startswith("constexpr_")}
        new_constexpr = {
            name: value for name, op_type, value in after[function]
            if op_type.startswith("constexpr_") and op_type != SPARSE_OP
        }
        assert source_constexpr and sorted(new_constexpr) == sorted(source_constexpr)
        for name, value in source_constexpr.items():
            assert as_bits(new_constexpr[name]) == as_bits(value), name


@pytest.mark.parametrize("target,kind", COMPRESSED, ids=[f"{t}-{k}" for t, k in COMPRESSED])
def test_compressed_report_says_why(target, kind, sources, tmp_path):
    """Weights stored in the weight file as inputs of a constexpr op are not packed, and the
    report says so, as the PyMIL passes' report does ("already feeds constexpr_...")."""
    src = compressed_source(sources, target, kind)
    report = compress_package(src, tmp_path / "out.mlpackage", ms.PackConfig())
    ((_, source_op),) = constexpr_ops(src)
    in_file = [
        (key, value) for key, value in blob_values_of(source_op) if data_type(value) in STORED_AS_WEIGHT_DTYPE
    ]
    feeding = [r for r in report if r.consumer_types == (source_op.type,)]
    assert sorted(r.shape for r in feeding) == sorted(
        tuple(d.constant.size for d in value.type.tensorType.dimensions) for _, value in in_file
    ), f"records: {[r.name for r in report]}"
    for record in feeding:
        assert record.decision == "skipped"
        assert record.reason == f"already feeds {source_op.type}"


def blob_values_of(op: Any) -> list[tuple[str, Any]]:
    """(input/attribute key, Value) of every reference of ``op`` into the weight file."""
    found = []
    for key, value in op.attributes.items():
        if value.WhichOneof("value") == "blobFileValue":
            found.append((key, value))
    for key, argument in op.inputs.items():
        for binding in argument.arguments:
            if binding.WhichOneof("binding") == "value" and binding.value.WhichOneof("value") == "blobFileValue":
                found.append((key, binding.value))
    return found


# =============================================================================================
# 5. the report
# =============================================================================================
@pytest.mark.parametrize("config_id", ["magnitude", "n_m", "threshold", "pack", "selector"])
@pytest.mark.parametrize("model", ["conv", "mlp", "cond"])
def test_report_matches_pymil(model, config_id, sources, tmp_path):
    src = sources.get(model, "iOS17")
    config = CONFIGS[config_id](*big_weights(src))
    _, _, stream_report, pymil_report = run_both(src, tmp_path, config)
    # consts stored inline in the spec (fewer than 10 elements) are outside streaming's scope
    in_file = blob_consts(src)
    expected = [r.to_dict() for r in pymil_report if (r.function, r.name) in in_file]
    assert len(expected) == len(in_file)
    assert sorted((r.to_dict() for r in stream_report), key=str) == sorted(expected, key=str)


def blob_consts(src: Path) -> set[tuple[str, str]]:
    """(function, name) of every const whose value is in the weight file."""
    return {
        (function, op_name(op))
        for function, op, key, _ in blob_values(spec_of(src))
        if op.type == "const" and key == "val"
    }


def test_report_records_every_weight(sources, tmp_path):
    src = sources.get("mlp", "iOS18")
    source = {row[0]: row[2] for row in weight_values(src)["main"]}
    report = compress_package(src, tmp_path / "out.mlpackage", ms.MagnitudeConfig(target_sparsity=0.5))
    assert isinstance(report, ms.SparsityReport)
    by_name = {record.name: record for record in report}
    assert sorted(by_name) == ["op_0_bias_to_fp16", "op_0_weight_to_fp16", "op_2_bias_to_fp16", "op_2_weight_to_fp16"]
    for name, shape in [("op_0_weight_to_fp16", (128, 64)), ("op_2_weight_to_fp16", (32, 128))]:
        record = by_name[name]
        size = int(np.prod(shape))
        # the round(0.5 * size) smallest magnitudes are zeroed; op_0 was already 60% zeros
        nonzero = min(size - round(0.5 * size), int(np.count_nonzero(source[name])))
        assert record.pass_name == ms.PRUNE_BY_MAGNITUDE
        assert record.function == "main"
        assert record.shape == shape and record.dtype == "float16"
        assert record.consumer_types == ("linear",)
        assert record.decision == "packed" and record.packed
        assert record.reason == "config from global_config"
        assert record.config == {"kind": "magnitude", "target_sparsity": 0.5, "weight_threshold": 2048, "scoring": "magnitude", "method": "prune"}
        assert record.sparsity == pytest.approx((size - nonzero) / size)
        assert record.dense_bytes == 2 * size
        assert record.packed_bytes == 2 * nonzero + (size + 7) // 8
    for name in ("op_0_bias_to_fp16", "op_2_bias_to_fp16"):
        record = by_name[name]
        assert record.decision == "skipped" and not record.packed
        assert record.reason.startswith("rank 1")
        assert record.sparsity == 0.0
        assert record.packed_bytes is None
    totals = report.totals()
    assert totals["weights"] == 4 and totals["packed"] == 2


def test_weight_left_dense_by_a_pass_goes_on_to_the_next(sources, tmp_path):
    """prune_by_threshold selects the pre-zeroed weight but its handler leaves it dense (sparsity
    below the minimum); sparse_pack, next in the pipeline, must still get it, as on the PyMIL
    path, where each pass sees the program the previous one left."""
    src = sources.get("mlp", "iOS18")
    zeroed, _ = big_weights(src)
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_THRESHOLD)
    pipeline.append_pass(ms.SPARSE_PACK)
    pipeline.set_options(
        ms.PRUNE_BY_THRESHOLD,
        {"config": ms.ThresholdConfig(threshold=1e-3, minimum_sparsity_percentile=0.7)},
    )
    streamed, pymil, stream_report, pymil_report = run_both(src, tmp_path, pipeline)
    expected = [(ms.SPARSE_PACK, zeroed[0])]
    assert [(r.pass_name, r.name) for r in pymil_report.packed] == expected  # premise
    (skip,) = [r for r in stream_report if r.pass_name == ms.PRUNE_BY_THRESHOLD and r.name == zeroed[0]]
    assert skip.decision == "skipped" and "minimum_sparsity_percentile" in skip.reason
    assert [(r.pass_name, r.name) for r in stream_report.packed] == expected
    assert_equivalent(streamed, pymil)


def test_report_goes_to_the_pass_option_first(sources, tmp_path):
    src = sources.get("mlp", "iOS18")
    zeroed, dense = big_weights(src)
    own = ms.SparsityReport()
    kwarg = ms.SparsityReport()
    # the threshold pass packs only the dense weight (selected by name); sparse_pack then packs
    # the pre-zeroed one
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_THRESHOLD)
    pipeline.append_pass(ms.SPARSE_PACK)
    selector = ms.OpSelector(op_name_configs={dense[-1]: ms.ThresholdConfig(threshold=0.05, minimum_sparsity_percentile=0.2)})
    pipeline.set_options(ms.PRUNE_BY_THRESHOLD, {"config": selector, "report": own})

    returned = compress_package(src, tmp_path / "a.mlpackage", pipeline, report=kwarg)
    assert returned is kwarg
    assert own.records and {r.pass_name for r in own} == {ms.PRUNE_BY_THRESHOLD}
    assert kwarg.records and {r.pass_name for r in kwarg} == {ms.SPARSE_PACK}
    assert [r.name for r in own.packed] == [dense[-1]]
    assert [r.name for r in kwarg.packed] == zeroed

    # both passes with their own report: nothing goes to the kwarg
    second = ms.SparsityReport()
    pipeline.set_options(ms.SPARSE_PACK, {"report": second})
    own.records.clear()
    unused = ms.SparsityReport()
    compress_package(src, tmp_path / "b.mlpackage", pipeline, report=unused)
    assert len(unused) == 0 and own.records and second.records

    # the same through apply_pipeline in auto mode
    own.records.clear()
    second.records.clear()
    ms.apply_pipeline(src, pipeline, report=unused)
    assert len(unused) == 0 and own.records and second.records


# =============================================================================================
# 6. errors: clear exception, nothing written, source unchanged
# =============================================================================================
def assert_fails_cleanly(
    src: Path, dst: Path, config: Any, error: Any, match: str, **kwargs: Any
) -> pytest.ExceptionInfo:
    parent = dst.parent
    parent.mkdir(parents=True, exist_ok=True)
    before = sorted(os.listdir(parent))
    digests = hash_tree(src) if os.path.exists(src) else None
    with pytest.raises(error, match=match) as info:
        compress_package(src, dst, config, **kwargs)
    assert sorted(os.listdir(parent)) == before, "nothing may be left next to dst"
    if digests is not None:
        assert hash_tree(src) == digests
    return info


def nothing_opened(monkeypatch: Any) -> list[str]:
    """Record any attempt to read the weights or to write the output."""
    events: list[str] = []

    def reader(*args: Any, **kwargs: Any) -> Any:
        events.append("read")
        raise AssertionError("weights read")

    def output(*args: Any, **kwargs: Any) -> Any:
        events.append("write")
        raise AssertionError("output written")

    monkeypatch.setattr(rewrite, "BlobReader", reader)
    monkeypatch.setattr(rewrite, "atomic_output", output)
    return events


MAGNITUDE = ms.MagnitudeConfig(target_sparsity=0.5)


def test_missing_source(tmp_path):
    src = tmp_path / "missing.mlpackage"
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, FileNotFoundError, "missing.mlpackage")
    assert not src.exists()


def neuralnetwork_model() -> Any:
    return neuralnetwork_mlp()


def test_source_is_a_file(tmp_path):
    src = tmp_path / "model.mlmodel"
    neuralnetwork_model().save(str(src))
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, ValueError, "is a file")


def test_neuralnetwork_package(tmp_path, monkeypatch):
    package = tmp_path / "nn.mlpackage"
    neuralnetwork_model().save(str(package))
    events = nothing_opened(monkeypatch)
    assert_fails_cleanly(package, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, TypeError, "mlprogram")
    assert events == []


# iOS15 programs are raised to iOS16, as by the PyMIL path: tests/test_posthoc_targets.py


def test_existing_destination(sources, tmp_path):
    src = sources.get("mlp", "iOS18")
    dst = tmp_path / "dst.mlpackage"
    dst.mkdir()
    (dst / "marker").write_text("old")
    old = hash_tree(dst)
    with pytest.raises(FileExistsError):
        compress_package(src, dst, MAGNITUDE)
    assert hash_tree(dst) == old
    assert sorted(os.listdir(tmp_path)) == ["dst.mlpackage"]

    compress_package(src, dst, MAGNITUDE, overwrite=True)
    assert not (dst / "marker").exists()
    assert sorted(os.listdir(tmp_path)) == ["dst.mlpackage"]
    assert sparse_op_count(dst) == 2
    load_program(load(dst))


def test_missing_weight_file(sources, tmp_path, monkeypatch):
    src = copy_package(sources.get("mlp", "iOS18"), tmp_path / "src.mlpackage")
    weight_bin(src).unlink()
    events = nothing_opened(monkeypatch)
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, ValueError, "missing")
    assert events == []


def first_big_blob(src: Path) -> int:
    """Offset of the metadata of the first weight above weight_threshold, in file order."""
    offsets = [
        value.blobFileValue.offset
        for _, op, _, value in blob_values(spec_of(src))
        if op.type == "const" and np.prod([d.constant.size for d in value.type.tensorType.dimensions]) > BIG
    ]
    return sorted(offsets)[0]


def test_truncated_weight_file(sources, tmp_path):
    src = copy_package(sources.get("conv", "iOS18"), tmp_path / "src.mlpackage")
    # cut in the middle of the last weight, so earlier blobs were already streamed
    offsets = sorted(value.blobFileValue.offset for _, _, _, value in blob_values(spec_of(src)))
    info = blob_info(src, offsets[-1])
    with open(weight_bin(src), "r+b") as handle:
        handle.truncate(info.data_offset + info.nbytes // 2)
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, ValueError, "truncated")

    # cut in the middle of a packed weight
    src2 = copy_package(sources.get("conv", "iOS18"), tmp_path / "src2.mlpackage")
    info = blob_info(src2, first_big_blob(src2))
    with open(weight_bin(src2), "r+b") as handle:
        handle.truncate(info.data_offset + info.nbytes // 2)
    assert_fails_cleanly(src2, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, ValueError, "truncated")


def patch_metadata(src: Path, offset: int, field_offset: int, value: int) -> None:
    with open(weight_bin(src), "r+b") as handle:
        handle.seek(offset + field_offset)
        handle.write(struct.pack("<I", value))


@pytest.mark.parametrize("which", ["packed", "copied"])
def test_unknown_blob_dtype(which, sources, tmp_path):
    src = copy_package(sources.get("mlp", "iOS18"), tmp_path / "src.mlpackage")
    if which == "packed":
        offset = first_big_blob(src)
    else:  # a bias: copied unchanged, not read as a weight
        offset = max(value.blobFileValue.offset for _, _, _, value in blob_values(spec_of(src)))
    patch_metadata(src, offset, 4, 99)
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, ValueError, "unknown dtype")


def test_corrupt_sentinel(sources, tmp_path):
    src = copy_package(sources.get("mlp", "iOS18"), tmp_path / "src.mlpackage")
    patch_metadata(src, first_big_blob(src), 0, 0x12345678)
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, ValueError, "sentinel")


def test_corrupt_spec(sources, tmp_path, monkeypatch):
    src = copy_package(sources.get("mlp", "iOS18"), tmp_path / "src.mlpackage")
    spec_file(src).write_bytes(b"\xff" * 64 + b"not a model")
    events = nothing_opened(monkeypatch)
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, ValueError, "model")
    assert events == []


def test_pipeline_with_foreign_pass(sources, tmp_path, monkeypatch):
    src = sources.get("mlp", "iOS18")
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.append_pass("common::dead_code_elimination")
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": MAGNITUDE})
    events = nothing_opened(monkeypatch)
    assert_fails_cleanly(src, tmp_path / "dst.mlpackage", pipeline, ValueError, "dead_code_elimination")
    assert events == []


def test_report_option_of_the_wrong_type(sources, tmp_path):
    """Checked before anything is written, as the PyMIL pass does (TypeError)."""
    src = sources.get("mlp", "iOS18")
    pipeline = one_pass(ms.PRUNE_BY_MAGNITUDE, config=MAGNITUDE, report="not a report")
    with pytest.raises(TypeError, match="SparsityReport"):
        ms.apply_pipeline(src, pipeline, streaming=False)
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", pipeline, TypeError, "SparsityReport")


@pytest.mark.parametrize("which", ["packed", "copied"])
def test_blob_dtype_disagrees_with_spec(which, sources, tmp_path):
    """A known dtype code that is not the one the spec declares (fp16 const, uint8 blob):
    the weight file does not match the model, like a truncated one."""
    src = copy_package(sources.get("mlp", "iOS18"), tmp_path / "src.mlpackage")
    if which == "packed":
        offset = first_big_blob(src)
    else:
        offset = max(value.blobFileValue.offset for _, _, _, value in blob_values(spec_of(src)))
    assert blob_info(src, offset).code == 1  # fp16
    patch_metadata(src, offset, 4, 3)  # uint8: same bytes, another dtype
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", MAGNITUDE, ValueError, "dtype")


def test_config_mixing_kinds(sources, tmp_path, monkeypatch):
    src = sources.get("mlp", "iOS18")
    selector = ms.OpSelector(
        global_config=ms.ThresholdConfig(threshold=0.01), op_type_configs={"linear": MAGNITUDE}
    )
    events = nothing_opened(monkeypatch)
    assert_fails_cleanly(src, tmp_path / "dst.mlpackage", selector, ValueError, "mixes config kinds")
    assert events == []


def shared_const_program(tmp_path: Path) -> Path:
    """One weight read by two linear ops."""
    weight = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=ct.target.iOS18)
    def prog(x):
        w = mb.const(val=weight, name="shared_w")
        a = mb.linear(x=x, weight=w, name="lin_a")
        return mb.linear(x=a, weight=w, name="lin_b")

    path = tmp_path / "shared_const.mlpackage"
    ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32,  # keeps the names, and fp32 weights
    ).save(str(path))
    return path


def test_config_conflict_between_consumers(tmp_path, monkeypatch):
    src = shared_const_program(tmp_path)
    selector = ms.OpSelector(op_name_configs={"lin_a": MAGNITUDE, "lin_b": ms.MagnitudeConfig(target_sparsity=0.7)})
    events = nothing_opened(monkeypatch)
    assert_fails_cleanly(src, tmp_path / "out" / "dst.mlpackage", selector, ValueError, "shared by ops")
    assert events == []
    monkeypatch.undo()
    # with one config for the const it works, and both ops read the one sparse op
    same = ms.OpSelector(op_name_configs={"lin_a": MAGNITUDE, "lin_b": MAGNITUDE})
    streamed, pymil, _, _ = run_both(src, tmp_path, same)
    assert sparse_op_count(streamed) == 1
    assert_equivalent(streamed, pymil)


# =============================================================================================
# 7. streaming holds one weight at a time
# =============================================================================================
def record_reads(monkeypatch: Any) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(offset, bytes) of every read_values and read_raw call."""
    arrays: list[tuple[int, int]] = []
    raws: list[tuple[int, int]] = []
    read_values, read_raw = _blob.BlobReader.read_values, _blob.BlobReader.read_raw

    def spy_array(self: Any, info: Any) -> Any:
        result = read_values(self, info)
        arrays.append((info.offset, result.nbytes))
        return result

    def spy_raw(self: Any, info: Any) -> Any:
        result = read_raw(self, info)
        raws.append((info.offset, result.nbytes))
        return result

    monkeypatch.setattr(_blob.BlobReader, "read_values", spy_array)
    monkeypatch.setattr(_blob.BlobReader, "read_raw", spy_raw)
    return arrays, raws


def const_bytes(src: Path) -> dict[int, int]:
    """Blob offset -> dense bytes of the const stored there, from the spec."""
    sizes: dict[int, int] = {}
    itemsize = {"FLOAT16": 2, "FLOAT32": 4, "INT8": 1, "UINT8": 1}
    for _, op, _, value in blob_values(spec_of(src)):
        if op.type == "const":
            count = int(np.prod([d.constant.size for d in value.type.tensorType.dimensions]))
            sizes[value.blobFileValue.offset] = count * itemsize[data_type(value)]
    return sizes


@pytest.mark.parametrize("model", ["conv", "lstm", "shared"])
def test_each_weight_is_read_alone_and_once(model, sources, tmp_path, monkeypatch):
    src = sources.get(model, "iOS18")
    sizes = const_bytes(src)
    largest = max(sizes.values())
    arrays, raws = record_reads(monkeypatch)
    report = compress_package(src, tmp_path / "out.mlpackage", ms.MagnitudeConfig(target_sparsity=0.5))
    monkeypatch.undo()

    assert arrays, "weights must be read"
    for offset, nbytes in arrays:
        assert nbytes == sizes[offset], "a read is exactly one weight"
        assert nbytes <= largest
    assert all(nbytes <= largest for _, nbytes in raws)
    array_offsets = [offset for offset, _ in arrays]
    assert len(array_offsets) == len(set(array_offsets)), "each blob is read once"
    packed_offsets = {o for o, n in sizes.items() if n // 2 > BIG}
    assert packed_offsets <= set(array_offsets)
    if model == "shared":
        assert {r.function for r in report.packed} == {"f1", "f2"}
        assert len(report.packed) == 2 * len(packed_offsets)
