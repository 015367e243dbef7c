"""Read-only inspection of an ML Program: every weight, how it is stored and how sparse it is.

A *weight* is one of:

* a ``const`` whose value is a weight-typed array (fp16, fp32, int8, uint8; the same test the
  passes use, :func:`mil_sparsity.model.pymil.weight_consts`) that is not an input of a
  ``constexpr_*`` op: stored ``dense``;
* a ``constexpr_*`` op none of whose outputs feeds another ``constexpr_*`` op (the end of a
  decompression chain): stored ``sparse``, ``palettized``, ``quantized``, or ``joint`` when the
  chain combines more than one of these (``constexpr_lut_to_sparse`` ->
  ``constexpr_sparse_to_dense`` is palettized + sparse).

and it has more than ``weight_threshold`` elements (default 0: every weight, biases included).
Every function and every nested block (``cond``, ``while_loop``) is visited.

For each weight: the op types that consume it, its dense shape and dtype, its *sparsity* (the
fraction of exact zeros of the dense value; for a constexpr chain, of
its materialized value, so the whole chain is decompressed), and its *stored bytes*:
the sum over the ``const`` inputs of the chain of ``elements x bitwidth / 8`` (rounded up per
const), with the bitwidth of the MIL type, so a uint1 mask counts one bit per element and a
uint4 index tensor half a byte. This is the payload; the package on disk adds the program text
and 64-byte blob headers and alignment.

Nothing here modifies the program.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, Optional, Sequence

import attrs
import numpy as np
from coremltools.converters.mil.mil.operation import Operation
from coremltools.converters.mil.mil.program import Program
from coremltools.converters.mil.mil.var import Var

from mil_sparsity import _coremltools_private as private
from mil_sparsity.model import pymil as _graph
from mil_sparsity.format import sparse_format
from mil_sparsity.model import inventory
from mil_sparsity.kernels import SparseWeight, unpack_sparse, zero_fraction

# storage kinds and the compression table live in the inventory (one place)
DENSE, SPARSE, PALETTIZED, QUANTIZED, JOINT = inventory.DENSE, inventory.SPARSE, inventory.PALETTIZED, inventory.QUANTIZED, inventory.JOINT
CONSTEXPR_PREFIX = inventory.CONSTEXPR_PREFIX
COMPRESSIONS = inventory.COMPRESSIONS
storage_kind = inventory.storage_kind


@attrs.frozen
class WeightInfo:
    """One weight as stored in the program."""

    function: str
    name: str
    op_types: tuple[str, ...]  # types of the (non-constexpr) ops reading it
    shape: tuple[int, ...]
    dtype: str  # of the dense (decompressed) value
    sparsity: float  # fraction of exact zeros of the dense value
    storage: str  # dense / sparse / palettized / quantized / joint
    chain: tuple[str, ...]  # constexpr op types, last one first; () for a plain const
    stored_bytes: int
    dense_bytes: int

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        for key in ("op_types", "shape", "chain"):
            data[key] = list(data[key])
        return data


@attrs.frozen
class FunctionInfo:
    name: str
    opset: str
    weights: tuple[WeightInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "opset": self.opset,
            "weights": [weight.to_dict() for weight in self.weights],
            "totals": totals(self.weights),
        }


@attrs.frozen
class ModelInspection:
    """The weights of every function of a model, and the package's size on disk."""

    path: Optional[str]
    functions: tuple[FunctionInfo, ...]
    package_bytes: Optional[int]
    weight_threshold: int

    @property
    def weights(self) -> list[WeightInfo]:
        return [weight for function in self.functions for weight in function.weights]

    def totals(self) -> dict[str, Any]:
        return totals(self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.path,
            "weight_threshold": self.weight_threshold,
            "functions": [function.to_dict() for function in self.functions],
            "totals": self.totals(),
            "package_bytes": self.package_bytes,
        }

    def format_table(self) -> str:
        """Plain text: one table per function, then the totals and the size on disk."""
        lines: list[str] = []
        header = ("weight", "ops", "shape", "dtype", "sparsity", "storage", "bytes")
        for function in self.functions:
            lines.append(f"function {function.name} ({function.opset})")
            rows = [header] + [
                (
                    weight.name,
                    ",".join(sorted(set(weight.op_types))) or "-",
                    "x".join(str(d) for d in weight.shape) or "scalar",
                    weight.dtype,
                    f"{weight.sparsity:.3f}",
                    weight.storage,
                    str(weight.stored_bytes),
                )
                for weight in function.weights
            ]
            lines.extend(format_rows(rows, right_align=(4, 6)))
            lines.append("")
        total = self.totals()
        kinds = ", ".join(f"{count} {kind}" for kind, count in total["by_storage"].items())
        lines.append(
            f"total: {total['weights']} weights ({kinds or 'none'}), "
            f"{total['stored_bytes']:,} bytes stored, {total['dense_bytes']:,} bytes dense"
            + (", sparsity {:.3f}".format(total["sparsity"]) if total["weights"] else "")
        )
        if self.package_bytes is not None:
            lines.append(f"package size on disk: {self.package_bytes:,} bytes")
        return "\n".join(lines)


