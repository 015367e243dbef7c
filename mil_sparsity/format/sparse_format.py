"""The sparse weight format, described once for both rewriters (PyMIL passes and streaming).

* :data:`DTYPES`: the one dtype table. Each MIL tensor type with its blob-file name and code,
  its spec (``MIL_pb2.DataType``) name, the numpy dtype PyMIL holds it in, its bit width, and
  whether a const of that type is a weight the passes consider; with the bit widths of the
  other spec types (:func:`spec_type_bits`) and the model description's input array types
  (:data:`ARRAY_FEATURE_DTYPES`).
* :func:`sparse_form`: deployment target -> form of ``constexpr_sparse_to_dense``. iOS16/17:
  ``nonzero_data``, a uint8 ``mask`` of packed bits (LSB first, row-major) and a uint32
  ``shape``, stored as op attributes in the spec. iOS18+: ``nonzero_data`` and a uint1 ``mask``
  with the weight's shape, stored as op inputs. Opset names (``CoreML6``) map to targets
  through the same table (:func:`target_of_opset`).
* :class:`SparseReplacement`: what replaces a const ``w``, as data: the new op's name
  (``<w>_sparse``), its form, and its tensors under PyMIL's input names. ``model.pymil`` renders it
  with the Builder, ``streaming`` as blobs plus spec fields. :func:`joint_name`: the name of
  the op joint compression puts in place of a palettized / quantized op; :func:`dense_name`:
  back from a compression op's name to the const it replaced.

Changing an opset's form or the op's encoding is one edit here.
"""

from __future__ import annotations

import re
from typing import Any, Final, Mapping, Optional

import attrs
import coremltools as ct
import numpy as np
from coremltools.proto import FeatureTypes_pb2, MIL_pb2
from numpy.typing import NDArray

from mil_sparsity.errors import InvalidInputError
from mil_sparsity import _coremltools_private as private
from mil_sparsity.kernels import SparseWeight, pack_mask_bits

# ---- dtypes -----------------------------------------------------------------------------------


@attrs.frozen
class MilDtype:
    """One MIL tensor type as every path names and stores it."""

    name: str  # MIL / blob-file name: "fp16"
    spec_name: str  # MIL_pb2.DataType name: "FLOAT16"
    blob_code: int  # dtype code in a weight file's blob metadata
    numpy: str  # numpy dtype PyMIL holds values in (sub-byte types: one per int8/uint8 item)
    bits: int
    weight: bool  # a const of this type is a weight the passes consider


DTYPES: Final[tuple[MilDtype, ...]] = (
    MilDtype("fp16", "FLOAT16", 1, "float16", 16, True),
    MilDtype("fp32", "FLOAT32", 2, "float32", 32, True),
    MilDtype("uint8", "UINT8", 3, "uint8", 8, True),
    MilDtype("int8", "INT8", 4, "int8", 8, True),
    MilDtype("int16", "INT16", 6, "int16", 16, False),
    MilDtype("uint16", "UINT16", 7, "uint16", 16, False),
    MilDtype("int4", "INT4", 8, "int8", 4, False),
    MilDtype("uint1", "UINT1", 9, "uint8", 1, False),
    MilDtype("uint2", "UINT2", 10, "uint8", 2, False),
    MilDtype("uint4", "UINT4", 11, "uint8", 4, False),
    MilDtype("uint3", "UINT3", 12, "uint8", 3, False),
    MilDtype("uint6", "UINT6", 13, "uint8", 6, False),
    MilDtype("int32", "INT32", 14, "int32", 32, False),
    MilDtype("uint32", "UINT32", 15, "uint32", 32, False),
)
BY_NAME: Final[Mapping[str, MilDtype]] = {dtype.name: dtype for dtype in DTYPES}
BY_BLOB_CODE: Final[Mapping[int, MilDtype]] = {dtype.blob_code: dtype for dtype in DTYPES}
BY_SPEC_NAME: Final[Mapping[str, MilDtype]] = {dtype.spec_name: dtype for dtype in DTYPES}
#: numpy dtype names of weights (what ``Weight.dtype`` holds)
WEIGHT_NUMPY_DTYPES: Final = frozenset(dtype.numpy for dtype in DTYPES if dtype.weight)
#: numpy dtype name of a weight -> its MIL type
WEIGHT_DTYPE_OF_NUMPY: Final[Mapping[str, MilDtype]] = {
    dtype.numpy: dtype for dtype in DTYPES if dtype.weight
}


def numpy_dtype_of_spec(spec_name: str) -> Optional[str]:
    """The numpy dtype PyMIL loads a stored tensor of this spec type as, if it reads as a weight
    dtype (sub-byte types do: uint4 reads as uint8); None otherwise."""
    dtype = BY_SPEC_NAME.get(spec_name)
    return dtype.numpy if dtype is not None and dtype.numpy in WEIGHT_NUMPY_DTYPES else None


