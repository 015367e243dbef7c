"""A model package as untrusted input: every path and size read from it, checked before use.

People download .mlpackage directories and services compress what users upload, so a package is
treated the way ``tarfile``'s extraction filters (PEP 706) treat archive members and
safetensors treats header offsets. Both rewriters (PyMIL and streaming) and the reference
evaluator's loader go through this module:

* :func:`open_package` reads ``Manifest.json`` itself (size-capped JSON, every field's type
  checked) and resolves **every** item path (``Data/<path>``, after ``..`` and symlinks) inside
  the package's real root; the root model spec must be a file there, the weights item a
  directory there. coremltools' own loader is only handed a package that passed.
* :func:`blob_path` resolves a ``blobFileValue.fileName`` (``@model_path/...``, relative to the
  directory of the root model spec) inside the package root, and in the weights directory
  (coremltools' PyMIL loader reads ``<weights dir>/<file name>``, the runtime the full path: a
  name for which the two differ is refused too).
* :func:`check_storage` checks, before any weight is read: each blob reference's metadata lies
  within its file and holds exactly the dtype and element count its declared type says;
  each immediate tensor stores as many values as its declared shape has; every declared shape
  is static and non-negative. With ``memory_bound`` (the PyMIL and evaluator paths, which
  hold whole tensors), no function input (a state's buffer included) or op output may declare
  more bytes than the machine's memory.

Refusals are :class:`~mil_sparsity.errors.UnsafePackageError` (a ValueError) naming the
entry, what the package wrote and where it leads, raised before anything is read from the
blobs or written for the output. What is **not** checked: that the program computes anything
sensible; op semantics are left to coremltools' loader (whose errors :func:`load_checked`
reports as ours) and to the evaluator.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Final, Iterator, Mapping, Optional

import attrs

from mil_sparsity.format.blob import BlobInfo, BlobReader
from mil_sparsity.errors import InvalidInputError, UnsafePackageError
from mil_sparsity.format.sparse_format import BY_SPEC_NAME, spec_type_bits, spec_type_name

#: what we promise about untrusted input: the README's "Security" section and the CLI's --help
SECURITY_NOTE: Final = (
    "Security: model packages are treated as untrusted input. Before anything is read from a "
    ".mlpackage, every path it holds (Manifest.json items, weight file names) must resolve "
    "inside it after '..' and symlinks, each stored weight must have the type and size its "
    "declaration says and lie within its file, and no tensor may be declared larger than this "
    "machine's memory; a package that fails is refused with one error naming the entry (exit "
    "2). Outputs are written only inside the output package, as new files under names of our "
    "own, atomically. Not checked: what the model computes. Converting an untrusted PyTorch "
    "model runs its code (torch.load, tracing), and so does loading a pickled checkpoint: do "
    "that in a sandbox. Calibration and sample files are read as .npz without pickles, config "
    "files as plain YAML/JSON."
)

MANIFEST: Final = "Manifest.json"
#: a manifest holds a few hundred bytes; anything past this is refused unread
MANIFEST_MAX_BYTES: Final = 1 << 20
DATA_DIR: Final = "Data"
MODEL_PATH_PREFIX: Final = "@model_path/"
#: the author and name coremltools gives the weights item and the root model
COREML_AUTHOR: Final = "com.apple.CoreML"
WEIGHTS_ITEM: Final = "weights"

#: the canonical layout every package we write has (names of our own, never from an input)
CANONICAL_SPEC: Final = "com.apple.CoreML/model.mlmodel"
CANONICAL_WEIGHTS: Final = "com.apple.CoreML/weights"
CANONICAL_WEIGHT_FILE: Final = "weight.bin"
CANONICAL_BLOB_NAME: Final = MODEL_PATH_PREFIX + "weights/" + CANONICAL_WEIGHT_FILE


@attrs.frozen
class PackageLayout:
    """The checked files of a package: real paths, each inside ``root``."""

    root: str  # real path of the package directory
    spec_path: str  # the root model spec (a regular file)
    weights_dir: Optional[str]  # the weights item (a directory), None if the manifest has none

    def display(self) -> str:
        return self.root


def _inside(root: str, path: str) -> bool:
    return path == root or os.path.commonpath([root, path]) == root


def resolve_inside(root: str, base: str, written: str, entry: str, shown: Optional[str] = None) -> str:
    """The real path of ``written`` (relative to ``base``), or UnsafePackageError naming
    ``entry`` and ``shown`` (what the package wrote; default ``written``) unless it stays
    inside ``root`` (a real path) after ``..`` and symlinks."""
    shown = written if shown is None else shown
    if not written or "\x00" in written:
        raise UnsafePackageError(f"{root}: {entry} has path {shown!r}, which is not a relative path")
    if os.path.isabs(written):
        raise UnsafePackageError(
            f"{root}: {entry} has the absolute path {shown!r}; paths in a package must be relative to it"
        )
    resolved = os.path.realpath(os.path.join(base, written))
    if not _inside(root, resolved):
        raise UnsafePackageError(
            f"{root}: {entry} has path {shown!r}, which leads to {resolved}, outside the package"
        )
    return resolved


def _field(mapping: Mapping[str, Any], key: str, kind: type, where: str, root: str) -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind):
        raise InvalidInputError(
            f"{root}: {MANIFEST} {where} field {key!r} must be a {kind.__name__}, got {value!r:.80}"
        )
    return value


def _read_manifest(root: str) -> dict[str, Any]:
    path = resolve_inside(root, root, MANIFEST, MANIFEST)
    if not os.path.isfile(path):
        raise InvalidInputError(f"{root} is not a valid .mlpackage: {MANIFEST} is missing")
    size = os.path.getsize(path)
    if size > MANIFEST_MAX_BYTES:
        raise UnsafePackageError(
            f"{root}: {MANIFEST} is {size} bytes; a manifest is at most {MANIFEST_MAX_BYTES}"
        )
    with open(path, "rb") as handle:
        text = handle.read(MANIFEST_MAX_BYTES + 1)
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidInputError(f"{root}: {MANIFEST} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise InvalidInputError(f"{root}: {MANIFEST} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def open_package(package: "str | os.PathLike[str]") -> PackageLayout:
    """Check an .mlpackage's manifest and return its layout (see the module doc).

    FileNotFoundError if ``package`` does not exist; InvalidInputError for a file or a
    malformed manifest; UnsafePackageError for an item path that leads outside the package.
    """
    given = os.fspath(package)
    if not os.path.exists(given):
        raise FileNotFoundError(f"no such .mlpackage: {given}")
    if not os.path.isdir(given):
        raise InvalidInputError(f"{given} is a file, not an .mlpackage directory")
    root = os.path.realpath(given)
    manifest = _read_manifest(root)
    entries = _field(manifest, "itemInfoEntries", dict, "top-level", root)
    root_id = _field(manifest, "rootModelIdentifier", str, "top-level", root)
    data = os.path.join(root, DATA_DIR)
    resolved: dict[str, str] = {}
    weights: Optional[str] = None
    for identifier, item in entries.items():
        if not isinstance(item, dict):
            raise InvalidInputError(f"{root}: {MANIFEST} item {identifier!r} must be an object, got {item!r:.80}")
        where = f"item {identifier!r}"
        written = _field(item, "path", str, where, root)
        name = item.get("name")
        resolved[identifier] = resolve_inside(root, data, written, f"{MANIFEST} {where} ({name!r})")
        if name == WEIGHTS_ITEM and item.get("author") == COREML_AUTHOR and weights is None:
            weights = resolved[identifier]
    if root_id not in resolved:
        raise InvalidInputError(f"{root}: {MANIFEST} names root model {root_id!r}, which is not among its items")
    spec_path = resolved[root_id]
    if not os.path.isfile(spec_path):
        raise InvalidInputError(f"{root}: the root model spec {spec_path} is missing or not a file")
    if weights is not None and not os.path.isdir(weights):
        weights = None  # a manifest may list the weights item of a model that has none
    return PackageLayout(root, spec_path, weights)


def read_spec(path: str) -> Any:
    """The ``Model`` protobuf of a spec file; InvalidInputError if it does not parse."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        spec.ParseFromString(data)
    except Exception as error:  # protobuf's DecodeError
        raise InvalidInputError(f"{path}: not a readable Core ML model spec ({error})") from None
    return spec


