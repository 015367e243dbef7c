"""Mutations of a saved .mlpackage for the untrusted-package fuzzer (test_untrusted_fuzz.py).

A case directory holds the package to mutate and "victims" around it::

    ROOT/victim.txt             a file next to the package (holds VICTIM_TOKEN)
    ROOT/outside/...            valid copies of the package's files (Manifest.json,
                                model.mlmodel, weights/weight.bin, Data/): a path or symlink
                                that escapes the package finds readable content there
    ROOT/model.mlpackage        the package under test (mutated in place)
    ROOT/out/victim.txt         a file next to the output
    ROOT/out/out.mlpackage      where prune writes

``mutations()`` is the hypothesis strategy: a list of one or two :class:`Mutation`, each a
named edit of the package's Manifest.json, spec (model.mlmodel), weight file or file tree.
A mutation with ``escapes=True`` makes the package refer to something outside itself (a
manifest item path, a blob fileName, a symlink): any operation that succeeds on it has read, or
trusted, a path outside the package.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from hypothesis import strategies as st

from coremltools.proto import MIL_pb2, Model_pb2

SPEC_REL = "Data/com.apple.CoreML/model.mlmodel"
WEIGHTS_REL = "Data/com.apple.CoreML/weights"
WEIGHT_REL = WEIGHTS_REL + "/weight.bin"
VICTIM_TOKEN = b"victim-3f1d2c9a: this file is outside every package"
_U32 = (0, 1, 2, 3, 0xDEADBEEF, 2**31, 2**32 - 1)
_U64 = (0, 1, 63, 64, 4096, 10**6, 2**31, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 64, 2**64 - 1)


@dataclass
class Case:
    """The files of one case (see the module doc)."""

    root: Path

    @property
    def package(self) -> Path:
        return self.root / "model.mlpackage"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def output(self) -> Path:
        return self.root / "out" / "out.mlpackage"

    @property
    def spec_path(self) -> Path:
        return self.package / SPEC_REL

    @property
    def weight_path(self) -> Path:
        return self.package / WEIGHT_REL


def make_case(base: Path, root: Path) -> Case:
    """A fresh copy of ``base`` in ``root`` with its victims (see the module doc)."""
    case = Case(root)
    shutil.copytree(base, case.package, symlinks=True)
    (root / "victim.txt").write_bytes(VICTIM_TOKEN)
    (root / "out").mkdir()
    (root / "out" / "victim.txt").write_bytes(VICTIM_TOKEN)
    shutil.copytree(base / "Data", case.outside / "Data")
    shutil.copy(base / "Manifest.json", case.outside / "Manifest.json")
    shutil.copy(base / SPEC_REL, case.outside / "model.mlmodel")
    shutil.copytree(base / WEIGHTS_REL, case.outside / "weights")
    shutil.copy(base / WEIGHT_REL, case.outside / "weight.bin")
    return case


@dataclass(frozen=True)
class Mutation:
    kind: str  # e.g. "manifest.item_path": the failure class key
    detail: str  # the drawn parameters, for reproducing
    edit: Callable[[Case], None] = field(compare=False, repr=False)
    escapes: bool = False

    def apply(self, case: Case) -> None:
        self.edit(case)

    def __str__(self) -> str:
        return f"{self.kind}({self.detail})" + (" [escapes]" if self.escapes else "")


# ---- paths a hostile package may hold; "{outside}" becomes the absolute outside dir ----------
# (template, escapes): manifest item paths are relative to the package's Data directory
_MODEL_ITEM_PATHS = [
    ("../../outside/model.mlmodel", True),
    ("com.apple.CoreML/../../../outside/model.mlmodel", True),
    ("{outside}/model.mlmodel", True),
    ("../../victim.txt", True),
    ("../Manifest.json", False),
    ("com.apple.CoreML/weights/weight.bin", False),
    ("com.apple.CoreML", False),
    ("com.apple.CoreML/missing.mlmodel", False),
    ("", False),
    ("/", True),
]
_WEIGHTS_ITEM_PATHS = [
    ("../../outside/weights", True),
    ("{outside}/weights", True),
    ("com.apple.CoreML/weights/../../../../outside/weights", True),
    ("com.apple.CoreML/model.mlmodel", False),
    ("com.apple.CoreML/nothing", False),
    ("", False),
]
# blob fileNames: @model_path is the directory holding model.mlmodel
_FILE_NAMES = [
    ("@model_path/weights/../../../../outside/weight.bin", True),
    ("@model_path/../../../outside/weight.bin", True),
    ("{outside}/weight.bin", True),
    ("@model_path/../../../victim.txt", True),
    ("@model_path/weights/other.bin", False),
    ("@model_path/model.mlmodel", False),
    ("@model_path/../../Manifest.json", False),
    ("@model_path/weights", False),
    ("weights/weight.bin", False),
    ("", False),
]


def _fill(template: str, case: Case) -> str:
    return template.replace("{outside}", str(case.outside))


# ---- Manifest.json ---------------------------------------------------------------------------
def _manifest(case: Case) -> dict[str, Any]:
    return json.loads((case.package / "Manifest.json").read_text())


def _write_manifest(case: Case, manifest: Any) -> None:
    (case.package / "Manifest.json").write_text(json.dumps(manifest, indent=4))


def _entry_id(manifest: dict[str, Any], item: str) -> str:
    name = "model.mlmodel" if item == "model" else "weights"
    return next(key for key, entry in manifest["itemInfoEntries"].items() if entry["name"] == name)


def _item_path(item: str, template: str) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        manifest = _manifest(case)
        manifest["itemInfoEntries"][_entry_id(manifest, item)]["path"] = _fill(template, case)
        _write_manifest(case, manifest)

    return edit


def _duplicate(item: str, template: str) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        manifest = _manifest(case)
        entry = dict(manifest["itemInfoEntries"][_entry_id(manifest, item)], path=_fill(template, case))
        manifest["itemInfoEntries"][str(uuid.uuid4()).upper()] = entry
        _write_manifest(case, manifest)

    return edit


def _drop(item: str) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        manifest = _manifest(case)
        del manifest["itemInfoEntries"][_entry_id(manifest, item)]
        _write_manifest(case, manifest)

    return edit


def _root_id(value: Any) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        manifest = _manifest(case)
        if value == "<weights>":
            manifest["rootModelIdentifier"] = _entry_id(manifest, "weights")
        elif value == "<deleted>":
            del manifest["rootModelIdentifier"]
        else:
            manifest["rootModelIdentifier"] = value
        _write_manifest(case, manifest)

    return edit


def _wrong_type(where: str, value: Any) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        manifest = _manifest(case)
        if where == "<top>":
            _write_manifest(case, value)
            return
        if where in ("itemInfoEntries", "fileFormatVersion"):
            manifest[where] = value
        else:  # a field of the model entry, or the entry itself
            key = _entry_id(manifest, "model")
            if where == "<entry>":
                manifest["itemInfoEntries"][key] = value
            else:
                manifest["itemInfoEntries"][key][where] = value
        _write_manifest(case, manifest)

    return edit


def _replace_file(rel: str, make: Callable[[bytes], bytes]) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        path = case.package / rel
        path.write_bytes(make(path.read_bytes()))

    return edit


_JUNK = st.sampled_from([None, 0, 1, -1, "", "x", [], {}, [1], {"a": 1}, 1.5, True])
_MANIFEST = st.one_of(
    st.sampled_from(["model", "weights"]).flatmap(
        lambda item: st.sampled_from(_MODEL_ITEM_PATHS if item == "model" else _WEIGHTS_ITEM_PATHS).map(
            lambda path: Mutation("manifest.item_path", f"{item} -> {path[0]!r}", _item_path(item, path[0]), path[1])
        )
    ),
    st.tuples(st.sampled_from(["model", "weights"]), st.sampled_from(_MODEL_ITEM_PATHS[:4])).map(
        lambda pair: Mutation("manifest.duplicate_entry", f"{pair[0]} also at {pair[1][0]!r}", _duplicate(*(pair[0], pair[1][0])), True)
    ),
    st.sampled_from(["model", "weights"]).map(lambda item: Mutation("manifest.missing_entry", item, _drop(item))),
    st.sampled_from(["nope", "<weights>", "<deleted>", "", 0, None, [], {}]).map(
        lambda value: Mutation("manifest.root_id", repr(value), _root_id(value))
    ),
    st.tuples(
        st.sampled_from(["<top>", "itemInfoEntries", "fileFormatVersion", "<entry>", "path", "name", "author"]), _JUNK
    ).map(lambda pair: Mutation("manifest.json_type", f"{pair[0]} = {pair[1]!r}", _wrong_type(*pair))),
    st.one_of(st.binary(max_size=32), st.integers(0, 600).map(lambda n: b"<prefix %d>" % n)).map(
        lambda junk: Mutation(
            "manifest.not_json", repr(junk),
            _replace_file("Manifest.json", (lambda old: old[: int(junk[8:-1])]) if junk.startswith(b"<prefix") else (lambda old: junk)),
        )
    ),
)


# ---- the spec (model.mlmodel) ----------------------------------------------------------------
def _load_spec(case: Case) -> Any:
    spec = Model_pb2.Model()
    spec.ParseFromString(case.spec_path.read_bytes())
    return spec


def blob_values(message: Any) -> Iterator[Any]:
    """Every MIL Value holding a blobFileValue, anywhere in a protobuf message."""
    if message.DESCRIPTOR.name == "Value" and message.HasField("blobFileValue"):
        yield message
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if hasattr(value, "ListFields"):
            yield from blob_values(value)
            continue
        for item in value.values() if hasattr(value, "values") else value:  # a map or a list
            if hasattr(item, "ListFields"):
                yield from blob_values(item)


def _blob_sites(spec: Any) -> list[tuple[Any, Any]]:
    """(op, Value) for every value an op holds that is stored in the weight file (a const's
    ``val``, a constexpr op's stored input), in program order."""
    sites = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                values = list(op.attributes.values()) + [
                    binding.value for argument in op.inputs.values() for binding in argument.arguments if binding.HasField("value")
                ]
                sites.extend((op, value) for value in values if value.HasField("blobFileValue"))
    return sites


def _edit_spec(change: Callable[[Any, Case], None]) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        spec = _load_spec(case)
        change(spec, case)
        case.spec_path.write_bytes(spec.SerializeToString())

    return edit


def _on_const(index: int, where: str, change: Callable[[Any], None]) -> Callable[[Any, Case], None]:
    def edit(spec: Any, case: Case) -> None:
        sites = _blob_sites(spec)
        op, value = sites[index % len(sites)]
        if where in ("val", "both"):
            change(value.type.tensorType)
        if where in ("output", "both"):
            change(op.outputs[0].type.tensorType)

    return edit


def _dims(how: str, axis: int, size: int) -> Callable[[Any], None]:
    def change(tensor: Any) -> None:
        dims = tensor.dimensions
        if how == "scale" and dims:
            dim = dims[axis % len(dims)].constant
            dim.size = min(dim.size * size, 2**64 - 1)
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

    return change


def _blob_field(name: str, value: Any, everywhere: bool, index: int) -> Callable[[Any, Case], None]:
    def edit(spec: Any, case: Case) -> None:
        sites = _blob_sites(spec)
        for _, stored in sites if everywhere else [sites[index % len(sites)]]:
            setattr(stored.blobFileValue, name, _fill(value, case) if isinstance(value, str) else value)

    return edit


def _program(how: str) -> Callable[[Any, Case], None]:
    def edit(spec: Any, case: Case) -> None:
        program = spec.mlProgram
        main = program.functions["main"]
        if how == "opset_unknown":
            block = main.block_specializations[main.opset]
            main.block_specializations["CoreML99"].CopyFrom(block)
            del main.block_specializations[main.opset]
            main.opset = "CoreML99"
        elif how == "opset_mismatch":
            main.opset = "CoreML8" if main.opset != "CoreML8" else "CoreML6"
        elif how == "no_block":
            del main.block_specializations[main.opset]
        elif how == "rename_function":
            program.functions["other"].CopyFrom(main)
            del program.functions["main"]
        elif how == "no_functions":
            del program.functions["main"]
        elif how == "not_program":
            spec.ClearField("mlProgram")
        elif how.startswith("version="):
            spec.specificationVersion = int(how[8:])

    return edit


_DTYPES = sorted(set(MIL_pb2.DataType.values()) | {999})
_SPEC = st.one_of(
    st.builds(
        lambda index, where, how, axis, size: Mutation(
            "spec.dims", f"blob value {index} {where}: {how} axis {axis} by {size}", _edit_spec(_on_const(index, where, _dims(how, axis, size)))
        ),
        st.integers(0, 5), st.sampled_from(["val", "output", "both"]),
        st.sampled_from(["scale", "set", "append", "drop", "rank_field"]), st.integers(-2, 3),
        st.sampled_from([0, 1, 2, 3, 1000, 2**31, 2**40, 2**62, 2**63 - 1]),
    ),
    st.builds(
        lambda index, where, dtype: Mutation(
            "spec.dtype", f"blob value {index} {where}: dataType {dtype}", _edit_spec(_on_const(index, where, lambda t: setattr(t, "dataType", dtype)))
        ),
        st.integers(0, 5), st.sampled_from(["val", "output", "both"]), st.sampled_from(_DTYPES),
    ),
    st.builds(
        lambda index, every, name: Mutation(
            "spec.file_name", f"{'every blob value' if every else f'blob value {index}'}: {name[0]!r}", _edit_spec(_blob_field("fileName", name[0], every, index)), name[1]
        ),
        st.integers(0, 5), st.booleans(), st.sampled_from(_FILE_NAMES),
    ),
    st.builds(
        lambda index, offset: Mutation("spec.offset", f"blob value {index}: offset {offset}", _edit_spec(_blob_field("offset", offset, False, index))),
        st.integers(0, 5), st.one_of(st.sampled_from(_U64), st.integers(0, 200).map(lambda k: 64 * k), st.integers(0, 2**64 - 1)),
    ),
    st.sampled_from(
        ["opset_unknown", "opset_mismatch", "no_block", "rename_function", "no_functions", "not_program"]
        + [f"version={v}" for v in (0, 1, 4, 6, 9, 10, 99, 2**31 - 1)]
    ).map(lambda how: Mutation("spec.program", how, _edit_spec(_program(how)))),
)


# ---- raw bytes: the weight file's header and metadata, truncation, bit flips ------------------
def _blob_offsets(case: Case) -> list[int]:
    spec = Model_pb2.Model()
    spec.ParseFromString((case.root / "outside" / "model.mlmodel").read_bytes())  # the unmutated spec
    return sorted({value.blobFileValue.offset for value in blob_values(spec)})


_METADATA_FIELDS = {"sentinel": (0, "<I"), "dtype": (4, "<I"), "size": (8, "<Q"), "data_offset": (16, "<Q"), "padding": (24, "<Q")}


def _pack(rel: str, where: Callable[[Case], int], fmt: str, value: int) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        path = case.package / rel
        data = bytearray(path.read_bytes())
        position = where(case)
        if position + struct.calcsize(fmt) <= len(data):
            struct.pack_into(fmt, data, position, value % (1 << (8 * struct.calcsize(fmt))))
        path.write_bytes(bytes(data))

    return edit


def _truncate(rel: str, length: int) -> Callable[[Case], None]:
    return _replace_file(rel, lambda old: old[: min(length, len(old))])


def _flip(rel: str, bits: list[int]) -> Callable[[Case], None]:
    def change(old: bytes) -> bytes:
        data = bytearray(old)
        for bit in bits:
            if data:
                data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
        return bytes(data)

    return _replace_file(rel, change)


_FILES = st.sampled_from([WEIGHT_REL, SPEC_REL, "Manifest.json"])
_BYTES = st.one_of(
    st.builds(
        lambda name, value: Mutation("blob.header", f"{name} = {value}", _pack(WEIGHT_REL, lambda c, n=name: 0 if n == "count" else 4, "<I", value)),
        st.sampled_from(["count", "version"]), st.one_of(st.sampled_from(_U32), st.integers(0, 2**32 - 1)),
    ),
    st.builds(
        lambda index, name, value: Mutation(
            "blob.metadata", f"blob {index}: {name} = {value}",
            _pack(WEIGHT_REL, lambda c: _blob_offsets(c)[index % len(_blob_offsets(c))] + _METADATA_FIELDS[name][0], _METADATA_FIELDS[name][1], value),
        ),
        st.integers(0, 5), st.sampled_from(sorted(_METADATA_FIELDS)),
        st.one_of(st.sampled_from(_U64), st.integers(0, 20), st.integers(0, 2**64 - 1)),
    ),
    st.builds(lambda rel, n: Mutation("file.truncate", f"{rel} to {n} bytes", _truncate(rel, n)), _FILES, st.integers(0, 13000)),
    st.builds(
        lambda rel, bits: Mutation("file.bit_flips", f"{rel} bits {bits}", _flip(rel, bits)),
        _FILES, st.lists(st.integers(0, 8 * 13000), min_size=1, max_size=8),
    ),
)


# ---- the file tree: symlinks, missing files, directories in place of files ---------------------
def _symlink(rel: str, target: str) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        path = case.package / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.symlink(_fill(target, case), path)

    return edit


def _remove(rel: str, make_dir: bool) -> Callable[[Case], None]:
    def edit(case: Case) -> None:
        path = case.package / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        if make_dir:
            path.mkdir()

    return edit


_SYMLINKS = [
    # (path in the package, target; "{outside}" is absolute), escapes
    (WEIGHT_REL, "{outside}/weight.bin", True),
    (WEIGHT_REL, "../../../../outside/weight.bin", True),
    (WEIGHT_REL, "../../../../victim.txt", True),
    (WEIGHT_REL, "weight.bin", False),  # a loop
    (WEIGHT_REL, "missing.bin", False),  # dangling
    (WEIGHTS_REL, "{outside}/weights", True),
    (SPEC_REL, "{outside}/model.mlmodel", True),
    ("Data", "{outside}/Data", True),
    ("Manifest.json", "{outside}/Manifest.json", True),
    ("Data/com.apple.CoreML/extra.txt", "../../../victim.txt", False),  # unreferenced: must not leak
    ("Data/com.apple.CoreML/extra", "{outside}", False),  # an unreferenced dir link
]
_TREE = st.one_of(
    st.sampled_from(_SYMLINKS).map(lambda s: Mutation("tree.symlink", f"{s[0]} -> {s[1]}", _symlink(s[0], s[1]), s[2])),
    st.tuples(st.sampled_from([WEIGHT_REL, SPEC_REL, "Manifest.json", WEIGHTS_REL, "Data"]), st.booleans()).map(
        lambda pair: Mutation("tree.missing", f"{pair[0]}{' (a directory instead)' if pair[1] else ''}", _remove(*pair))
    ),
)


def mutation() -> st.SearchStrategy[Mutation]:
    return st.one_of(_MANIFEST, _SPEC, _BYTES, _TREE)


def mutations() -> st.SearchStrategy[list[Mutation]]:
    """One or two mutations, applied in order (see apply_all)."""
    return st.lists(mutation(), min_size=1, max_size=2)


def apply_all(mutations: list[Mutation], case: Case) -> list[Mutation]:
    """Apply each mutation that can be applied after the previous ones (an edit of a file an
    earlier mutation made unreadable is skipped); returns the ones applied."""
    if not mutations:
        return []
    mutations[0].apply(case)  # on a fresh copy every mutation applies
    applied = [mutations[0]]
    for mutation in mutations[1:]:
        try:
            mutation.apply(case)
        except Exception:  # the file it edits is gone or no longer parses
            continue
        applied.append(mutation)
    return applied