#: bits of the spec types outside :data:`DTYPES` (for the memory bound of a declared tensor)
_OTHER_SPEC_BITS: Final[Mapping[str, int]] = {"BOOL": 8, "FLOAT64": 64, "INT64": 64, "UINT64": 64, "BFLOAT16": 16}


def spec_type_name(code: int) -> Optional[str]:
    """The ``MIL_pb2.DataType`` name of a spec's tensor data type code; None for an unknown code."""
    return str(MIL_pb2.DataType.Name(code)) if code in MIL_pb2.DataType.values() else None


def spec_type_bits(spec_name: str) -> int:
    """Bits per element of a spec type (8 for a type not known here)."""
    dtype = BY_SPEC_NAME.get(spec_name)
    return dtype.bits if dtype is not None else _OTHER_SPEC_BITS.get(spec_name, 8)


_ARRAY_DATA_TYPE: Final = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
#: a model description's multi-array input types that samples are drawn in (the
#: ``ArrayFeatureType.ArrayDataType`` code -> numpy dtype name); INT8 inputs are not sampled
ARRAY_FEATURE_DTYPES: Final[Mapping[int, str]] = {
    int(_ARRAY_DATA_TYPE.Value(name)): numpy
    for name, numpy in (("FLOAT32", "float32"), ("FLOAT16", "float16"), ("DOUBLE", "float64"), ("INT32", "int32"))
}


# ---- deployment targets and sparse forms ------------------------------------------------------


@attrs.frozen
class SparseForm:
    """How ``constexpr_sparse_to_dense`` encodes a weight on targets from ``since`` on."""

    since: Any  # a ct.target member
    mask_dtype: str  # a DTYPES name
    packed_mask: bool  # 8 mask bits per byte, LSB first (else one element per mask bit)
    with_shape: bool  # a uint32 ``shape`` input (the dense shape)
    spec_attributes: bool  # the spec stores the tensors as op attributes (else op inputs)


PACKED_MASK_FORM: Final = SparseForm(ct.target.iOS16, "uint8", True, True, True)
UINT1_MASK_FORM: Final = SparseForm(ct.target.iOS18, "uint1", False, False, False)
_FORMS_NEWEST_FIRST: Final = (UINT1_MASK_FORM, PACKED_MASK_FORM)
MINIMUM_TARGET: Final = PACKED_MASK_FORM.since

OP_TYPE: Final = "constexpr_sparse_to_dense"
#: PyMIL's input names of constexpr_sparse_to_dense
NONZERO_DATA: Final = "nonzero_data"
MASK: Final = "mask"
SHAPE: Final = "shape"

#: ML Program opset name (CoreML6) -> deployment target (ct.target.iOS16)
TARGET_OF_OPSET: Final[Mapping[str, Any]] = {
    private.OPSET_NAMES[target.value]: target for target in ct.target if target.value in private.OPSET_NAMES
}


def target_name(target: Any) -> str:
    """``"iOS16"`` for ct.target.iOS16 (the value's own spelling for anything else)."""
    return str(getattr(target, "name", target))


def target_of_opset(function_name: str, opset: str) -> Any:
    """The deployment target of an ML Program function's opset name; ValueError if unknown."""
    if opset not in TARGET_OF_OPSET:
        raise InvalidInputError(f"function {function_name!r}: unknown opset {opset!r}")
    return TARGET_OF_OPSET[opset]


def sparse_form(target: Any) -> Optional[SparseForm]:
    """The sparse form of a deployment target; None before iOS16 (no sparse op)."""
    if target is None:
        return None
    return next((form for form in _FORMS_NEWEST_FIRST if target >= form.since), None)


def checked_form(function_name: str, target: Any, prefix: str = "") -> SparseForm:
    """:func:`sparse_form`, or ValueError naming the function and the target to convert with."""
    form = sparse_form(target)
    if form is None:
        raise InvalidInputError(
            f"{prefix}function {function_name!r} targets {target_name(target)}, but "
            f"{OP_TYPE} needs {target_name(MINIMUM_TARGET)} or later. Convert with "
            f"minimum_deployment_target=ct.target.{target_name(MINIMUM_TARGET)} (or later; "
            f"{target_name(UINT1_MASK_FORM.since)} gives the compact uint1 mask form)."
        )
    return form


# ---- the replacement --------------------------------------------------------------------------


@attrs.frozen
class SparseTensor:
    """One input of the sparse op: PyMIL's input name, MIL type, shape and values.

    ``values`` hold one element per array item (a uint1 mask: one byte, 0 or 1, per bit).
    ``inline``: stored in the spec itself (the small shape vector), not in the weight file.
    """

    input_name: str
    dtype: str  # a DTYPES name
    shape: tuple[int, ...]
    values: NDArray[Any] = attrs.field(eq=False, repr=False)
    inline: bool = False


@attrs.frozen
class SparseReplacement:
    """``const(w)`` -> ``constexpr_sparse_to_dense(tensors...)`` named ``name``."""

    name: str
    form: SparseForm
    tensors: tuple[SparseTensor, ...]


