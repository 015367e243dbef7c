"""Streaming post-hoc compression of a saved .mlpackage, one weight in memory at a time.

``compress_package(src, dst, config_or_pipeline)`` works on the package files, not on a PyMIL
program, so a model larger than memory can be pruned or packed:

1. Check the package (:mod:`mil_sparsity.format.package_guard`: every path inside it, every
   blob's metadata against its declaration) and parse the ML Program spec (``model.mlmodel``:
   small, no weight data). Describe every const
   whose value lives in the weight file as a :class:`~mil_sparsity.model.inventory.Weight`
   (names, op types and consumers come from the spec) and run the passes' own selection
   (:func:`mil_sparsity.plan.rules.select`) on all of them first: config conflicts and config
   errors surface before anything is read or written.
2. Walk the blobs of the source ``weight.bin`` in file order. A selected weight is read alone
   (positioned reads, no mmap), its handler runs (same kernels and configs as the passes), and
   its ``nonzero_data`` and ``mask`` are appended to the new weight file; every other blob is
   copied unchanged. Blobs shared by several ops (e.g. functions of a multifunction package)
   are written once and stay shared. A weight larger than ``chunked_above_bytes`` (64 MB by
   default) is never held whole: :mod:`mil_sparsity.streaming.chunked` counts, prunes and
   writes it chunk by chunk, and an unchanged blob is copied in bounded pieces.
3. Rewrite each packed const in the spec to the ``constexpr_sparse_to_dense`` form of its
   function's opset (iOS16/17: attributes ``nonzero_data``, uint8 ``mask``, immediate uint32
   ``shape``; iOS18+: inputs ``nonzero_data`` and uint1 ``mask``), named ``<const>_sparse`` as the
   PyMIL passes name it, and point every reference at it. Every other blob reference gets its
   new offset.
4. Write ``dst`` atomically: a temporary sibling directory holding a new package of our own
   layout (``Manifest.json``, the spec, one ``weights/weight.bin``; each file created new),
   renamed into place. The source is never modified; on any error nothing is left behind.

Consts stored inline in the spec (immediate values: coremltools inlines fewer than 10 elements)
are never packed here. Graph passes other than mil_sparsity's cannot run without PyMIL: use
:func:`mil_sparsity.apply_pipeline` for those.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any, Optional, Union

import attrs
import numpy as np

from mil_sparsity.errors import InvalidTypeError
from mil_sparsity.format import package_guard
from mil_sparsity.format import sparse_format
from mil_sparsity.plan import targets
from mil_sparsity.format.atomic import atomic_output
from mil_sparsity.format.blob import BlobInfo, BlobReader, BlobWriter
from mil_sparsity.format.package_guard import PackageLayout, StorageCheck, function_block, iter_blocks
from mil_sparsity.kernels import SparseWeight
from mil_sparsity.report import SparsityReport, WeightRecord
from mil_sparsity.plan.pipeline import PipelineLike, PipelinePlan, PlannedPass, make_plan
from mil_sparsity.model.inventory import BLOB, Weight, spec_weights
from mil_sparsity.plan.rules import Decision, Selected, record, select
from mil_sparsity.format.sparse_format import BY_NAME, SparseForm, SparseTensor
from mil_sparsity.streaming.chunked import (
    CHUNKED_ABOVE_BYTES,
    ChunkedSparse,
    check_chunked_above_bytes,
    decide_selected,
    write_chunked,
)

@attrs.define
class _Site:
    """A blob-backed const in the spec and what the passes decided for it."""

    weight: Weight
    op: Any  # proto Operation
    value: Any  # proto Value of attribute "val"
    form: SparseForm
    chosen: list[tuple[Any, Decision | Selected]] = attrs.field(factory=list)


@attrs.frozen
class StreamSource:
    """A package checked for streaming (:mod:`mil_sparsity.format.package_guard`): its layout, its
    spec and every stored value's file and metadata."""

    layout: PackageLayout
    spec: Any
    storage: StorageCheck

    @property
    def version(self) -> int:
        return int(self.spec.specificationVersion)


def open_source(src: Union[str, "os.PathLike[str]"]) -> StreamSource:
    """Check a package and read its spec; nothing of its weights is read yet."""
    layout = package_guard.open_package(src)
    spec = _load_spec(layout.spec_path)
    return StreamSource(layout, spec, package_guard.check_storage(spec, layout))


# ---- reading the spec -----------------------------------------------------------------------

def _function_form(name: str, function: Any) -> SparseForm:
    """The sparse form of the function's opset; ValueError for an unknown opset or below iOS16."""
    return sparse_format.checked_form(name, sparse_format.target_of_opset(name, function.opset))