def check_package(package: "str | os.PathLike[str]", *, memory_bound: bool = True) -> PackageLayout:
    """:func:`open_package` and, for an ML Program, :func:`check_storage` of its spec: what
    must hold before a package is handed to a loader we do not control (Core ML's own)."""
    layout = open_package(package)
    spec = read_spec(layout.spec_path)
    if spec.WhichOneof("Type") == "mlProgram":
        check_storage(spec, layout, memory_bound=memory_bound)
    return layout


@contextlib.contextmanager
def manifest_preserved(package: "str | os.PathLike[str]") -> Iterator[None]:
    """Keep a package's ``Manifest.json`` as it was around code that opens the package with
    coremltools' ``ModelPackage``, which rewrites the manifest whenever it closes one (also
    when it only read it). If the bytes or the modification time changed, the original bytes
    are written back in place and the times restored (only the inode's ctime shows it). The
    manifest was checked by :func:`open_package` first (inside the package, at most
    :data:`MANIFEST_MAX_BYTES`)."""
    path = os.path.join(open_package(package).root, MANIFEST)
    before = os.stat(path)
    with open(path, "rb") as handle:
        original = handle.read(MANIFEST_MAX_BYTES + 1)
    try:
        yield
    finally:
        after = os.stat(path)
        changed = (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
        if not changed:
            with open(path, "rb") as handle:
                changed = handle.read(MANIFEST_MAX_BYTES + 1) != original
        if changed:
            with open(path, "r+b") as handle:
                handle.write(original)
                handle.truncate()
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def blob_path(layout: PackageLayout, file_name: str, entry: str) -> str:
    """The real path of the weight file a ``blobFileValue.fileName`` names (see module doc)."""
    if not file_name.startswith(MODEL_PATH_PREFIX):
        raise UnsafePackageError(
            f"{layout.root}: {entry} names the weight file {file_name!r}; "
            f"a package's weight files are named {MODEL_PATH_PREFIX}..."
        )
    model_dir = os.path.dirname(layout.spec_path)
    path = resolve_inside(layout.root, model_dir, file_name[len(MODEL_PATH_PREFIX):], entry, file_name)
    base = os.path.basename(file_name)
    expected = os.path.realpath(os.path.join(layout.weights_dir, base)) if layout.weights_dir else None
    if path != expected:
        raise UnsafePackageError(
            f"{layout.root}: {entry} names the weight file {file_name!r}, which leads to {path}; "
            f"weight files must lie in the package's weights directory ({layout.weights_dir})"
        )
    if not os.path.isfile(path):
        raise InvalidInputError(f"{layout.root}: {entry} names the weight file {file_name!r}, which is missing")
    return path


# ---- the spec's stored values -----------------------------------------------------------------

def iter_blocks(block: Any) -> Iterator[Any]:
    """``block`` and every block nested in its ops (``cond``, ``while_loop``), depth first."""
    yield block
    for op in block.operations:
        for inner in op.blocks:
            yield from iter_blocks(inner)


def function_block(function: Any) -> Any:
    """The block of a spec function at its own opset."""
    if function.opset not in function.block_specializations:
        raise InvalidInputError(f"function has no block for its opset {function.opset!r}")
    return function.block_specializations[function.opset]


def op_values(op: Any) -> Iterator[tuple[str, Any]]:
    """(attribute or input name, Value) for every value ``op`` holds itself (not by var name)."""
    for key, value in op.attributes.items():
        yield key, value
    for key, argument in op.inputs.items():
        for binding in argument.arguments:
            if binding.WhichOneof("binding") == "value":
                yield key, binding.value


def spec_ops(spec: Any) -> Iterator[tuple[str, Any]]:
    """(function name, op) for every op of every function and nested block of an ML Program."""
    for name, function in spec.mlProgram.functions.items():
        for block in iter_blocks(function_block(function)):
            for op in block.operations:
                yield name, op


def blob_values(spec: Any) -> Iterator[Any]:
    """Every Value of the spec stored in a weight file (attributes and inputs)."""
    for _, op in spec_ops(spec):
        for _, value in op_values(op):
            if value.WhichOneof("value") == "blobFileValue":
                yield value


def op_label(function: str, op: Any, key: str = "") -> str:
    name = op.outputs[0].name if op.outputs else "?"
    return f"function {function!r} op {name!r} ({op.type}{', ' + key if key else ''})"


def declared_elements(value_type: Any, entry: str, root: str) -> Optional[int]:
    """Elements of a tensor type (an exact Python int), None for non-tensor or unknown dims.
    UnsafePackageError for a negative size."""
    if value_type.WhichOneof("type") != "tensorType":
        return None
    count = 1
    for dim in value_type.tensorType.dimensions:
        if dim.WhichOneof("dimension") != "constant":
            return None
        size = int(dim.constant.size)
        if size < 0:
            raise UnsafePackageError(f"{root}: {entry} declares the negative dimension {size}")
        count *= size
    return count


def memory_bytes() -> int:
    """The machine's physical memory (2**40 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def _data_type_name(value_type: Any) -> str:
    code = int(value_type.tensorType.dataType)
    name = spec_type_name(code)
    return name if name is not None else f"<unknown {code}>"


def _check_immediate(value: Any, entry: str, root: str) -> None:
    """The values an immediate tensor stores must be exactly what its declared shape holds."""
    tensor = value.immediateValue.tensor
    kind = tensor.WhichOneof("value")
    count = declared_elements(value.type, entry, root)
    if kind is None or count is None:
        return
    stored = len(getattr(tensor, kind).values)
    expected = count
    if kind == "bytes":
        expected = -(-count * spec_type_bits(_data_type_name(value.type)) // 8)
    if stored != expected:
        unit = "bytes" if kind == "bytes" else "values"
        raise UnsafePackageError(
            f"{root}: {entry} declares {count} elements ({expected} {unit}) but stores {stored} {unit}"
        )


@attrs.define
class StorageCheck:
    """What :func:`check_storage` verified: the weight file of each blob reference by
    ``fileName``, and each reference's metadata by (file, offset)."""

    files: dict[str, str] = attrs.field(factory=dict)  # fileName -> real path
    blobs: dict[tuple[str, int], BlobInfo] = attrs.field(factory=dict)

    def path_of(self, value: Any) -> str:
        return self.files[value.blobFileValue.fileName]


def check_storage(spec: Any, layout: PackageLayout, *, memory_bound: bool = False) -> StorageCheck:
    """Check every stored value of an ML Program spec against the package (see module doc)."""
    root = layout.root
    limit = memory_bytes() if memory_bound else None
    check = StorageCheck()
    readers: dict[str, BlobReader] = {}
    try:
        if limit is not None:
            for name, function in spec.mlProgram.functions.items():
                for item in function.inputs:
                    _check_bound(item.type, f"function {name!r} input {item.name!r}", root, limit)
        for function_name, op in spec_ops(spec):
            if limit is not None:
                for output in op.outputs:
                    _check_bound(output.type, op_label(function_name, op), root, limit)
            for key, value in op_values(op):
                entry = op_label(function_name, op, key)
                kind = value.WhichOneof("value")
                if kind == "immediateValue" and value.immediateValue.WhichOneof("value") == "tensor":
                    _check_immediate(value, entry, root)
                elif kind == "blobFileValue":
                    _check_blob(value, entry, layout, check, readers)
    finally:
        for reader in readers.values():
            reader.close()
    return check


def _check_bound(value_type: Any, entry: str, root: str, limit: int) -> None:
    if value_type.WhichOneof("type") == "stateType":  # a state's buffer: its wrapped tensor
        value_type = value_type.stateType.wrappedType
    count = declared_elements(value_type, entry, root)
    if count is None:
        return
    nbytes = -(-count * spec_type_bits(_data_type_name(value_type)) // 8)
    if nbytes > limit:
        raise UnsafePackageError(
            f"{root}: {entry} declares a tensor of {count} elements ({nbytes} bytes), more than "
            f"this machine's memory ({limit} bytes)"
        )


def _check_blob(
    value: Any, entry: str, layout: PackageLayout, check: StorageCheck, readers: dict[str, BlobReader]
) -> None:
    file_name = value.blobFileValue.fileName
    if file_name not in check.files:
        check.files[file_name] = blob_path(layout, file_name, entry)
    path = check.files[file_name]
    if path not in readers:
        readers[path] = BlobReader(path)
    reader = readers[path]
    offset = int(value.blobFileValue.offset)
    info = check.blobs.get((path, offset))
    if info is None:
        info = check.blobs[(path, offset)] = reader.info(offset)
    count = declared_elements(value.type, entry, layout.root)
    declared = _data_type_name(value.type)
    dtype = BY_SPEC_NAME.get(declared)
    expected = dtype.name if dtype is not None else declared
    if count is None or expected != info.dtype_name or count != info.count:
        raise UnsafePackageError(
            f"{layout.root}: {entry} declares {count if count is not None else 'an unknown number of'} "
            f"{expected} values, but its blob at byte {offset} of {path} holds {info.count} "
            f"{info.dtype_name} values: the weight file does not match the model"
        )
