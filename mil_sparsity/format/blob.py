"""Core ML weight blob files (``weights/weight.bin``): read one blob at a time, write in order.

Layout (MIL blob storage, version 2): a 64-byte header (``uint32 count, uint32 version``, then
reserved) and, per blob, a 64-byte metadata record (``uint32 sentinel 0xDEADBEEF, uint32 dtype,
uint64 size_in_bytes, uint64 data_offset, uint64 padding_size_in_bits``, reserved) followed by
its data, 64-byte aligned. A ``blobFileValue`` in the model spec holds the metadata's offset.

Reading uses plain positioned reads (no mmap), so pages of the source file never count toward
the process's resident memory. :class:`BlobWriter` writes the same layout, byte for byte what
coremltools' blob storage writer produces (checked by the tests), but also takes a blob in
pieces (:meth:`BlobWriter.begin` / :meth:`BlobSink.append`), so a weight larger than memory is
written chunk by chunk, and copies a blob's stored bytes in bounded pieces. Sub-byte data is
packed LSB first.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Final

import attrs
import numpy as np
from numpy.typing import NDArray

from mil_sparsity import _coremltools_private as private
from mil_sparsity.errors import InvalidInputError
from mil_sparsity.format.sparse_format import BY_BLOB_CODE, BY_NAME, MilDtype

_SENTINEL: Final = 0xDEADBEEF
_VERSION: Final = 2
_HEADER = struct.Struct("<II")
_METADATA = struct.Struct("<IIQQQ")
_RECORD: Final = 64  # bytes of the header, of a metadata record, and the data alignment
#: bytes per positioned read when a blob is copied unchanged
COPY_PIECE_BYTES: Final = 16 << 20

class BlobFileError(InvalidInputError):
    """The weight file is corrupt (truncated, bad header or metadata, unknown dtype): refused
    before any of its data is read (an :class:`InvalidInputError`, so a ValueError). A file
    that is intact but does not match its declarations is an ``UnsafePackageError``."""


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
        bits = BY_BLOB_CODE[code].bits
        if padding >= 8 or padding > nbytes * 8 or (nbytes * 8 - padding) % bits:
            raise BlobFileError(
                f"{self.path}: blob at byte {offset} stores {nbytes} bytes with {padding} padding "
                f"bits, which is no whole number of {BY_BLOB_CODE[code].name} elements"
            )
        if data_offset < offset + _RECORD:
            raise BlobFileError(
                f"{self.path}: blob at byte {offset} says its data starts at byte {data_offset}, "
                "inside its own metadata: the weight file is corrupt"
            )
        if data_offset + nbytes > self.size:
            raise BlobFileError(
                f"{self.path}: blob at byte {offset} needs bytes {data_offset}..{data_offset + nbytes} "
                f"but the file has {self.size}: the weight file is truncated"
            )
        return BlobInfo(offset, code, nbytes, data_offset, padding)

    def read_raw(self, info: BlobInfo) -> NDArray[np.uint8]:
        """The blob's bytes as stored (sub-byte types stay packed)."""
        return self.read_raw_range(info, 0, info.nbytes)

    def read_raw_range(self, info: BlobInfo, start: int, stop: int) -> NDArray[np.uint8]:
        """Bytes ``[start, stop)`` of the blob's data (a seek and one read into a new buffer)."""
        buffer = np.empty(stop - start, dtype=np.uint8)
        self._file.seek(info.data_offset + start)
        if self._file.readinto(buffer.data) != stop - start:
            raise BlobFileError(f"{self.path}: short read at byte {info.data_offset + start}")
        return buffer

    def read_elements(self, info: BlobInfo, start: int, stop: int) -> NDArray[Any]:
        """Elements ``[start, stop)`` of a blob of a byte-sized type (positioned read, no mmap)."""
        if info.bits < 8:
            raise BlobFileError(f"{self.path}: element reads of {info.dtype_name} blobs are not supported")
        itemsize = info.bits // 8
        return self.read_raw_range(info, start * itemsize, stop * itemsize).view(np.dtype(info.dtype.numpy))

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


def stored_nbytes(dtype_name: str, count: int) -> tuple[int, int]:
    """(data bytes, padding bits) of a blob of ``count`` elements of ``dtype_name``."""
    bits = BY_NAME[dtype_name].bits * count
    nbytes = (bits + 7) // 8
    return nbytes, nbytes * 8 - bits