def _sites(spec: Any) -> list[_Site]:
    """The inventory's weights stored in a weight file (inline consts are never packed here)."""
    forms = {name: _function_form(name, function) for name, function in spec.mlProgram.functions.items()}
    return [
        _Site(item.weight, item.op, item.value, forms[item.weight.function])
        for item in spec_weights(spec)
        if item.weight.storage == BLOB
    ]


# ---- rewriting the spec ---------------------------------------------------------------------

def _set_tensor_type(value: Any, spec_name: str, shape: tuple[int, ...]) -> None:
    from coremltools.proto import MIL_pb2

    tensor = value.type.tensorType
    tensor.dataType = MIL_pb2.DataType.Value(spec_name)
    tensor.rank = len(shape)
    for size in shape:
        tensor.dimensions.add().constant.size = size


def _rewrite_op(site: _Site, stored: "_Stored", renames: dict[str, str]) -> None:
    """const -> the replacement's sparse op as written (:class:`_Stored`), renamed ``<name>_sparse``.

    The form says whether the spec holds the op's tensors as attributes or as inputs; each is a
    blob reference into the same weight file, or (the shape vector) an immediate value.
    """
    op = site.op
    old_output = op.outputs[0].name
    new_name = sparse_format.replacement_name(site.weight.name)
    del op.attributes["val"]
    op.type = sparse_format.OP_TYPE
    op.attributes["name"].immediateValue.tensor.strings.values[:] = [new_name]
    op.outputs[0].name = new_name
    renames[old_output] = new_name
    for tensor, offset in stored.tensors:
        if site.form.spec_attributes:
            value = op.attributes[tensor.input_name]
        else:
            value = op.inputs[tensor.input_name].arguments.add().value
        _set_tensor_type(value, BY_NAME[tensor.dtype].spec_name, tensor.shape)
        if offset is None:
            value.immediateValue.tensor.bytes.values = tensor.values.tobytes()
        else:
            value.blobFileValue.fileName = package_guard.CANONICAL_BLOB_NAME
            value.blobFileValue.offset = offset


def _apply_renames(spec: Any, renames: dict[str, str]) -> None:
    if not renames:
        return
    for function in spec.mlProgram.functions.values():
        for block in iter_blocks(function_block(function)):
            for op in block.operations:
                for argument in op.inputs.values():
                    for binding in argument.arguments:
                        if binding.WhichOneof("binding") == "name" and binding.name in renames:
                            binding.name = renames[binding.name]


# ---- the driver -----------------------------------------------------------------------------

@attrs.frozen
class _Stored:
    """A replacement as written: each tensor (values kept for inline ones only) and its blob
    offset in the new weight file (None: stored inline in the spec)."""

    tensors: tuple[tuple[SparseTensor, Optional[int]], ...]


@attrs.define
class _Written:
    """New offsets of one source blob: the unchanged copy, and packed forms per (pass, config, form)."""

    copy: Optional[int] = None
    packed: dict[Any, _Stored] = attrs.field(factory=dict)


def package_targets(package: Union[str, "os.PathLike[str]"]) -> dict[str, str]:
    """Function name -> deployment target ("iOS16", ...) of a saved ML Program package."""
    spec = _load_spec(package_guard.open_package(package).spec_path)
    return {
        name: sparse_format.target_name(sparse_format.TARGET_OF_OPSET.get(function.opset, "iOS?"))
        for name, function in spec.mlProgram.functions.items()
    }


def _load_spec(path: str) -> Any:
    spec = package_guard.read_spec(path)
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise InvalidTypeError(
            f"streaming works on ML Program models, but this model is a {kind!r}; re-convert with "
            'convert_to="mlprogram" and minimum_deployment_target=ct.target.iOS16 or later'
        )
    return spec


def compress_package(
    src: Union[str, "os.PathLike[str]"],
    dst: Union[str, "os.PathLike[str]"],
    config_or_pipeline: PipelineLike,
    *,
    report: Optional[SparsityReport] = None,
    overwrite: bool = False,
    minimum_deployment_target: Any = None,
    chunked_above_bytes: int = CHUNKED_ABOVE_BYTES,
) -> SparsityReport:
    """Prune and/or pack the weights of a saved .mlpackage into ``dst``, streaming.

    ``config_or_pipeline``: a ``ct.PassPipeline`` of mil_sparsity passes (options ``config``,
    ``report``, ``calibration``), or one config / OpSelector / selector dict / JSON text (the
    pass is chosen from the config kinds; activation scoring needs the pipeline form, for its
    ``calibration`` option). Holds about one weight in memory at a time (plus the activation
    statistics, loaded up front). Records go to a pass's own ``report`` option if the
    pipeline set one, else to ``report``; returns ``report`` (a new one if not given).
    The deployment target is raised as :func:`mil_sparsity.apply_pipeline` raises it
    (:mod:`mil_sparsity.plan.targets`: to iOS16 at least, or ``minimum_deployment_target``).
    Weights stored in more than ``chunked_above_bytes`` are pruned and written chunk by chunk
    (:mod:`mil_sparsity.streaming.chunked`), so peak memory stays well below the largest weight.
    """
    chunked_above_bytes = check_chunked_above_bytes(chunked_above_bytes)
    report = SparsityReport() if report is None else report
    source = open_source(src)
    plan = make_plan(
        config_or_pipeline,
        source.version,
        report=report,
        minimum_deployment_target=minimum_deployment_target,
        streaming=True,
    )
    run_plan(plan, source, dst, overwrite=overwrite, chunked_above_bytes=chunked_above_bytes)
    return report


