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
from mil_sparsity.sparse_format import BY_BLOB_CODE, BY_NAME, MilDtype

_SENTINEL: Final = 0xDEADBEEF
_HEADER = struct.Struct("<II")
_METADATA = struct.Struct("<IIQQQ")

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
    def dtype(self) -> MilDtype:
        return BY_BLOB_CODE[self.code]

    @property
    def dtype_name(self) -> str:
        return self.dtype.name

    @property
    def bits(self) -> int:
        return self.dtype.bits

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
        if code not in BY_BLOB_CODE:
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
    return raw.view(np.dtype(info.dtype.numpy))


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
        method: Callable[[NDArray[Any]], int] = getattr(self._writer, _write_method(dtype_name))
        storage = _WRITE_VIEW.get(dtype_name, BY_NAME[dtype_name].numpy)
        return int(method(np.ascontiguousarray(values.reshape(-1)).view(np.dtype(storage))))

    def copy_blob(self, reader: BlobReader, info: BlobInfo) -> int:
        """Re-write a blob unchanged (values and dtype), wherever it ends up."""
        return self.write(info.dtype_name, _values_from_raw(reader.read_raw(info), info))

    def close(self) -> None:
        self._writer = None  # the C++ writer flushes and closes when released


def _write_method(dtype_name: str) -> str:
    """The writer's method for a MIL dtype: ``write_<name>_data`` (fp32: ``write_float_data``)."""
    return "write_float_data" if dtype_name == "fp32" else f"write_{dtype_name}_data"


# the writer takes fp16 as uint16 bits
_WRITE_VIEW: Final = {"fp16": "uint16"}