def saved_name(name: str) -> str:
    """The name a saved ML Program gives a MIL op named ``name``: names must match
    ``[a-zA-Z_][a-zA-Z0-9_]*``, so every other character becomes ``_`` and a name that starts
    with anything but a letter or ``_`` gets the prefix ``op_``. Inside ct.convert a pass sees
    the names before the backend renames them (``conv.weight_to_fp16``); statistics collected
    on the saved dense model hold the saved ones (``conv_weight_to_fp16``)."""
    cleaned = re.sub("[^a-zA-Z0-9_]", "_", name)
    return cleaned if re.match("[a-zA-Z_]", cleaned) else f"op_{cleaned}"


def replacement_name(const_name: str) -> str:
    return f"{const_name}_sparse"


#: joint compression (``passes/_joint.py``): the op that gives a palettized / quantized weight
#: its sparse mask -> the suffix its name adds to the name of the op it replaces
JOINT_SUFFIXES: Final[Mapping[str, str]] = {
    "constexpr_lut_to_sparse": "_lut_to_sparse",
    "constexpr_sparse_blockwise_shift_scale": "_sparse_shift_scale",
}


def joint_name(compressed_name: str, joint_op_type: str) -> str:
    """The name of the ``joint_op_type`` op that replaces the compressed op ``compressed_name``."""
    return f"{compressed_name}{JOINT_SUFFIXES[joint_op_type]}"


#: what compression passes append to the name of the const they replace: ours
#: (:func:`replacement_name`), then coremltools' ``optimize.coreml`` ones (longer ones first)
COMPRESSION_SUFFIXES: Final[tuple[str, ...]] = (
    replacement_name(""),
    "_sparsified",
    "_palettized_pcs",
    "_palettized",
    "_quantized",
)


def dense_name(op_name: str, op_type: str) -> str:
    """The name of the const that the compression op ``op_name`` (of ``op_type``) replaced:
    without the joint suffix an op of joint compression adds (:data:`JOINT_SUFFIXES`), then
    without the first of :data:`COMPRESSION_SUFFIXES` it ends with; ``w_palettized_lut_to_sparse``
    -> ``w``. A suffix that is the whole name stays."""
    joint_suffix = JOINT_SUFFIXES.get(op_type)
    if joint_suffix is not None:
        op_name = _without_suffix(op_name, (joint_suffix,))
    return _without_suffix(op_name, COMPRESSION_SUFFIXES)


def _without_suffix(name: str, suffixes: tuple[str, ...]) -> str:
    """``name`` without the first of ``suffixes`` it ends with (unchanged if none, or if nothing
    would be left)."""
    for suffix in suffixes:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def replacement(const_name: str, sparse: SparseWeight, form: SparseForm) -> SparseReplacement:
    """The sparse op that replaces ``const_name`` in ``form``."""
    return SparseReplacement(replacement_name(const_name), form, sparse_tensors(sparse, form))


def sparse_tensors(sparse: SparseWeight, form: SparseForm) -> tuple[SparseTensor, ...]:
    """The sparse op's tensors in ``form``, in input order.

    The bool mask is not kept: the packed form holds 1 bit per element, the uint1 form one byte
    per element (as PyMIL stores it).
    """
    shape = tuple(int(size) for size in sparse.shape)
    mask = pack_mask_bits(sparse.mask) if form.packed_mask else sparse.mask.view(np.uint8)
    weight_dtype = WEIGHT_DTYPE_OF_NUMPY[sparse.nonzero_data.dtype.name].name
    return sparse_tensor_layout(weight_dtype, int(sparse.nonzero_data.size), shape, form, sparse.nonzero_data, mask)


_NO_VALUES: Final = np.empty(0, dtype=np.uint8)


def sparse_tensor_layout(
    weight_dtype: str,
    nonzero_count: int,
    shape: tuple[int, ...],
    form: SparseForm,
    nonzero_data: NDArray[Any] = _NO_VALUES,
    mask: NDArray[np.uint8] = _NO_VALUES,
) -> tuple[SparseTensor, ...]:
    """The sparse op's tensors (types, shapes) for a weight of ``shape`` with ``nonzero_count``
    stored values; ``mask`` holds the packed bits (packed form: ``ceil(size / 8)`` bytes) or one
    byte per element (uint1 form). Streaming's chunked writer passes no values: it writes them
    to the weight file itself."""
    nonzero = SparseTensor(NONZERO_DATA, weight_dtype, (nonzero_count,), nonzero_data)
    if form.packed_mask:
        size = int(np.prod(shape, dtype=np.int64))
        mask_tensor = SparseTensor(MASK, form.mask_dtype, ((size + 7) // 8,), mask)
    else:
        mask_tensor = SparseTensor(MASK, form.mask_dtype, shape, mask)
    tensors = [nonzero, mask_tensor]
    if form.with_shape:
        tensors.append(SparseTensor(SHAPE, "uint32", (len(shape),), np.asarray(shape, dtype=np.uint32), inline=True))
    return tuple(tensors)
