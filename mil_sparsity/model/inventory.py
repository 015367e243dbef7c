"""One weight inventory, for a PyMIL program and for a model spec alike.

A :class:`Weight` is plain data: its function, its name in the program and the name a saved
model gives it, its dense shape and dtype, how it is stored, and every op that reads it with
the input names and each input's product role (the reduction axis: :mod:`mil_sparsity.model.products`).
The selection rules, the report, ``inspect``, streaming, calibration and ``ms.weights`` all read it.

What counts as a weight:

* a ``const`` of a weight dtype (fp16, fp32, int8, uint8) and rank >= 1. Storage: ``const``
  in a PyMIL program (where a value lives after loading is not kept), ``inline`` or ``blob``
  in a spec (coremltools inlines fewer than 10 elements);
* a value stored for a ``constexpr_*`` op (its ``nonzero_data``, ``mask``, ``indices``, ...);
  PyMIL shows them as consts read by the constexpr op, a spec as the op's own values (named
  ``<op>_<input>`` here, as streaming reports them); storage as above;
* the end of a decompression chain: a ``constexpr_*`` op none of whose outputs feeds another
  one. Storage: ``sparse``, ``palettized``, ``quantized``, or ``joint`` for more than one
  compression; ``chain`` lists the op types, last one first.

Nothing here reads a weight's value.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Final, Iterable, Iterator, Mapping, Optional, TypeVar, Union

import attrs
import numpy as np

from mil_sparsity.model.products import NotAProduct, ProductRole
from mil_sparsity.format.sparse_format import (
    BY_SPEC_NAME,
    dense_name,
    numpy_dtype_of_spec,
    saved_name,
    spec_type_name,
)

T = TypeVar("T")

CONSTEXPR_PREFIX: Final = "constexpr_"

CONST: Final = "const"
INLINE: Final = "inline"
BLOB: Final = "blob"
DENSE: Final = "dense"
SPARSE: Final = "sparse"
PALETTIZED: Final = "palettized"
QUANTIZED: Final = "quantized"
JOINT: Final = "joint"
#: storages of an uncompressed value
UNCOMPRESSED: Final = frozenset({CONST, INLINE, BLOB})

#: the compression(s) each constexpr op stands for; unknown constexpr ops count as their own kind
COMPRESSIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "constexpr_sparse_to_dense": (SPARSE,),
    "constexpr_lut_to_dense": (PALETTIZED,),
    "constexpr_lut_to_sparse": (PALETTIZED, SPARSE),
    "constexpr_affine_dequantize": (QUANTIZED,),
    "constexpr_blockwise_shift_scale": (QUANTIZED,),
    "constexpr_sparse_blockwise_shift_scale": (QUANTIZED, SPARSE),
    "constexpr_cast": (),  # a precision cast of a stored const, not a compression
}


def is_constexpr(op_type: object) -> bool:
    """True for the op types that decompress a stored weight at load time (``constexpr_*``)."""
    return str(op_type).startswith(CONSTEXPR_PREFIX)


def walk_chain(op: T, upstream: Callable[[T], Iterable[T]]) -> list[T]:
    """``op`` and every constexpr op it reads from (``upstream(op)``), transitively; ``op``
    first, each once. Both the PyMIL and the spec inventory walk decompression chains so."""
    found: list[T] = []
    seen: set[int] = set()
    pending = [op]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        pending.extend(upstream(current))
    return found


def storage_kind(chain: tuple[str, ...]) -> str:
    """dense / sparse / palettized / quantized, or joint for more than one compression."""
    kinds: list[str] = []
    for op_type in chain:
        for kind in COMPRESSIONS.get(op_type, (op_type[len(CONSTEXPR_PREFIX):],)):
            if kind not in kinds:
                kinds.append(kind)
    if not kinds:
        return DENSE
    return kinds[0] if len(kinds) == 1 else JOINT


@attrs.frozen
class Consumer:
    """One op reading a weight, the input names under which it reads it, and for each of those
    inputs its product role (:func:`mil_sparsity.model.products.product_role`; None: not read)."""

    name: str
    op_type: str
    input_names: tuple[str, ...]
    roles: tuple[Union[ProductRole, NotAProduct, None], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.name,
            "op_type": self.op_type,
            "inputs": list(self.input_names),
            "reduction_axes": [role.weight_axis if isinstance(role, ProductRole) else None for role in self.roles],
        }


@attrs.frozen
class Weight:
    """One weight of a model (see the module doc). ``name`` is the op's name in the program
    it was read from; :attr:`saved_name` is how a saved model, its reports and statistics
    spell it (they differ only inside ``ct.convert``)."""

    function: str
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype of the dense value
    consumers: tuple[Consumer, ...]
    feeds_block_output: bool
    storage: str = CONST
    chain: tuple[str, ...] = ()

    @property
    def saved_name(self) -> str:
        return saved_name(self.name)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def consumer_types(self) -> tuple[str, ...]:
        return tuple(consumer.op_type for consumer in self.consumers)

    @property
    def compressed(self) -> bool:
        return self.storage not in UNCOMPRESSED

    @property
    def feeds_constexpr(self) -> bool:
        return any(is_constexpr(op_type) for op_type in self.consumer_types)

    def to_dict(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "name": self.name,
            "saved_name": self.saved_name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "storage": self.storage,
            "chain": list(self.chain),
            "readers": [consumer.to_dict() for consumer in self.consumers],
            "feeds_block_output": self.feeds_block_output,
        }


# ---- a PyMIL program ---------------------------------------------------------------------------

@attrs.frozen
class ProgramWeight:
    """A weight of a PyMIL program with the op (const or chain end) and block that hold it, and
    ``source_name``: the name of the dense const it stands for (statistics are kept under it).
    A const's own name; for a chain end, the name of the chain's first op (reached through each
    op's first constexpr input) without its compression suffixes
    (:func:`mil_sparsity.format.sparse_format.dense_name`)."""

    weight: Weight
    op: Any
    block: Any
    source_name: str


def program_weights(prog: Any) -> list[ProgramWeight]:
    """Every weight of every function and nested block of a PyMIL program, in program order."""
    return [found for name, function in prog.functions.items() for found in function_weights(str(name), function)]


def function_weights(function_name: str, function: Any) -> Iterator[ProgramWeight]:
    """Every weight of one function of a PyMIL program and its nested blocks, in program order."""
    from mil_sparsity.model import pymil as _graph

    for block in _graph.iter_blocks(function):
        consts = {id(op) for op in _graph.weight_consts(block)}
        for op in list(block.operations):
            if id(op) in consts:
                weight = _graph.weight_site(function_name, op)
                yield ProgramWeight(weight, op, block, weight.name)
            elif is_constexpr(op.op_type) and not any(
                is_constexpr(reader.op_type) for var in op.outputs for reader in var.child_ops
            ):
                chain = tuple(str(item.op_type) for item in _graph.constexpr_chain(op))
                weight = attrs.evolve(
                    _graph.weight_site(function_name, op), storage=storage_kind(chain), chain=chain
                )
                head = _graph.chain_head(op)
                yield ProgramWeight(weight, op, block, dense_name(str(head.name), str(head.op_type)))


# ---- a model spec ------------------------------------------------------------------------------

@attrs.frozen
class SpecWeight:
    """A weight of an ML Program spec with its proto op and, for a stored value, its Value."""

    weight: Weight
    op: Any
    value: Optional[Any]  # the proto Value holding the data (None for a chain end)


def _tensor_type(value_type: Any) -> Optional[tuple[str, tuple[int, ...]]]:
    """(spec DataType name, shape) of a static tensor type; None for anything else."""
    if value_type.WhichOneof("type") != "tensorType":
        return None
    tensor = value_type.tensorType
    if any(dim.WhichOneof("dimension") != "constant" for dim in tensor.dimensions):
        return None
    name = spec_type_name(int(tensor.dataType)) or ""
    return name, tuple(int(dim.constant.size) for dim in tensor.dimensions)


def _value_storage(value: Any) -> str:
    return BLOB if value.WhichOneof("value") == "blobFileValue" else INLINE


def spec_weights(spec: Any) -> list[SpecWeight]:
    """Every weight of every function and nested block of an ML Program spec, in spec order."""
    from mil_sparsity.model.spec import op_name, readers
    from mil_sparsity.format.package_guard import function_block, iter_blocks

    found: list[SpecWeight] = []
    for function_name, function in spec.mlProgram.functions.items():
        blocks = list(iter_blocks(function_block(function)))
        graph = _SpecGraph(
            str(function_name),
            readers(function, blocks),
            {name for block in blocks for name in block.outputs},
            {output.name: op for block in blocks for op in block.operations for output in op.outputs},
        )
        for block in blocks:
            for op in block.operations:
                if is_constexpr(op.type):
                    found.extend(graph.constexpr_weights(op, op_name(op)))
                elif op.type == "const" and "val" in op.attributes and op.outputs:
                    found.extend(graph.const_weight(op, op_name(op)))
    return found


@attrs.frozen
class _SpecGraph:
    """Who reads and who produces each var of one spec function."""

    function: str
    readers: Mapping[str, list[Consumer]]
    block_outputs: set[str]
    producers: Mapping[str, Any]

    def const_weight(self, op: Any, name: str) -> Iterator[SpecWeight]:
        value = op.attributes["val"]
        described = _tensor_type(value.type)
        dtype = BY_SPEC_NAME.get(described[0]) if described is not None else None
        if described is None or not described[1] or dtype is None or not dtype.weight:
            return
        output = op.outputs[0].name
        weight = Weight(
            function=self.function,
            name=name,
            shape=described[1],
            dtype=dtype.numpy,
            consumers=tuple(self.readers.get(output, ())),
            feeds_block_output=output in self.block_outputs,
            storage=_value_storage(value),
        )
        yield SpecWeight(weight, op, value)

    def constexpr_weights(self, op: Any, name: str) -> Iterator[SpecWeight]:
        """The values a constexpr op stores itself (named ``<op>_<input>``, read by the op),
        and the op as a chain end when no other constexpr op reads it."""
        from mil_sparsity.format.package_guard import op_values

        for key, value in op_values(op):
            described = _tensor_type(value.type)
            numpy_dtype = numpy_dtype_of_spec(described[0]) if described is not None else None
            if described is None or numpy_dtype is None or key == "name":
                continue
            weight = Weight(
                function=self.function,
                name=f"{name}_{key}",
                shape=described[1],
                dtype=numpy_dtype,
                consumers=(Consumer(name, str(op.type), (key,)),),
                feeds_block_output=False,
                storage=_value_storage(value),
            )
            yield SpecWeight(weight, op, value)
        outputs = [output.name for output in op.outputs]
        readers_of = [consumer for output in outputs for consumer in self.readers.get(output, ())]
        described = _tensor_type(op.outputs[0].type) if outputs else None
        if described is None or any(is_constexpr(consumer.op_type) for consumer in readers_of):
            return
        dtype = BY_SPEC_NAME.get(described[0])
        chain = tuple(str(item.type) for item in self._chain(op))
        weight = Weight(
            function=self.function,
            name=name,
            shape=described[1],
            dtype=dtype.numpy if dtype is not None else described[0].lower(),
            consumers=tuple(readers_of),
            feeds_block_output=any(output in self.block_outputs for output in outputs),
            storage=storage_kind(chain),
            chain=chain,
        )
        yield SpecWeight(weight, op, None)

    def _chain(self, op: Any) -> list[Any]:
        """``op`` and every constexpr op it reads from (:func:`walk_chain`)."""

        def upstream(current: Any) -> Iterator[Any]:
            for argument in current.inputs.values():
                for binding in argument.arguments:
                    producer = self.producers.get(binding.name) if binding.WhichOneof("binding") == "name" else None
                    if producer is not None and is_constexpr(producer.type):
                        yield producer

        return walk_chain(op, upstream)


def weights(model: Any) -> list[Weight]:
    """Every weight of ``model`` (an MLModel, the path of an .mlpackage, or a PyMIL Program),
    in program order, without reading any weight's value (see the module doc)."""
    from coremltools.converters.mil.mil.program import Program

    if isinstance(model, Program):
        return [item.weight for item in program_weights(model)]
    from mil_sparsity.model.io import load_model, ml_program_spec

    spec = ml_program_spec(load_model(model if not isinstance(model, os.PathLike) else os.fspath(model)))
    return [item.weight for item in spec_weights(spec)]


__all__ = [
    "Consumer",
    "ProgramWeight",
    "SpecWeight",
    "Weight",
    "function_weights",
    "is_constexpr",
    "program_weights",
    "spec_weights",
    "storage_kind",
    "weights",
]
