"""Core ML weight blob files (``weights/weight.bin``): read one blob at a time, write in order.

Layout (MIL blob storage, version 2): a 64-byte header (``uint32 count, uint32 version``, then
reserved) and, per blob, a 64-byte metadata record (``uint32 sentinel 0xDEADBEEF, uint32 dtype,
uint64 size_in_bytes, uint64 data_offset, uint64 padding_size_in_bits``, reserved) followed by
its data, 64-byte aligned. A ``blobFileValue`` in the model spec holds the metadata's offset.

Reading uses plain positioned reads (no mmap), so pages of the source file never count toward
the process's resident memory. Writing goes through coremltools' blob storage writer.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Callable, Final

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity import _coremltools_private as private

_SENTINEL: Final = 0xDEADBEEF
_HEADER = struct.Struct("<II")
_METADATA = struct.Struct("<IIQQQ")

# blob dtype code -> (name, numpy storage dtype, bits per element)
BLOB_DTYPES: Final[dict[int, tuple[str, str, int]]] = {
    1: ("fp16", "float16", 16),
    2: ("fp32", "float32", 32),
    3: ("uint8", "uint8", 8),
    4: ("int8", "int8", 8),
    6: ("int16", "int16", 16),
    7: ("uint16", "uint16", 16),
    8: ("int4", "int8", 4),
    9: ("uint1", "uint8", 1),
    10: ("uint2", "uint8", 2),
    11: ("uint4", "uint8", 4),
    12: ("uint3", "uint8", 3),
    13: ("uint6", "uint8", 6),
    14: ("int32", "int32", 32),
    15: ("uint32", "uint32", 32),
}
BLOB_CODE_BY_NAME: Final = {name: code for code, (name, _, _) in BLOB_DTYPES.items()}


class BlobFileError(ValueError):
    """The weight file is not what the model spec says it is (truncated, corrupt, unknown)."""


@attrs.frozen
class BlobInfo:
    offset: int  # of the metadata record: what the spec's blobFileValue holds
    code: int
    nbytes: int
    data_offset: int
    padding_bits: int

    @property
    def dtype_name(self) -> str:
        return BLOB_DTYPES[self.code][0]

    @property
    def bits(self) -> int:
        return BLOB_DTYPES[self.code][2]

    @property
    def count(self) -> int:
        """Number of elements stored."""
        return (self.nbytes * 8 - self.padding_bits) // self.bits


class BlobReader:
    """Positioned reads of single blobs from a weight file, each checked against the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size
        header = self._read_bytes(0, 64, "header")
        count, version = _HEADER.unpack_from(header)
        if version != 2:
            raise BlobFileError(f"{path}: unsupported blob storage version {version} (expected 2)")
        self.count = count

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "BlobReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_bytes(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise BlobFileError(
                f"{self.path}: {what} at byte {offset} (+{length}) is past the end of the file "
                f"({self.size} bytes): the weight file is truncated or does not match the model"
            )
        return os.pread(self._file.fileno(), length, offset)

    def info(self, offset: int) -> BlobInfo:
        sentinel, code, nbytes, data_offset, padding = _METADATA.unpack_from(
            self._read_bytes(offset, 64, "blob metadata")
        )
        if sentinel != _SENTINEL:
            raise BlobFileError(f"{self.path}: no blob metadata at byte {offset} (bad sentinel)")
        if code not in BLOB_DTYPES:
            raise BlobFileError(f"{self.path}: blob at byte {offset} has unknown dtype code {code}")
        if data_offset + nbytes > self.size:
            raise BlobFileError(
                f"{self.path}: blob at byte {offset} needs bytes {data_offset}..{data_offset + nbytes} "
                f"but the file has {self.size}: the weight file is truncated"
            )
        return BlobInfo(offset, code, nbytes, data_offset, padding)

    def read_raw(self, info: BlobInfo) -> NDArray[np.uint8]:
        """The blob's bytes as stored (sub-byte types stay packed)."""
        buffer = np.empty(info.nbytes, dtype=np.uint8)
        self._file.seek(info.data_offset)
        if self._file.readinto(buffer.data) != info.nbytes:
            raise BlobFileError(f"{self.path}: short read at byte {info.data_offset}")
        return buffer

    def read_values(self, info: BlobInfo) -> NDArray[Any]:
        """The blob's elements, one per array item (sub-byte types unpacked)."""
        return _values_from_raw(self.read_raw(info), info)


def _values_from_raw(raw: NDArray[np.uint8], info: BlobInfo) -> NDArray[Any]:
    if info.bits < 8:
        return unpack_sub_byte(raw, info)
    return raw.view(np.dtype(BLOB_DTYPES[info.code][1]))


def unpack_sub_byte(raw: NDArray[np.uint8], info: BlobInfo) -> NDArray[Any]:
    """One element per byte from packed sub-byte storage (LSB first), as the writer expects."""
    signed = info.dtype_name == "int4"
    values = private.unpack_sub_byte(raw, info.bits, info.count, signed)
    return np.asarray(values, dtype=np.int8 if signed else np.uint8)


class BlobWriter:
    """Append blobs to a new weight file with coremltools' writer; returns metadata offsets."""

    def __init__(self, path: str) -> None:
        self._writer: Any = private.blob_storage_writer(path)

    def write(self, dtype_name: str, values: NDArray[Any]) -> int:
        """Write ``values`` (one element per array item) as a blob of ``dtype_name``."""
        method: Callable[[NDArray[Any]], int] = getattr(self._writer, _WRITE_METHOD[dtype_name])
        storage = BLOB_DTYPES[BLOB_CODE_BY_NAME[dtype_name]][1]
        return int(method(np.ascontiguousarray(values.reshape(-1)).view(np.dtype(_WRITE_VIEW.get(dtype_name, storage)))))

    def copy_blob(self, reader: BlobReader, info: BlobInfo) -> int:
        """Re-write a blob unchanged (values and dtype), wherever it ends up."""
        return self.write(info.dtype_name, _values_from_raw(reader.read_raw(info), info))

    def close(self) -> None:
        self._writer = None  # the C++ writer flushes and closes when released


_WRITE_METHOD: Final = {
    "fp16": "write_fp16_data",
    "fp32": "write_float_data",
    "uint8": "write_uint8_data",
    "int8": "write_int8_data",
    "int16": "write_int16_data",
    "uint16": "write_uint16_data",
    "int4": "write_int4_data",
    "uint1": "write_uint1_data",
    "uint2": "write_uint2_data",
    "uint4": "write_uint4_data",
    "uint3": "write_uint3_data",
    "uint6": "write_uint6_data",
    "int32": "write_int32_data",
    "uint32": "write_uint32_data",
}
# the writer takes fp16 as uint16 bits
_WRITE_VIEW: Final = {"fp16": "uint16"}
