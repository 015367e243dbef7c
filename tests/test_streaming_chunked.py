"""Streaming's chunked path (mil_sparsity.streaming.chunked) and the blob writer it needs.

* ``_blob.BlobWriter`` writes the bytes coremltools' blob storage writer writes, whole or in
  pieces, and copies blobs in bounded pieces;
* with ``chunked_above_bytes=0`` and tiny chunks every weight goes through the chunked kernels,
  and the package (spec and weight file) is byte-identical to the unchunked streaming result,
  and equivalent to the PyMIL path, for every config kind, deployment target and model
  (multifunction with shared blobs included), and for activation-scored configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private, streaming
from mil_sparsity.format import blob as _blob
from mil_sparsity.streaming import chunked as streaming_chunked
from mil_sparsity.streaming import compress_package, rewrite
from _mil_helpers import one_pass
from test_activation_scoring import INPUTS, product_program
from test_streaming import (
    CONFIGS,
    MODELS,
    TARGETS,
    as_pipeline,
    assert_equivalent,
    big_weights,
    blob_values,
    op_name,
    spec_of,
    spec_file,
    sparse_op_count,
    weight_bin,
)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

TINY_CHUNK_BYTES = 192  # 96 fp16 / 48 fp32 elements per chunk: many chunks, mask bytes split


# =============================================================================================
# the blob writer
# =============================================================================================
def blobs() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        ("fp16", rng.standard_normal(1000).astype(np.float16)),
        ("uint1", (rng.random(77) < 0.5).astype(np.uint8)),
        ("uint8", np.zeros(0, np.uint8)),
        ("fp32", rng.standard_normal(13).astype(np.float32)),
        ("int8", rng.integers(-5, 5, 33).astype(np.int8)),
        ("uint1", np.ones(64, np.uint8)),
        ("uint8", rng.integers(0, 255, 100).astype(np.uint8)),
        ("uint2", rng.integers(0, 4, 37).astype(np.uint8)),
        ("uint3", rng.integers(0, 8, 41).astype(np.uint8)),
        ("uint4", rng.integers(0, 16, 19).astype(np.uint8)),
        ("uint6", rng.integers(0, 64, 23).astype(np.uint8)),
        ("int4", rng.integers(-8, 8, 29).astype(np.int8)),
    ]


def test_blob_writer_writes_what_coremltools_writes(tmp_path: Path) -> None:
    expected_path, whole_path, pieces_path = (str(tmp_path / f"{n}.bin") for n in ("ct", "whole", "pieces"))
    reference = private.blob_storage_writer(expected_path)
    expected_offsets = []
    for dtype_name, values in blobs():
        method = "write_float_data" if dtype_name == "fp32" else f"write_{dtype_name}_data"
        stored = values.view(np.uint16) if dtype_name == "fp16" else values
        expected_offsets.append(int(getattr(reference, method)(stored)))
    del reference  # the C++ writer flushes when released

    whole = _blob.BlobWriter(whole_path)
    assert [whole.write(dtype_name, values) for dtype_name, values in blobs()] == expected_offsets
    whole.close()

    pieces = _blob.BlobWriter(pieces_path)
    for dtype_name, values in blobs():
        sink = pieces.begin(dtype_name, values.size)
        data = _blob.encode(dtype_name, values)
        for start in range(0, data.size, 5):
            sink.append(data[start : start + 5])
        sink.close()
    pieces.close()

    expected = Path(expected_path).read_bytes()
    assert Path(whole_path).read_bytes() == expected
    assert Path(pieces_path).read_bytes() == expected


def test_blob_copy_in_pieces_and_sink_checks(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    writer = _blob.BlobWriter(str(source))
    offsets = [writer.write(dtype_name, values) for dtype_name, values in blobs()]
    writer.close()
    copy = tmp_path / "copy.bin"
    with _blob.BlobReader(str(source)) as reader:
        writer = _blob.BlobWriter(str(copy))
        assert [writer.copy_blob(reader, reader.info(offset), piece_bytes=7) for offset in offsets] == offsets
        writer.close()
    assert copy.read_bytes() == source.read_bytes()

    writer = _blob.BlobWriter(str(tmp_path / "bad.bin"))
    sink = writer.begin("fp16", 4)
    with pytest.raises(ValueError, match="still open"):
        writer.begin("fp16", 1)
    with pytest.raises(ValueError, match="only 8 left"):
        sink.append(np.zeros(9, np.uint8))
    sink.append(np.zeros(6, np.uint8))
    with pytest.raises(ValueError, match="2 announced bytes never written"):
        sink.close()


# =============================================================================================
# activation scoring: a saved package of every product kind and its statistics
# =============================================================================================
@pytest.fixture(scope="module")
def package(tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("chunked_scoring") / "products.mlpackage"
    ct.convert(product_program(ct.target.iOS18), convert_to="mlprogram",
               minimum_deployment_target=ct.target.iOS18).save(str(path))
    return path


@pytest.fixture(scope="module")
def package_stats(package: Path, tmp_path_factory: Any) -> Path:
    rng = np.random.default_rng(5)
    samples = [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in INPUTS.items()} for _ in range(3)]
    path = tmp_path_factory.mktemp("chunked_stats") / "stats.npz"
    ms.collect_activation_stats(package, samples, progress=False).save(path)
    return path


SCORED_CONFIGS = {
    "magnitude": ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation"),
    "n_m": ms.NMConfig(2, 4, weight_threshold=0, scoring="activation"),
    "block": ms.BlockConfig(0.5, 2, weight_threshold=0, scoring="activation"),
}


# =============================================================================================
# chunked streaming == unchunked streaming == PyMIL
# =============================================================================================
@pytest.fixture
def chunked_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Tiny chunks, and the shape of every weight written by the chunked path."""
    monkeypatch.setattr(streaming_chunked, "CHUNK_BYTES", TINY_CHUNK_BYTES)
    written: list[tuple[int, ...]] = []
    original = rewrite.write_chunked

    def spy(writer: Any, sparse: Any, form: Any) -> Any:
        written.append(sparse.pruner.shape)
        assert len(sparse.pruner.bounds) > 1, "the weight must span several chunks"
        return original(writer, sparse, form)

    monkeypatch.setattr(rewrite, "write_chunked", spy)
    return written


