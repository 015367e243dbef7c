"""sparse_format: the one description of the sparse format, checked against coremltools."""

from __future__ import annotations

import numpy as np
import pytest

import coremltools as ct
from coremltools.proto import MIL_pb2

from mil_sparsity import _coremltools_private as private
from mil_sparsity.format import sparse_format
from mil_sparsity.plan import catalog
from mil_sparsity.kernels import pack_sparse


def test_dtype_table_matches_the_spec_and_the_blob_writer(tmp_path) -> None:
    writer = private.blob_storage_writer(str(tmp_path / "weight.bin"))
    for dtype in sparse_format.DTYPES:
        assert MIL_pb2.DataType.Value(dtype.spec_name) > 0, dtype
        assert np.dtype(dtype.numpy).itemsize * 8 >= dtype.bits, dtype
        method = "write_float_data" if dtype.name == "fp32" else f"write_{dtype.name}_data"
        assert hasattr(writer, method), (dtype, method)
    for lookup in (sparse_format.BY_NAME, sparse_format.BY_BLOB_CODE, sparse_format.BY_SPEC_NAME):
        assert len(lookup) == len(sparse_format.DTYPES)  # every key is unique
    assert sparse_format.WEIGHT_NUMPY_DTYPES == {"float16", "float32", "int8", "uint8"}


def test_every_target_has_an_opset_and_the_right_form() -> None:
    for target in ct.target:
        opset = private.OPSET_NAMES[target.value]
        assert sparse_format.target_of_opset("main", opset) is target
        form = sparse_format.sparse_form(target)
        if target < ct.target.iOS16:
            assert form is None
            with pytest.raises(ValueError, match=r"minimum_deployment_target=ct\.target\.iOS16"):
                sparse_format.checked_form("main", target)
        elif target < ct.target.iOS18:
            assert form is sparse_format.PACKED_MASK_FORM
        else:
            assert form is sparse_format.UINT1_MASK_FORM
    with pytest.raises(ValueError, match="unknown opset 'CoreML99'"):
        sparse_format.target_of_opset("main", "CoreML99")


@pytest.mark.parametrize("form", [sparse_format.PACKED_MASK_FORM, sparse_format.UINT1_MASK_FORM], ids=["iOS16", "iOS18"])
def test_replacement_describes_the_sparse_op(form: sparse_format.SparseForm) -> None:
    weight = np.array([[0, 1.5, 0], [-2, 0, 0], [0, 0, 3], [4, 0, 0]], dtype=np.float16)
    replacement = sparse_format.replacement("w", pack_sparse(weight), form)
    assert replacement.name == "w_sparse"
    tensors = {tensor.input_name: tensor for tensor in replacement.tensors}
    np.testing.assert_array_equal(tensors["nonzero_data"].values, np.array([1.5, -2, 3, 4], np.float16))
    assert tensors["nonzero_data"].dtype == "fp16" and tensors["nonzero_data"].shape == (4,)
    mask = weight != 0
    if form.packed_mask:
        assert list(tensors) == ["nonzero_data", "mask", "shape"]
        assert tensors["mask"].dtype == "uint8" and tensors["mask"].shape == (2,)
        np.testing.assert_array_equal(tensors["mask"].values, np.packbits(mask.reshape(-1), bitorder="little"))
        assert tensors["shape"].inline and tensors["shape"].dtype == "uint32"
        np.testing.assert_array_equal(tensors["shape"].values, np.array([4, 3], np.uint32))
    else:
        assert list(tensors) == ["nonzero_data", "mask"]
        assert tensors["mask"].dtype == "uint1" and tensors["mask"].shape == (4, 3)
        np.testing.assert_array_equal(tensors["mask"].values, mask.astype(np.uint8))


def test_streaming_obstacle() -> None:
    ok = {"mil_sparsity::sparse_pack": ["config", "report"]}
    assert catalog.streaming_obstacle(list(ok), ok) is None
    assert "streaming runs only mil_sparsity passes; the pipeline has 'common::noop'" in str(
        catalog.streaming_obstacle(["mil_sparsity::sparse_pack", "common::noop"], ok)
    )
    options = {"mil_sparsity::sparse_pack": ["joint_compression"]}
    assert "option 'joint_compression' is not supported when streaming" in str(
        catalog.streaming_obstacle(list(options), options)
    )