def encode(dtype_name: str, values: NDArray[Any]) -> NDArray[np.uint8]:
    """The stored bytes of ``values`` (one element per item): byte types as they are in memory;
    sub-byte types as a bit stream, each element's low ``bits`` bits LSB first, packed 8 per
    byte LSB first (``uint1``: one bit per element; ``int4``: two's complement)."""
    flat = np.ascontiguousarray(values.reshape(-1))
    dtype = BY_NAME[dtype_name]
    if dtype.bits == 1:
        return np.packbits(flat.view(np.uint8), bitorder="little")
    if dtype.bits < 8:
        element_bits = np.unpackbits(flat.view(np.uint8)[:, None], axis=1, count=dtype.bits, bitorder="little")
        return np.packbits(element_bits.reshape(-1), bitorder="little")
    return flat.view(np.dtype(dtype.numpy)).view(np.uint8)


class BlobSink:
    """One blob being written in pieces: :meth:`append` its stored bytes, then :meth:`close`."""

    def __init__(self, writer: "BlobWriter", offset: int, nbytes: int) -> None:
        self.offset = offset  # of the metadata record: what the spec's blobFileValue holds
        self._writer = writer
        self._left = nbytes

    def append(self, data: NDArray[np.uint8]) -> None:
        if data.size > self._left:
            raise InvalidInputError(f"blob at byte {self.offset}: {data.size} more bytes but only {self._left} left")
        self._left -= data.size
        self._writer._append(data)

    def close(self) -> int:
        """The blob's offset; ValueError unless exactly the announced bytes were appended."""
        if self._left:
            raise InvalidInputError(f"blob at byte {self.offset}: {self._left} announced bytes never written")
        self._writer._sink = None
        return self.offset


class BlobWriter:
    """Write a new weight file blob by blob (in file order); each write returns the blob's
    metadata offset. One blob is open at a time; :meth:`close` writes the blob count."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "xb")  # never follows or replaces an existing file
        self._file.write(bytes(_RECORD))
        self._end = _RECORD
        self._count = 0
        self._sink: BlobSink | None = None

    def begin(self, dtype_name: str, count: int) -> BlobSink:
        """Start a blob of ``count`` elements of ``dtype_name``; its metadata is written now."""
        nbytes, padding = stored_nbytes(dtype_name, count)
        return self._begin(BY_NAME[dtype_name].blob_code, nbytes, padding)

    def _begin(self, code: int, nbytes: int, padding_bits: int) -> BlobSink:
        if self._sink is not None:
            raise InvalidInputError(f"{self.path}: blob at byte {self._sink.offset} is still open")
        offset = -(-self._end // _RECORD) * _RECORD
        metadata = bytearray(_RECORD)
        _METADATA.pack_into(metadata, 0, _SENTINEL, code, nbytes, offset + _RECORD, padding_bits)
        self._file.write(bytes(offset - self._end) + bytes(metadata))
        self._end = offset + _RECORD
        self._count += 1
        self._sink = BlobSink(self, offset, nbytes)
        return self._sink

    def _append(self, data: NDArray[np.uint8]) -> None:
        self._file.write(np.ascontiguousarray(data).data)
        self._end += int(data.size)

    def write(self, dtype_name: str, values: NDArray[Any]) -> int:
        """Write ``values`` (one element per array item) as a blob of ``dtype_name``."""
        sink = self.begin(dtype_name, int(values.size))
        sink.append(encode(dtype_name, values))
        return sink.close()

    def write_raw(self, info: BlobInfo, raw: NDArray[np.uint8]) -> int:
        """Write a blob's stored bytes (as :meth:`BlobReader.read_raw` returned them) unchanged."""
        sink = self._begin(info.code, info.nbytes, info.padding_bits)
        sink.append(raw)
        return sink.close()

    def copy_blob(self, reader: BlobReader, info: BlobInfo, piece_bytes: int | None = None) -> int:
        """Re-write a blob unchanged (stored bytes and dtype), reading it in pieces of
        ``piece_bytes`` (default :data:`COPY_PIECE_BYTES`)."""
        piece_bytes = COPY_PIECE_BYTES if piece_bytes is None else piece_bytes
        sink = self._begin(info.code, info.nbytes, info.padding_bits)
        for start in range(0, info.nbytes, piece_bytes):
            sink.append(reader.read_raw_range(info, start, min(info.nbytes, start + piece_bytes)))
        return sink.close()

    def close(self) -> None:
        """Write the header (blob count, version) and close the file."""
        if self._file.closed:
            return
        try:
            if self._sink is not None:
                raise InvalidInputError(f"{self.path}: blob at byte {self._sink.offset} was never finished")
            self._file.seek(0)
            self._file.write(_HEADER.pack(self._count, _VERSION))
        finally:
            self._file.close()
