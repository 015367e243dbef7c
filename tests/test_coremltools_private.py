"""One test per private coremltools symbol wrapped in mil_sparsity._coremltools_private.

Each fails (never skips) when a coremltools release moves or changes the symbol, so an upgrade
shows exactly which wrapper needs an alternative.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private
from mil_sparsity.model import pymil as _graph
from mil_sparsity.format import sparse_format
from mil_sparsity.format.blob import BlobReader
from mil_sparsity.kernels import pack_sparse


def _program(target: Any = ct.target.iOS18) -> Any:
    """x(4, 8) -> linear with a (16, 8) fp32 weight -> y; a sparse (8, 8) fp32 weight -> z."""
    weight = np.arange(128, dtype=np.float32).reshape(16, 8)
    sparse = np.eye(8, dtype=np.float32)
    inputs = _graph.builder_inputs(sparse_format.replacement("s", pack_sparse(sparse), sparse_format.checked_form("main", target)))

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 8))], opset_version=target)
    def prog(x: Any) -> Any:
        y = mb.linear(x=x, weight=mb.const(val=weight, name="w"), name="y")
        dense = mb.constexpr_sparse_to_dense(**inputs, name="s")
        z = mb.matmul(x=x, y=dense, name="z")
        return y, z

    return prog


def _op(prog: Any, name: str) -> Any:
    return next(op for op in prog.functions["main"].operations if op.name == name)


def _model(target: Any = ct.target.iOS18) -> Any:
    return ct.convert(_program(target), convert_to="mlprogram", minimum_deployment_target=target)


def test_uint1_dtype_is_uint8_storage_typed_uint1() -> None:
    assert private.UINT1_DTYPE == np.uint8
    assert private.UINT1_DTYPE.metadata  # PyMIL reads the sub-byte type from the metadata
    mask_var = _op(_program(), "s").inputs["mask"]
    assert private.bit_width(mask_var.dtype) == 1


def test_numpy_dtype_of() -> None:
    var = _op(_program(), "w").outputs[0]
    assert private.numpy_dtype_of(var.dtype) == np.float32


def test_is_tensor_type() -> None:
    prog = _program()
    assert private.is_tensor_type(_op(prog, "w").outputs[0].sym_type)
    scalar = mb.program(input_specs=[mb.TensorSpec(shape=(2,))])(lambda x: mb.reduce_sum(x=x, axes=[0]))
    scalar_var = scalar.functions["main"].outputs[0]
    assert not private.is_tensor_type(scalar_var.sym_type)


def test_is_state_type() -> None:
    from coremltools.converters.mil.mil import types

    prog = mb.program(
        input_specs=[mb.TensorSpec(shape=(2,)), mb.StateTensorSpec(shape=(2,), dtype=types.fp16)],
        opset_version=ct.target.iOS18,
    )(lambda x, s: mb.add(x=mb.cast(x=x, dtype="fp16"), y=mb.read_state(input=s)))
    inputs = prog.functions["main"].inputs
    assert private.is_state_type(inputs["s"].sym_type)
    assert not private.is_state_type(inputs["x"].sym_type)
    assert not private.is_tensor_type(inputs["s"].sym_type)


def test_bit_width() -> None:
    prog = _program()
    assert private.bit_width(_op(prog, "w").outputs[0].dtype) == 32
    assert private.bit_width(object()) is None


def test_opset_names_cover_every_target_and_match_converted_models() -> None:
    for target in ct.target:
        assert target.value in private.OPSET_NAMES, target
    for target in (ct.target.iOS16, ct.target.iOS18):
        spec = _model(target).get_spec()
        assert spec.mlProgram.functions["main"].opset == private.OPSET_NAMES[target.value]


def test_feeds_block_output() -> None:
    prog = _program()
    assert private.feeds_block_output(_op(prog, "y").outputs[0])
    assert not private.feeds_block_output(_op(prog, "w").outputs[0])


def test_materialized_value() -> None:
    value = private.materialized_value(_op(_program(), "s"))
    np.testing.assert_array_equal(value, np.eye(8, dtype=np.float32))


def test_decompressed_value() -> None:
    """The op class's decompress applied to given input values; None for an op without one."""
    op = _op(_program(), "s")
    inputs = {name: var.val for name, var in op.inputs.items()}
    value = private.decompressed_value(op, inputs)
    np.testing.assert_array_equal(value, np.eye(8, dtype=np.float32))
    inputs["nonzero_data"] = inputs["nonzero_data"] * 2  # the given values are used, not the op's
    np.testing.assert_array_equal(private.decompressed_value(op, inputs), 2 * np.eye(8, dtype=np.float32))
    assert private.decompressed_value(_op(_program(), "y"), {}) is None


def test_program_from_spec_and_back() -> None:
    model = _model()
    prog = private.program_from_spec(model.get_spec(), model.weights_dir)
    assert {op.op_type for op in prog.functions["main"].operations} >= {"linear", "constexpr_sparse_to_dense"}
    prog.skip_all_passes = True
    again = private.mlmodel_from_program(
        prog,
        specification_version=model.get_spec().specificationVersion,
        compute_units=model.compute_unit,
        model_description=model.get_spec().description,
    )
    assert isinstance(again, ct.models.MLModel)
    assert again.get_spec().mlProgram.functions["main"].opset == model.get_spec().mlProgram.functions["main"].opset