def format_rows(rows: Sequence[Sequence[str]], right_align: tuple[int, ...] = ()) -> list[str]:
    """Columns separated by two spaces, padded to the widest cell."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if index in right_align else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def totals(weights: "tuple[WeightInfo, ...] | list[WeightInfo]") -> dict[str, Any]:
    """Counts and bytes of ``weights``; ``sparsity`` is zeros over elements across all of them."""
    elements = sum(math.prod(weight.shape) for weight in weights)
    zeros = sum(weight.sparsity * math.prod(weight.shape) for weight in weights)
    by_storage: dict[str, int] = {}
    for weight in weights:
        by_storage[weight.storage] = by_storage.get(weight.storage, 0) + 1
    return {
        "weights": len(weights),
        "stored_bytes": sum(weight.stored_bytes for weight in weights),
        "dense_bytes": sum(weight.dense_bytes for weight in weights),
        "elements": elements,
        "sparsity": zeros / elements if elements else 0.0,
        "by_storage": dict(sorted(by_storage.items())),
    }


# ----- the walk -------------------------------------------------------------------------------
def is_constexpr(op: Optional[Operation]) -> bool:
    return op is not None and inventory.is_constexpr(op.op_type)


def var_nbytes(var: Var) -> int:
    """Bytes a const var's value takes when stored: elements x MIL bitwidth / 8, rounded up."""
    value = var.val
    if value is None:
        return 0
    array = np.asarray(value)
    bitwidth = private.bit_width(var.dtype)
    if bitwidth is None:
        return int(array.nbytes)
    return (int(array.size) * bitwidth + 7) // 8


@attrs.frozen
class WeightSource:
    """A weight found in the program, before its value is read (reading may decompress)."""

    function: str
    op: Operation

    @property
    def name(self) -> str:
        return str(self.op.name)

    def stored_bytes(self) -> int:
        """Bytes as stored, without decompressing anything."""
        if is_constexpr(self.op):
            return sum(var_nbytes(var) for var in _chain_consts(_graph.constexpr_chain(self.op)))
        return var_nbytes(self.op.outputs[0])

    def dense_value(self) -> np.ndarray:
        """The weight's dense value (a constexpr chain is decompressed)."""
        if is_constexpr(self.op):
            return materialize(self.op)
        return np.asarray(self.op.outputs[0].val)

    def describe(self) -> WeightInfo:
        """Read the value and sizes of the weight (decompresses constexpr chains)."""
        op = self.op
        dense = self.dense_value()
        stored = self.stored_bytes()
        chain = tuple(str(item.op_type) for item in _graph.constexpr_chain(op)) if is_constexpr(op) else ()
        readers = {id(reader): reader for var in op.outputs for reader in var.child_ops}.values()
        return WeightInfo(
            function=self.function,
            name=self.name,
            op_types=tuple(str(reader.op_type) for reader in readers),
            shape=tuple(int(d) for d in dense.shape),
            dtype=str(dense.dtype),
            sparsity=zero_fraction(np.ascontiguousarray(dense)),
            storage=storage_kind(chain),
            chain=chain,
            stored_bytes=int(stored),
            dense_bytes=int(dense.nbytes),
        )