def run_plan(
    plan: PipelinePlan,
    source: StreamSource,
    dst: Union[str, "os.PathLike[str]"],
    *,
    overwrite: bool = False,
    chunked_above_bytes: int = CHUNKED_ABOVE_BYTES,
) -> None:
    """Execute a streaming plan on ``source`` into the package ``dst`` (written atomically).
    Records go to each pass's own report, else the plan's; the target change is announced."""
    spec = source.spec
    if plan.change is not None:
        targets.raise_spec(spec, plan.change.new)
    passes = list(plan.passes)
    sites = _sites(spec)
    for site in sites:  # phase 1: every check that needs no value, up to the selecting pass
        for planned in passes:
            chosen = select(site.weight, planned.selector, planned.rules, planned.calibration)
            site.chosen.append((planned.entry, chosen))
            if isinstance(chosen, Selected):
                break
    with atomic_output(dst, overwrite=overwrite) as staging:
        weight_file = _write_layout(staging, has_weights=bool(source.storage.files))
        records = _stream(spec, sites, passes, source.storage, weight_file, chunked_above_bytes)
        with _create(os.path.join(staging, package_guard.DATA_DIR, package_guard.CANONICAL_SPEC)) as handle:
            handle.write(spec.SerializeToString())
    by_name = {planned.name: planned for planned in passes}
    for row in records:
        target = plan.report_of(by_name[row.pass_name])
        if target is not None:
            target.records.append(row)
    targets.announce(plan.change, plan.reports)


def _create(path: str) -> Any:
    """A new file opened for writing; refuses to follow or replace anything already there."""
    return open(path, "xb")


def _write_layout(staging: str, has_weights: bool) -> str:
    """Create the output package's directories and ``Manifest.json`` at ``staging`` (names of
    our own: :data:`~mil_sparsity.format.package_guard.CANONICAL_SPEC` and its weights directory, never
    paths from the input). Returns the path of the weight file to write ("" without weights)."""
    data = os.path.join(staging, package_guard.DATA_DIR)
    weights = os.path.join(data, package_guard.CANONICAL_WEIGHTS)
    os.makedirs(weights if has_weights else os.path.dirname(weights))
    items = {str(uuid.uuid4()).upper(): _manifest_item("model.mlmodel", package_guard.CANONICAL_SPEC, "specification")}
    root_id = next(iter(items))
    if has_weights:
        items[str(uuid.uuid4()).upper()] = _manifest_item(package_guard.WEIGHTS_ITEM, package_guard.CANONICAL_WEIGHTS, "weights")
    manifest = {"fileFormatVersion": "1.0.0", "itemInfoEntries": items, "rootModelIdentifier": root_id}
    with _create(os.path.join(staging, package_guard.MANIFEST)) as handle:
        handle.write(json.dumps(manifest, indent=4, sort_keys=True).encode("utf-8"))
    return os.path.join(weights, package_guard.CANONICAL_WEIGHT_FILE) if has_weights else ""


def _manifest_item(name: str, path: str, what: str) -> dict[str, str]:
    return {"author": package_guard.COREML_AUTHOR, "description": f"Core ML model {what}", "name": name, "path": path}