def compress_both(src: Path, tmp_path: Path, config: Any) -> tuple[Path, Path, ms.SparsityReport, ms.SparsityReport]:
    whole, chunked = tmp_path / "whole.mlpackage", tmp_path / "chunked.mlpackage"
    whole_report = compress_package(src, whole, config, chunked_above_bytes=1 << 40)
    chunked_report = compress_package(src, chunked, config, chunked_above_bytes=0)
    return whole, chunked, whole_report, chunked_report


def assert_same_package(a: Path, b: Path) -> None:
    assert spec_file(a).read_bytes() == spec_file(b).read_bytes()
    assert weight_bin(a).read_bytes() == weight_bin(b).read_bytes()


@pytest.mark.parametrize("config_id", list(CONFIGS))
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("model", MODELS + ["shared"])
def test_chunked_streaming_is_byte_identical(model, target, config_id, sources, tmp_path, chunked_writes):
    src = sources.get(model, target)
    config = CONFIGS[config_id](*big_weights(src))
    whole, chunked, whole_report, chunked_report = compress_both(src, tmp_path, config)
    assert sparse_op_count(chunked) > 0, "the case must pack something"
    assert chunked_writes, "the chunked path must have written the packed weights"
    assert [r.to_dict() for r in chunked_report] == [r.to_dict() for r in whole_report]
    assert_same_package(chunked, whole)


@pytest.mark.parametrize("config_id", ["magnitude", "n_m", "block", "threshold", "pack", "two_pass"])
@pytest.mark.parametrize("model, target", [("mlp", "iOS16"), ("conv", "iOS18"), ("multifunction", "iOS18"), ("shared", "iOS17")])
def test_chunked_streaming_equals_pymil(model, target, config_id, sources, tmp_path, chunked_writes):
    src = sources.get(model, target)
    config = CONFIGS[config_id](*big_weights(src))
    chunked, pymil = tmp_path / "chunked.mlpackage", tmp_path / "pymil.mlpackage"
    compress_package(src, chunked, config, chunked_above_bytes=0)  # its report: test above
    ms.apply_pipeline(src, as_pipeline(config), streaming=False).save(str(pymil))
    assert chunked_writes
    assert_equivalent(chunked, pymil)