def _chain_consts(chain: list[Operation]) -> list[Var]:
    """The const vars the chain reads, each once."""
    consts: dict[int, Var] = {}
    for op in chain:
        for var in op.get_flattened_inputs():
            if var.op is not None and var.op.op_type == "const":
                consts.setdefault(id(var), var)
    return list(consts.values())


def materialize(op: Operation) -> np.ndarray:
    """The dense value a constexpr op stands for.

    Multi-output constexpr ops (``constexpr_lut_to_sparse``,
    ``constexpr_sparse_blockwise_shift_scale``) return ``(mask, nonzero_data)``: the dense value
    is the nonzero data scattered into the mask.
    """
    value = private.materialized_value(op)
    if not isinstance(value, (tuple, list)):
        return np.asarray(value)
    arrays = [np.asarray(item) for item in value]
    if len(arrays) == 2 and arrays[1].ndim == 1 and arrays[0].size >= arrays[1].size:
        mask = arrays[0].astype(np.bool_)
        if int(np.count_nonzero(mask)) == arrays[1].size:
            return unpack_sparse(SparseWeight(nonzero_data=arrays[1], mask=mask))
    return arrays[0]


def weight_sources(prog: Program, weight_threshold: int = 0) -> list[WeightSource]:
    """Every weight of every function (see module docstring), in program order: the
    inventory's (:func:`mil_sparsity.model.inventory.program_weights`) consts that no constexpr
    op reads, and its chain ends, above ``weight_threshold`` elements (or of unknown size)."""
    sources: list[WeightSource] = []
    for found in inventory.program_weights(prog):
        weight = found.weight
        if weight.feeds_constexpr and not weight.compressed:
            continue
        size = -1 if any(not isinstance(d, (int, np.integer)) for d in weight.shape) else weight.size
        if size < 0 or size > weight_threshold:
            sources.append(WeightSource(weight.function, found.op))
    return sources


def function_opsets(prog: Program) -> dict[str, str]:
    """Function name -> its opset's name (``iOS18``)."""
    return {
        str(name): sparse_format.target_name(function.opset_version)
        for name, function in prog.functions.items()
    }


def package_size(path: "str | os.PathLike[str]") -> int:
    """Bytes on disk of a file, or of every file under a package directory."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):  # lstat: a symlink counts as itself, never its target
        total += sum(os.lstat(os.path.join(root, name)).st_size for name in files)
    return total


def inspect_program(
    prog: Program,
    weight_threshold: int = 0,
    *,
    path: Optional[str] = None,
    sources: Optional[Iterator[WeightSource] | list[WeightSource]] = None,
) -> ModelInspection:
    """Describe every weight of ``prog``. ``sources`` (from :func:`weight_sources`, possibly
    wrapped in a progress bar) saves walking the program twice."""
    if sources is None:
        sources = weight_sources(prog, weight_threshold)
    by_function: dict[str, list[WeightInfo]] = {str(name): [] for name in prog.functions}
    for source in sources:
        by_function[source.function].append(source.describe())
    opsets = function_opsets(prog)
    functions = tuple(
        FunctionInfo(name=name, opset=opsets[name], weights=tuple(weights))
        for name, weights in by_function.items()
    )
    return ModelInspection(
        path=path,
        functions=functions,
        package_bytes=None if path is None else package_size(path),
        weight_threshold=weight_threshold,
    )


def inspect_model(model: "str | os.PathLike[str]", weight_threshold: int = 0) -> ModelInspection:
    """Load a saved package (no Core ML runtime needed) and describe its weights."""
    from mil_sparsity.model.io import load_model, load_program

    path = os.fspath(model)
    prog = load_program(load_model(path))
    return inspect_program(prog, weight_threshold, path=path)


__all__ = [
    "COMPRESSIONS",
    "FunctionInfo",
    "ModelInspection",
    "WeightInfo",
    "WeightSource",
    "format_rows",
    "function_opsets",
    "inspect_model",
    "inspect_program",
    "materialize",
    "package_size",
    "storage_kind",
    "totals",
    "var_nbytes",
    "weight_sources",
]


def stored_weight_bytes(prog: Program) -> int:
    """Bytes of every weight of ``prog`` as stored (compressed weights without decompressing)."""
    return sum(source.stored_bytes() for source in weight_sources(prog, 0))