def _stream(
    spec: Any,
    sites: list[_Site],
    passes: list[PlannedPass],
    storage: StorageCheck,
    new_weight_file: str,
    chunked_above_bytes: int = CHUNKED_ABOVE_BYTES,
) -> list[WeightRecord]:
    """Phase 2: one forward pass over the source blobs (file by file, in offset order),
    writing the one new weight file; every reference is renamed to it."""
    records: list[WeightRecord] = []
    if not new_weight_file:
        return records

    def key(value: Any) -> tuple[str, int]:
        return storage.path_of(value), int(value.blobFileValue.offset)

    values = list(package_guard.blob_values(spec))
    by_blob: dict[tuple[str, int], list[Any]] = {}
    for value in values:
        by_blob.setdefault(key(value), []).append(value)
    users_by_blob: dict[tuple[str, int], list[_Site]] = {}
    for site in sites:
        users_by_blob.setdefault(key(site.value), []).append(site)
    const_values = {id(site.value) for site in sites}
    other_references = {key(v) for v in values if id(v) not in const_values}
    packed: dict[int, _Stored] = {}  # id(site) -> its replacement as written
    written: dict[tuple[str, int], _Written] = {}
    with contextlib.ExitStack() as readers_open:
        readers: dict[str, BlobReader] = {}
        writer = BlobWriter(new_weight_file)
        try:
            for blob in sorted(by_blob):
                path, _ = blob
                if path not in readers:
                    readers[path] = readers_open.enter_context(BlobReader(path))
                reader, info = readers[path], storage.blobs[blob]
                result = written.setdefault(blob, _Written())
                cache: dict[Any, Any] = {}
                keeps_dense = blob in other_references
                for site in users_by_blob.get(blob, []):
                    site_records, offsets = _process_site(
                        site, passes, info, reader, writer, result, cache, chunked_above_bytes
                    )
                    records.extend(site_records)
                    if offsets is None:
                        keeps_dense = True
                    else:
                        packed[id(site)] = offsets
                if keeps_dense:
                    if "value" in cache:  # already read for a decision: do not read it again
                        result.copy = writer.write(info.dtype_name, cache["value"])
                    else:
                        result.copy = writer.copy_blob(reader, info)
        finally:
            writer.close()
    for value in values:
        new_offset = written[key(value)].copy
        if new_offset is not None:
            value.blobFileValue.fileName = package_guard.CANONICAL_BLOB_NAME
            value.blobFileValue.offset = new_offset
    renames: dict[str, str] = {}
    for site in sites:
        if id(site) in packed:
            _rewrite_op(site, packed[id(site)], renames)
    _apply_renames(spec, renames)
    return records


def _process_site(
    site: _Site,
    passes: list[PlannedPass],
    info: BlobInfo,
    reader: BlobReader,
    writer: BlobWriter,
    result: _Written,
    cache: dict[Any, Any],
    chunked_above_bytes: int = CHUNKED_ABOVE_BYTES,
) -> tuple[list[WeightRecord], Optional[_Stored]]:
    """Run the passes in order on one const: its records and, if packed, its replacement as written.

    As in a PyMIL pipeline, a weight that a pass selects but leaves dense (below its minimum
    sparsity, say) goes on to the next pass; selections past the first were not computed in
    phase 1 and are computed here. ``cache`` lives while one source blob is processed: the
    loaded value, and each config's decision, so a shared blob is read, pruned and written once.
    """
    records: list[WeightRecord] = []

    def load() -> Any:
        if "value" not in cache:
            cache["value"] = reader.read_values(info).view(np.dtype(site.weight.dtype)).reshape(site.weight.shape)
        return cache["value"]

    for index, planned in enumerate(passes):
        rules = planned.rules
        chosen = (
            site.chosen[index][1]
            if index < len(site.chosen)
            else select(site.weight, planned.selector, rules, planned.calibration)
        )
        if isinstance(chosen, Decision):
            records.append(record(site.weight, chosen, rules, load))
            continue
        key = (planned.name, chosen.config, site.form, chosen.context)
        if key not in cache:
            cache[key] = decide_selected(chosen, site.weight, info, reader, load, chunked_above_bytes)
        decision = attrs.evolve(cache[key], source=chosen.source)  # same key: same config
        records.append(record(site.weight, decision, rules, load))
        outcome = decision.outcome
        if isinstance(outcome, (SparseWeight, ChunkedSparse)):
            if key not in result.packed:
                result.packed[key] = (
                    _write_sparse(writer, outcome, site.form)
                    if isinstance(outcome, SparseWeight)
                    else _Stored(write_chunked(writer, outcome, site.form))
                )
            return records, result.packed[key]
    return records, None


def _write_sparse(writer: BlobWriter, sparse: SparseWeight, form: SparseForm) -> _Stored:
    """Append the replacement's stored tensors (``nonzero_data``, then ``mask``) to the new
    weight file; inline tensors (the iOS16/17 shape) keep their values for the spec."""
    tensors: list[tuple[SparseTensor, Optional[int]]] = []
    for tensor in sparse_format.sparse_tensors(sparse, form):
        if tensor.inline:
            tensors.append((tensor, None))
        else:
            offset = writer.write(tensor.dtype, tensor.values)
            tensors.append((attrs.evolve(tensor, values=np.empty(0, tensor.values.dtype)), offset))
    return _Stored(tuple(tensors))