def test_is_loaded(tmp_path: Any) -> None:
    path = str(tmp_path / "m.mlpackage")
    _model().save(path)
    assert not private.is_loaded(ct.models.MLModel(path, skip_model_load=True))
    loaded = ct.models.MLModel(path)  # loaded by Core ML on a recent macOS; off macOS, never
    assert private.is_loaded(loaded) == (loaded.__proxy__ is not None)
    if sys.platform != "darwin":
        assert not private.is_loaded(loaded)
    loaded.__proxy__ = object()  # what a loaded model holds: the runtime's model
    assert private.is_loaded(loaded)


def test_run_pipeline() -> None:
    prog = _program()
    pipeline = ct.PassPipeline(pass_names=[ms.PRUNE_BY_MAGNITUDE], pipeline_name="test")
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": ms.MagnitudeConfig(0.5, weight_threshold=0)})
    private.run_pipeline(prog, pipeline)
    types = [op.op_type for op in prog.functions["main"].operations]
    assert types.count("constexpr_sparse_to_dense") == 2  # w packed, s left as it was


class _ProbePass(AbstractGraphPass):  # type: ignore[misc]
    def apply(self, prog: Any) -> None:
        return None


def test_pass_registry() -> None:
    name = "mil_sparsity_test::probe"
    assert private.registered_pass(name) is None
    private.register_pass(_ProbePass, "mil_sparsity_test", "probe")
    try:
        assert private.registered_pass(name) is _ProbePass
        assert isinstance(private.pass_instance(name), _ProbePass)
        assert private.registered_passes()[ms.SPARSE_PACK] is private.registered_pass(ms.SPARSE_PACK)
    finally:
        del private.registered_passes()[name]
    assert private.registered_pass(name) is None


def test_prune_weights_pass_class() -> None:
    cls = private.prune_weights_pass_class()
    assert issubclass(cls, AbstractGraphPass)
    weight = np.array([[0.5, -0.01], [0.02, -2.0]], dtype=np.float32)
    params = cls.compress_by_threshold(weight, 0.1, 0.0)
    kept = np.unpackbits(np.asarray(params.mask, np.uint8), count=4, bitorder="little")
    np.testing.assert_array_equal(kept, [1, 0, 0, 1])
    np.testing.assert_array_equal(params.nonzero_data, [0.5, -2.0])


def test_unpack_sub_byte() -> None:
    values = np.array([3, 0, 1, 2, 3, 1, 0], dtype=np.uint8)  # 2-bit, LSB first
    bits = np.unpackbits(values[:, None], axis=1, bitorder="little")[:, :2].reshape(-1)
    packed = np.packbits(bits, bitorder="little")
    np.testing.assert_array_equal(private.unpack_sub_byte(packed, 2, values.size, False), values)
    signed = private.unpack_sub_byte(np.array([0xF7], dtype=np.uint8), 4, 2, True)
    np.testing.assert_array_equal(signed, np.array([7, -1], dtype=np.int8))


def test_blob_storage_writer(tmp_path: Any) -> None:
    path = str(tmp_path / "weight.bin")
    writer = private.blob_storage_writer(path)
    data = np.arange(10, dtype=np.float32)
    offset = int(writer.write_float_data(data))
    del writer  # the writer flushes when released
    with BlobReader(path) as reader:
        info = reader.info(offset)
        assert info.dtype_name == "fp32"
        np.testing.assert_array_equal(reader.read_values(info), data)


def test_model_package_class(tmp_path: Any) -> None:
    path = str(tmp_path / "m.mlpackage")
    _model().save(path)
    ModelPackage = private.model_package_class()
    assert ModelPackage.isValid(path)
    package = ModelPackage(path)
    assert os.path.isfile(package.getRootModel().path())
    weights = package.findItemByNameAuthor("weights", "com.apple.CoreML")
    assert weights is not None and os.path.isfile(os.path.join(weights.path(), "weight.bin"))


def test_no_other_module_imports_private_coremltools_symbols() -> None:
    """The wrappers above are the only way in: grep the package for the private spellings."""
    import mil_sparsity

    root = os.path.dirname(mil_sparsity.__file__)
    private_spellings = (
        "_deployment_compatibility", "optimize._utils", "libmilstoragepython", "libmodelpackage",
        "milinternal", "milproto", "PassPipelineManager", "PASS_REGISTRY", "np_uint1_dtype",
        "consuming_blocks", "nptype_from_builtin", "materialized_val_inference", "ct._OPSET",
        '"CoreML', "__proxy__",
    )
    offenders = []
    for folder, _, files in os.walk(root):
        for file_name in files:
            path = os.path.join(folder, file_name)
            if not file_name.endswith(".py") or path == private.__file__:
                continue
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            offenders += [f"{os.path.relpath(path, root)}: {s}" for s in private_spellings if s in text]
    assert offenders == [], offenders


@pytest.mark.parametrize("name", private.__all__)
def test_every_export_exists(name: str) -> None:
    assert getattr(private, name) is not None
