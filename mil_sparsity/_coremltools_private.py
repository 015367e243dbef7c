"""Every private or undocumented coremltools symbol mil_sparsity uses, and only here.

Each symbol gets one small wrapper (or alias) and one test in
``tests/test_coremltools_private.py`` that fails loudly when a coremltools release moves it.
When a supported release spells a symbol differently, its alternative lives next to it here,
chosen by import (``try``/``except ImportError``) or by attribute, never by version string.

Public spellings are used elsewhere where they exist: ``ct.target`` (the deployment targets),
``ct.PassPipeline``, ``mb`` (the Builder), the ``register_pass`` decorator, and the graph API
coremltools documents for custom passes (``Block.replace_uses_of_var_after_op``,
``Block.remove_ops``, ``Var.child_ops``, ``Operation.enclosing_block``).

The native libraries (``libmilstoragepython``, ``libmodelpackage``) are imported when first
used, so ``import mil_sparsity`` does not need them.
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping, Optional

import numpy as np
from numpy.typing import NDArray

import coremltools as ct
from coremltools.converters.mil.converter import mil_convert as _mil_convert
from coremltools.converters.mil.frontend.milproto import load as _milproto
from coremltools.converters.mil.mil import types as _types
from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager as _Manager
from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY as _REGISTRY
from coremltools.converters.mil.mil.passes.pass_registry import register_pass as _register_pass

# ---- types ----------------------------------------------------------------------------------

#: numpy dtype PyMIL uses for uint1 values (uint8 storage, sub-byte type in its metadata)
UINT1_DTYPE: np.dtype[Any] = np.dtype(_types.np_uint1_dtype)


def numpy_dtype_of(builtin_type: Any) -> np.dtype[Any]:
    """The numpy dtype PyMIL holds values of a MIL builtin type in (``types.fp16`` -> float16)."""
    dtype: np.dtype[Any] = np.dtype(_types.nptype_from_builtin(builtin_type))
    return dtype


def is_tensor_type(sym_type: Any) -> bool:
    """True if a var's ``sym_type`` is a tensor type (not a scalar, list or state)."""
    return bool(_types.is_tensor(sym_type))


def is_state_type(sym_type: Any) -> bool:
    """True if a var's ``sym_type`` is a state (an iOS18 ``ct.StateType`` function input)."""
    return bool(_types.is_state(sym_type))


def bit_width(builtin_type: Any) -> Optional[int]:
    """Bits per element of a MIL scalar type (1 for uint1, 16 for fp16), None if it has none."""
    getter = getattr(builtin_type, "get_bitwidth", None)
    width = getter() if getter is not None else None
    return width if isinstance(width, int) else None


# ---- deployment targets and opsets -----------------------------------------------------------

def _opset_names() -> dict[int, str]:
    """Specification version (the value of a ``ct.target`` member) -> ML Program opset name."""
    return {int(version): str(name) for version, name in getattr(ct, "_OPSET").items()}


#: ``ct.target`` value -> opset name of an ML Program function (``"CoreML6"`` for iOS16)
OPSET_NAMES: Mapping[int, str] = _opset_names()


# ---- program graph ---------------------------------------------------------------------------

def feeds_block_output(var: Any) -> bool:
    """True if ``var`` is an output of some block (``Var.consuming_blocks``)."""
    return len(var.consuming_blocks) > 0


def materialized_value(op: Any) -> NDArray[Any]:
    """The dense value a ``constexpr_*`` op decompresses to, computed in numpy."""
    value: NDArray[Any] = op.materialized_val_inference()
    return value


#: iOS18 constexpr op type -> the inputs its class's ``decompress`` takes, in order
_DECOMPRESS_INPUTS: Mapping[str, tuple[str, ...]] = {
    "constexpr_blockwise_shift_scale": ("data", "scale", "offset"),
    "constexpr_lut_to_dense": ("indices", "lut", "vector_axis"),
    "constexpr_sparse_to_dense": ("nonzero_data", "mask"),
    "constexpr_lut_to_sparse": ("indices_mask", "indices_nonzero_data", "lut", "vector_axis"),
    "constexpr_sparse_blockwise_shift_scale": ("data_mask", "nonzero_data", "scale", "offset"),
}


def decompressed_value(op: Any, inputs: Mapping[str, Any]) -> Any:
    """What an iOS18 ``constexpr_*`` op decompresses ``inputs`` (input name -> value) to, by its
    class's ``decompress``: for an op fed by another constexpr op, whose input therefore has
    no ``.val`` for ``materialized_val_inference`` to read (coremltools chains only some).
    None for op types without ``decompress``."""
    names = _DECOMPRESS_INPUTS.get(op.op_type)
    if names is None:
        return None
    axis = inputs.get("vector_axis")
    values = [
        (None if axis is None else int(np.asarray(axis))) if name == "vector_axis" else inputs.get(name)
        for name in names
    ]
    return type(op).decompress(*values)