@pytest.mark.parametrize("config_id", list(SCORED_CONFIGS))
def test_chunked_activation_scoring_is_byte_identical(config_id, package, package_stats, tmp_path, chunked_writes):
    pipeline = one_pass(ms.PRUNE_BY_MAGNITUDE, config=SCORED_CONFIGS[config_id], calibration=str(package_stats))
    whole, chunked, whole_report, chunked_report = compress_both(package, tmp_path, pipeline)
    scored = [r for r in chunked_report.packed if r.scoring == "activation"]
    assert scored, "activation-scored weights must be packed"
    assert len(chunked_writes) >= 3, "the linear and matmul weights go through the chunked path"
    assert [r.to_dict() for r in chunked_report] == [r.to_dict() for r in whole_report]
    assert_same_package(chunked, whole)
    pymil = tmp_path / "pymil.mlpackage"
    ms.apply_pipeline(package, pipeline, streaming=False).save(str(pymil))
    assert_equivalent(chunked, pymil)


def test_chunked_is_only_used_above_the_limit(package, tmp_path, chunked_writes):
    config = ms.MagnitudeConfig(0.5, weight_threshold=0)
    first = compress_package(package, tmp_path / "a.mlpackage", config, chunked_above_bytes=0)
    sizes = sorted({r.dense_bytes for r in first.packed})
    assert len(sizes) > 2, "premise: packed weights of several sizes"
    limit = sizes[len(sizes) // 2]
    chunked_writes.clear()
    report = compress_package(package, tmp_path / "b.mlpackage", config, chunked_above_bytes=limit)
    expected = sorted(r.shape for r in report.packed if r.dense_bytes > limit)
    assert expected and len(expected) < len(report.packed)
    assert sorted(chunked_writes) == expected


def test_chunked_reads_are_bounded(sources, tmp_path, monkeypatch, chunked_writes):
    """Above the limit no weight is read whole: every positioned read is one chunk (or one copy
    piece), and the packed weights are never loaded as arrays."""
    monkeypatch.setattr(_blob, "COPY_PIECE_BYTES", TINY_CHUNK_BYTES)
    whole_reads: list[int] = []
    range_reads: list[int] = []
    depth = [0]
    read_values, read_raw_range = _blob.BlobReader.read_values, _blob.BlobReader.read_raw_range

    def spy_values(self: Any, info: Any) -> Any:
        depth[0] += 1
        try:
            whole_reads.append(info.offset)
            return read_values(self, info)
        finally:
            depth[0] -= 1

    def spy_range(self: Any, info: Any, start: int, stop: int) -> Any:
        if not depth[0]:
            range_reads.append(stop - start)
        return read_raw_range(self, info, start, stop)

    monkeypatch.setattr(_blob.BlobReader, "read_values", spy_values)
    monkeypatch.setattr(_blob.BlobReader, "read_raw_range", spy_range)
    src = sources.get("lstm", "iOS18")
    report = compress_package(src, tmp_path / "out.mlpackage", ms.MagnitudeConfig(0.5), chunked_above_bytes=0)
    monkeypatch.undo()
    assert report.packed and len(chunked_writes) == len(report.packed)
    assert range_reads and max(range_reads) <= TINY_CHUNK_BYTES
    packed_offsets = {
        value.blobFileValue.offset
        for _, op, _, value in blob_values(spec_of(src))
        if op.type == "const" and op_name(op) in {r.name for r in report.packed}
    }
    assert packed_offsets and not packed_offsets & set(whole_reads)


@pytest.mark.parametrize("value, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("64", TypeError)])
def test_chunked_above_bytes_is_checked(value, error, sources, tmp_path):
    with pytest.raises(error, match="chunked_above_bytes"):
        compress_package(sources.get("mlp", "iOS18"), tmp_path / "out.mlpackage", ms.PackConfig(), chunked_above_bytes=value)
    assert not (tmp_path / "out.mlpackage").exists()
