"""Mutations of a saved .mlpackage for the untrusted-package fuzzer (test_untrusted_fuzz.py).

A case directory holds the package and "victims" around it: ROOT/victim.txt and
ROOT/out/victim.txt (holding VICTIM_TOKEN), ROOT/outside/ (valid copies of the package's
Manifest.json, model.mlmodel, weights/, weight.bin and Data/, so a path or symlink that escapes
the package finds readable content), ROOT/model.mlpackage (mutated in place) and
ROOT/out/out.mlpackage (where prune writes).

``mutations()``: one or two named edits of the package's Manifest.json, spec (model.mlmodel),
weight file or file tree. ``escapes=True`` marks a mutation that makes the package refer to
something outside itself (a manifest item path, a blob fileName, a symlink).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from hypothesis import strategies as st

from coremltools.proto import MIL_pb2, Model_pb2

SPEC_REL = "Data/com.apple.CoreML/model.mlmodel"
WEIGHTS_REL = "Data/com.apple.CoreML/weights"
WEIGHT_REL = WEIGHTS_REL + "/weight.bin"
VICTIM_TOKEN = b"victim-3f1d2c9a: this file is outside every package"
_U32 = (0, 1, 2, 3, 0xDEADBEEF, 2**31, 2**32 - 1)
_U64 = (0, 1, 63, 64, 4096, 10**6, 2**31, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 64, 2**64 - 1)
Edit = Callable[["Case"], None]


class Case:
    """The paths of one case (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.package = root / "model.mlpackage"
        self.outside = root / "outside"
        self.output = root / "out" / "out.mlpackage"
        self.spec_path = self.package / SPEC_REL
        self.weight_path = self.package / WEIGHT_REL


def make_case(base: Path, root: Path) -> Case:
    """A fresh copy of ``base`` in ``root`` with its victims (see the module doc)."""
    case = Case(root)
    shutil.copytree(base, case.package, symlinks=True)
    (root / "victim.txt").write_bytes(VICTIM_TOKEN)
    (root / "out").mkdir()
    (root / "out" / "victim.txt").write_bytes(VICTIM_TOKEN)
    shutil.copytree(base / "Data", case.outside / "Data")
    shutil.copytree(base / WEIGHTS_REL, case.outside / "weights")
    for source, name in (("Manifest.json", "Manifest.json"), (SPEC_REL, "model.mlmodel"), (WEIGHT_REL, "weight.bin")):
        shutil.copy(base / source, case.outside / name)
    return case


@dataclass(frozen=True)
class Mutation:
    kind: str  # e.g. "manifest.item_path": the failure class key
    detail: str  # the drawn parameters, for reproducing
    edit: Edit = field(compare=False, repr=False)
    escapes: bool = False

    def apply(self, case: Case) -> None:
        self.edit(case)

    def __str__(self) -> str:
        return f"{self.kind}({self.detail})" + (" [escapes]" if self.escapes else "")


def _fill(template: Any, case: Case) -> Any:
    """A path template with "{outside}" made the absolute outside dir."""
    return template.replace("{outside}", str(case.outside)) if isinstance(template, str) else template


def regular_bytes(path: "str | os.PathLike[str]") -> bytes:
    """A regular file's bytes (a FIFO another mutation made is never opened: ValueError)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file")
    return Path(path).read_bytes()


def _rewrite(rel: str, change: Callable[[bytes], bytes]) -> Edit:
    def edit(case: Case) -> None:
        path = case.package / rel
        path.write_bytes(change(regular_bytes(path)))

    return edit


# ---- Manifest.json: item paths (relative to the package's Data dir), entries, types ----------
_MODEL_ITEM_PATHS = [  # (template, escapes)
    ("../../outside/model.mlmodel", True), ("com.apple.CoreML/../../../outside/model.mlmodel", True),
    ("{outside}/model.mlmodel", True), ("../../victim.txt", True), ("/", True), ("../Manifest.json", False),
    ("com.apple.CoreML/weights/weight.bin", False), ("com.apple.CoreML", False),
    ("com.apple.CoreML/missing.mlmodel", False), ("", False), ("com.apple.CoreML/./model.mlmodel", False),
]
_WEIGHTS_ITEM_PATHS = [
    ("../../outside/weights", True), ("{outside}/weights", True),
    ("com.apple.CoreML/weights/../../../../outside/weights", True), ("com.apple.CoreML/model.mlmodel", False),
    ("com.apple.CoreML/nothing", False), ("", False), ("com.apple.CoreML/weights/", False),
]


def _manifest_edit(how: str, item: str, value: Any = None) -> Edit:
    def edit(case: Case) -> None:
        path = case.package / "Manifest.json"
        manifest = json.loads(regular_bytes(path))
        entries = manifest["itemInfoEntries"]
        name = "model.mlmodel" if item == "model" else "weights"
        key = next(key for key, entry in entries.items() if entry["name"] == name)
        if how == "path":
            entries[key]["path"] = _fill(value, case)
        elif how == "duplicate":
            entries[str(uuid.uuid4()).upper()] = dict(entries[key], path=_fill(value, case))
        elif how == "drop":
            del entries[key]
        elif how == "root_id" and value == "<deleted>":
            del manifest["rootModelIdentifier"]
        elif how == "root_id":
            weights = next(k for k, entry in entries.items() if entry["name"] == "weights")
            manifest["rootModelIdentifier"] = weights if value == "<weights>" else value
        elif how == "type" and item in ("itemInfoEntries", "fileFormatVersion"):
            manifest[item] = value
        elif how == "type" and item == "<top>":
            manifest = value
        elif how == "type":  # the model entry itself, or one of its fields
            entries[key] = value if item == "<entry>" else dict(entries[key], **{item: value})
        path.write_text(json.dumps(manifest, indent=4))

    return edit


_JUNK = st.sampled_from([None, 0, 1, -1, "", "x", [], {}, [1], {"a": 1}, 1.5, True])
_ITEMS = st.sampled_from(["model", "weights"])
_MANIFEST = st.one_of(
    _ITEMS.flatmap(lambda item: st.sampled_from(_MODEL_ITEM_PATHS if item == "model" else _WEIGHTS_ITEM_PATHS).map(
        lambda path: Mutation("manifest.item_path", f"{item} -> {path[0]!r}", _manifest_edit("path", item, path[0]), path[1])
    )),
    st.tuples(_ITEMS, st.sampled_from([path for path, escapes in _MODEL_ITEM_PATHS if escapes])).map(
        lambda pair: Mutation("manifest.duplicate_entry", f"{pair[0]} also at {pair[1]!r}", _manifest_edit("duplicate", *pair), True)
    ),
    _ITEMS.map(lambda item: Mutation("manifest.missing_entry", item, _manifest_edit("drop", item))),
    st.sampled_from(["nope", "<weights>", "<deleted>", "", 0, None, [], {}]).map(
        lambda value: Mutation("manifest.root_id", repr(value), _manifest_edit("root_id", "model", value))
    ),
    st.tuples(st.sampled_from(["<top>", "itemInfoEntries", "fileFormatVersion", "<entry>", "path", "name", "author"]), _JUNK).map(
        lambda pair: Mutation("manifest.json_type", f"{pair[0]} = {pair[1]!r}", _manifest_edit("type", *pair))
    ),
    st.binary(max_size=32).map(lambda junk: Mutation("manifest.not_json", repr(junk), _rewrite("Manifest.json", lambda old: junk))),
    st.integers(0, 600).map(lambda n: Mutation("manifest.not_json", f"first {n} bytes", _rewrite("Manifest.json", lambda old: old[:n]))),
)


# ---- the spec (model.mlmodel): stored values' types, fileNames, offsets; functions -----------
_FILE_NAMES = [  # blob fileNames, (template, escapes); @model_path is the dir holding model.mlmodel
    ("@model_path/weights/../../../../outside/weight.bin", True), ("@model_path/../../../outside/weight.bin", True),
    ("{outside}/weight.bin", True), ("@model_path/../../../victim.txt", True),
    ("@model_path/weights/other.bin", False), ("@model_path/model.mlmodel", False),
    ("@model_path/../../Manifest.json", False), ("@model_path/weights", False), ("weights/weight.bin", False), ("", False),
    # inside and valid: the same file by another spelling, or a copy under another name
    ("@model_path/weights/./weight.bin", False), ("@model_path/weights/../weights/weight.bin", False),
    ("@model_path/weights/copy.bin", False),
]


def blob_values(message: Any) -> Iterator[Any]:
    """Every MIL Value holding a blobFileValue, anywhere in a protobuf message."""
    if message.DESCRIPTOR.name == "Value" and message.HasField("blobFileValue"):
        yield message
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        for item in [value] if hasattr(value, "ListFields") else value.values() if hasattr(value, "values") else value:
            if hasattr(item, "ListFields"):  # maps of scalars hold none
                yield from blob_values(item)


def _blob_sites(spec: Any) -> list[tuple[Any, Any]]:
    """(op, Value) for every value an op holds in the weight file (a const's ``val``, a
    constexpr op's stored input), in program order."""
    sites: list[tuple[Any, Any]] = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                values = list(op.attributes.values()) + [
                    binding.value for argument in op.inputs.values() for binding in argument.arguments if binding.HasField("value")
                ]
                sites.extend((op, value) for value in values if value.HasField("blobFileValue"))
    return sites


def _blob_offsets(case: Case) -> list[int]:
    """The metadata offsets of the unmutated package's blobs."""
    spec = Model_pb2.Model()
    spec.ParseFromString((case.outside / "model.mlmodel").read_bytes())
    return sorted({value.blobFileValue.offset for value in blob_values(spec)})


def _spec_edit(change: Callable[[Any, Case], None]) -> Edit:
    def edit(case: Case) -> None:
        spec = Model_pb2.Model()
        spec.ParseFromString(regular_bytes(case.spec_path))
        change(spec, case)
        case.spec_path.write_bytes(spec.SerializeToString())

    return edit


def _type_edit(index: int, where: str, how: str, axis: int = 0, size: int = 0) -> Edit:
    """Change the declared type of stored value ``index`` ("val"), its op's output, or both."""

    def change(tensor: Any) -> None:
        dims = tensor.dimensions
        if how == "dtype":
            tensor.dataType = size
        elif how == "scale" and dims:
            dims[axis % len(dims)].constant.size = min(dims[axis % len(dims)].constant.size * size, 2**64 - 1)
        elif how == "set" and dims:
            dims[axis % len(dims)].constant.size = size
        elif how == "append":
            dims.add().constant.size = size
            tensor.rank += 1
        elif how == "drop" and dims:
            del dims[-1]
            tensor.rank -= 1
        elif how == "rank_field":
            tensor.rank = size

    def edit(spec: Any, case: Case) -> None:
        sites = _blob_sites(spec)
        op, value = sites[index % len(sites)]
        for tensor in [value.type.tensorType] * (where != "output") + [op.outputs[0].type.tensorType] * (where != "val"):
            change(tensor)

    return _spec_edit(edit)


def _blob_edit(name: str, value: Any, everywhere: bool, index: int) -> Edit:
    def edit(spec: Any, case: Case) -> None:
        new = _fill(value, case)
        if new == "@model_path/weights/copy.bin" and case.weight_path.is_file():
            shutil.copy(case.weight_path, case.weight_path.parent / "copy.bin")
        if new == "<blob>":  # the offset of another blob of the file
            offsets = _blob_offsets(case)
            new = offsets[(index + 1) % len(offsets)]
        sites = _blob_sites(spec)
        for _, stored in sites if everywhere else [sites[index % len(sites)]]:
            setattr(stored.blobFileValue, name, new)

    return _spec_edit(edit)


def _program_edit(how: str) -> Edit:
    def edit(spec: Any, case: Case) -> None:
        functions = spec.mlProgram.functions
        main = functions["main"]
        if how == "opset_unknown":
            main.block_specializations["CoreML99"].CopyFrom(main.block_specializations[main.opset])
            del main.block_specializations[main.opset]
            main.opset = "CoreML99"
        elif how == "opset_mismatch":
            main.opset = "CoreML8" if main.opset != "CoreML8" else "CoreML6"
        elif how == "no_block":
            del main.block_specializations[main.opset]
        elif how in ("rename_function", "no_functions"):
            if how == "rename_function":
                functions["other"].CopyFrom(main)
            del functions["main"]
        elif how == "not_program":
            spec.ClearField("mlProgram")
        elif how.startswith("version="):
            spec.specificationVersion = int(how[8:])

    return _spec_edit(edit)


_INDEX = st.integers(0, 5)
_WHERE = st.sampled_from(["val", "output", "both"])
_SPEC = st.one_of(
    st.builds(
        lambda index, where, how, axis, size: Mutation(
            "spec.dims", f"blob value {index} {where}: {how} axis {axis} by {size}", _type_edit(index, where, how, axis, size)
        ),
        _INDEX, _WHERE, st.sampled_from(["scale", "set", "append", "drop", "rank_field"]), st.integers(-2, 3),
        st.sampled_from([0, 1, 2, 3, 1000, 2**31, 2**40, 2**62, 2**63 - 1]),
    ),
    st.builds(
        lambda index, where, dtype: Mutation("spec.dtype", f"blob value {index} {where}: dataType {dtype}", _type_edit(index, where, "dtype", size=dtype)),
        _INDEX, _WHERE, st.sampled_from(sorted(set(MIL_pb2.DataType.values()) | {999})),
    ),
    st.builds(
        lambda index, every, name: Mutation(
            "spec.file_name", f"{'every blob value' if every else f'blob value {index}'}: {name[0]!r}",
            _blob_edit("fileName", name[0], every, index), name[1],
        ),
        _INDEX, st.booleans(), st.sampled_from(_FILE_NAMES),
    ),
    st.builds(
        lambda index, offset: Mutation("spec.offset", f"blob value {index}: offset {offset}", _blob_edit("offset", offset, False, index)),
        _INDEX, st.one_of(st.just("<blob>"), st.sampled_from(_U64), st.integers(0, 200).map(lambda k: 64 * k), st.integers(0, 2**64 - 1)),
    ),
    st.sampled_from(
        ["opset_unknown", "opset_mismatch", "no_block", "rename_function", "no_functions", "not_program"]
        + [f"version={v}" for v in (0, 1, 4, 6, 9, 10, 99, 2**31 - 1)]
    ).map(lambda how: Mutation("spec.program", how, _program_edit(how))),
)


# ---- raw bytes: the weight file's header and blob metadata, truncation, bit flips ------------
_FIELDS = {"count": (0, "<I"), "version": (4, "<I"),  # the file header, then a blob's metadata record
           "sentinel": (0, "<I"), "dtype": (4, "<I"), "size": (8, "<Q"), "data_offset": (16, "<Q"), "padding": (24, "<Q")}


def _pack(blob: Optional[int], name: str, value: int) -> Edit:
    """Overwrite field ``name`` of the weight file's header (blob None) or of a blob's metadata."""

    def edit(case: Case) -> None:
        (position, fmt), width = _FIELDS[name], struct.calcsize(_FIELDS[name][1])
        position += 0 if blob is None else _blob_offsets(case)[blob % len(_blob_offsets(case))]
        data = bytearray(regular_bytes(case.weight_path))
        if position + width <= len(data):
            struct.pack_into(fmt, data, position, value % (1 << (8 * width)))
        case.weight_path.write_bytes(bytes(data))

    return edit


def _flip(bits: list[int]) -> Callable[[bytes], bytes]:
    def change(old: bytes) -> bytes:
        data = bytearray(old)
        for bit in bits if data else []:
            data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
        return bytes(data)

    return change


_FILES = st.sampled_from([WEIGHT_REL, SPEC_REL, "Manifest.json"])
_BYTES = st.one_of(
    st.builds(
        lambda name, value: Mutation("blob.header", f"{name} = {value}", _pack(None, name, value)),
        st.sampled_from(["count", "version"]), st.one_of(st.sampled_from(_U32), st.integers(0, 2**32 - 1)),
    ),
    st.builds(
        lambda index, name, value: Mutation("blob.metadata", f"blob {index}: {name} = {value}", _pack(index, name, value)),
        _INDEX, st.sampled_from(["sentinel", "dtype", "size", "data_offset", "padding"]),
        st.one_of(st.sampled_from(_U64), st.integers(0, 20), st.integers(0, 2**64 - 1)),
    ),
    st.builds(
        lambda rel, n: Mutation("file.truncate", f"{rel} to {n} bytes", _rewrite(rel, lambda old: old[:n])), _FILES, st.integers(0, 13000)
    ),
    st.builds(
        lambda rel, bits: Mutation("file.bit_flips", f"{rel} bits {bits}", _rewrite(rel, _flip(bits))),
        _FILES, st.lists(st.integers(0, 8 * 13000), min_size=1, max_size=8),
    ),
)


# ---- the file tree: symlinks, FIFOs, extra files, missing files, directories for files ------
def _replace(rel: str, kind: str, target: str = "") -> Edit:
    """Put a symlink to ``target``, a FIFO, an extra file, a directory or nothing at ``rel``."""

    def edit(case: Case) -> None:
        path = case.package / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        if kind == "symlink":
            os.symlink(_fill(target, case), path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "file":
            path.write_bytes(b"an extra file: not part of the model\n")
        elif kind == "dir":
            path.mkdir()

    return edit


_SYMLINKS = [  # (path in the package, target; "{outside}" is absolute), escapes
    (WEIGHT_REL, "{outside}/weight.bin", True), (WEIGHT_REL, "../../../../outside/weight.bin", True),
    (WEIGHT_REL, "../../../../victim.txt", True), (WEIGHT_REL, "weight.bin", False), (WEIGHT_REL, "missing.bin", False),
    (WEIGHTS_REL, "{outside}/weights", True), (SPEC_REL, "{outside}/model.mlmodel", True), ("Data", "{outside}/Data", True),
    ("Manifest.json", "{outside}/Manifest.json", True),
    # unreferenced links: their targets must not leak into an output
    ("Data/com.apple.CoreML/extra.txt", "../../../victim.txt", False), ("Data/com.apple.CoreML/extra", "{outside}", False),
]
_TREE = st.one_of(
    st.sampled_from(_SYMLINKS).map(lambda s: Mutation("tree.symlink", f"{s[0]} -> {s[1]}", _replace(s[0], "symlink", s[1]), s[2])),
    st.tuples(st.sampled_from([WEIGHT_REL, SPEC_REL, "Manifest.json", WEIGHTS_REL, "Data"]), st.sampled_from(["none", "dir"])).map(
        lambda pair: Mutation("tree.missing", f"{pair[0]}{' (a directory instead)' if pair[1] == 'dir' else ''}", _replace(*pair))
    ),
    st.sampled_from([WEIGHT_REL, SPEC_REL, "Manifest.json", "Data/com.apple.CoreML/extra"]).map(
        lambda rel: Mutation("tree.fifo", rel, _replace(rel, "fifo"))
    ),
    st.sampled_from(["Data/com.apple.CoreML/notes.txt", WEIGHTS_REL + "/notes.bin", "notes.txt"]).map(
        lambda rel: Mutation("tree.extra_file", rel, _replace(rel, "file"))
    ),
)


def mutation() -> st.SearchStrategy[Mutation]:
    return st.one_of(_MANIFEST, _SPEC, _BYTES, _TREE)


def mutations() -> st.SearchStrategy[list[Mutation]]:
    """One or two mutations, applied in order (see apply_all)."""
    return st.lists(mutation(), min_size=1, max_size=2)


def apply_all(mutations: list[Mutation], case: Case) -> list[Mutation]:
    """Apply the mutations in order; one that cannot be applied after the previous ones (its
    file is gone, no longer parses, or is a FIFO now) is skipped. Returns the ones applied."""
    applied = []
    for index, mutation in enumerate(mutations):
        try:
            mutation.apply(case)
        except Exception:
            if index == 0:  # on a fresh copy every mutation applies
                raise
            continue
        applied.append(mutation)
    return applied