# ---- loading, exporting and running pipelines ------------------------------------------------

def program_from_spec(spec: Any, weights_dir: str, specification_version: Optional[int] = None) -> Any:
    """The PyMIL Program of an ML Program model spec (every function), its functions at the
    opset of ``specification_version`` (default: the spec's own; never lower than it)."""
    version = spec.specificationVersion if specification_version is None else specification_version
    return _milproto.load(spec, specification_version=version, file_weights_dir=weights_dir)


def mlmodel_from_program(prog: Any, *, specification_version: int, compute_units: Any, model_description: Any) -> Any:
    """Export a finished PyMIL Program as an MLModel without running any pass or loading it."""
    return _mil_convert(
        prog,
        convert_to="mlprogram",
        convert_from="milinternal",
        specification_version=specification_version,
        compute_units=compute_units,
        model_description=model_description,
        skip_model_load=True,
    )


def is_loaded(mlmodel: Any) -> bool:
    """True if Core ML compiled and loaded ``mlmodel`` (it can predict): its ``__proxy__`` is
    set. coremltools' post-hoc compression loads its result exactly when this holds for its
    input (``_apply_graph_pass``: ``skip_model_load = mlmodel.__proxy__ is None``); never off
    macOS, nor for a model constructed with ``skip_model_load=True``."""
    return mlmodel.__proxy__ is not None


def run_pipeline(prog: Any, pipeline: Any) -> None:
    """Apply a ``ct.PassPipeline`` to a PyMIL Program in place."""
    _Manager.apply_pipeline(prog, pipeline)


# ---- the pass registry -----------------------------------------------------------------------

def registered_passes() -> MutableMapping[str, Any]:
    """The registry's live map of ``"namespace::name"`` -> pass class."""
    passes: MutableMapping[str, Any] = _REGISTRY.passes
    return passes


def registered_pass(name: str) -> Optional[type]:
    """The pass class registered under ``name``, or None."""
    cls: Optional[type] = registered_passes().get(name)
    return cls


def pass_instance(name: str) -> Any:
    """A fresh instance of the pass registered under ``name`` (KeyError if none)."""
    return _REGISTRY[name]


def register_pass(cls: type, namespace: str, name: str) -> None:
    """Register ``cls`` as ``namespace::name``, replacing an existing entry (public decorator)."""
    _register_pass(namespace=namespace, override=True, name=name)(cls)


# ---- coremltools' own pruner, the reference of the parity tests --------------------------------

def prune_weights_pass_class() -> Any:
    """The graph pass class behind ``compression::prune_weights`` (its ``compress_by_*`` static
    methods are what the parity tests compare the kernels with)."""
    from coremltools.optimize.coreml._quantization_passes import prune_weights

    return prune_weights


# ---- weight files and packages (native libraries, imported on first use) --------------------

def unpack_sub_byte(packed: NDArray[np.uint8], bits: int, count: int, signed: bool) -> NDArray[Any]:
    """``count`` elements of ``bits`` bits each from LSB-first packed bytes (int8 if signed)."""
    try:
        from coremltools.optimize._utils import restore_elements_from_packed_bits
    except ImportError:  # coremltools 8.1 keeps it in optimize.coreml._utils
        from coremltools.optimize.coreml._utils import restore_elements_from_packed_bits

    unpacked: NDArray[Any] = restore_elements_from_packed_bits(packed, bits, count, signed)
    return unpacked


def blob_storage_writer(path: str) -> Any:
    """coremltools' writer of a new Core ML weight file (``write_<dtype>_data`` methods)."""
    from coremltools.libmilstoragepython import _BlobStorageWriter

    return _BlobStorageWriter(path)


def model_package_class() -> Any:
    """coremltools' ``ModelPackage`` (reads an .mlpackage manifest)."""
    from coremltools.libmodelpackage import ModelPackage

    return ModelPackage


__all__ = [
    "OPSET_NAMES",
    "UINT1_DTYPE",
    "bit_width",
    "decompressed_value",
    "blob_storage_writer",
    "feeds_block_output",
    "is_loaded",
    "is_state_type",
    "is_tensor_type",
    "materialized_value",
    "mlmodel_from_program",
    "model_package_class",
    "numpy_dtype_of",
    "pass_instance",
    "program_from_spec",
    "prune_weights_pass_class",
    "register_pass",
    "registered_pass",
    "registered_passes",
    "run_pipeline",
    "unpack_sub_byte",
]
