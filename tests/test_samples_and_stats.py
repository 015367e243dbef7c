"""Input sample files, random samples, activation statistics and their file format."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mil_sparsity as ms
from mil_sparsity.calibration.stats import ActivationStats, channel_sum_squares
from mil_sparsity.samples import InputSpec, load_samples, random_samples, samples_from_arrays

SPECS = (InputSpec("ids", (1, 8), np.int32), InputSpec("x", (1, 3), np.float32))


def test_random_samples_follow_the_spec_and_seed():
    a = random_samples(SPECS, 3, seed=7, int_range=(5, 9))
    b = random_samples(SPECS, 3, seed=7, int_range=(5, 9))
    assert len(a) == 3
    for s, t in zip(a, b):
        assert s["ids"].dtype == np.int32 and s["ids"].shape == (1, 8)
        assert s["ids"].min() >= 5 and s["ids"].max() < 9
        assert s["x"].dtype == np.float32 and s["x"].shape == (1, 3)
        np.testing.assert_array_equal(s["x"], t["x"])
    assert not np.array_equal(a[0]["x"], random_samples(SPECS, 1, seed=8)[0]["x"])
    with pytest.raises(ValueError, match="count"):
        random_samples(SPECS, 0)
    with pytest.raises(ValueError, match="int_range"):
        random_samples(SPECS, 1, int_range=(3, 3))


def test_stacked_single_and_indexed_layouts(tmp_path):
    ids = np.arange(4 * 8, dtype=np.int32).reshape(4, 1, 8)
    x = np.ones((4, 1, 3), np.float32)
    stacked = samples_from_arrays({"ids": ids, "x": x}, SPECS)
    assert len(stacked) == 4 and np.array_equal(stacked[2]["ids"], ids[2])
    single = samples_from_arrays({"ids": ids[0], "x": x[0]}, SPECS)
    assert len(single) == 1
    path = tmp_path / "d.npz"
    np.savez(path, ids_0=ids[0], x_0=x[0], ids_1=ids[1], x_1=x[1])
    indexed = load_samples(path, SPECS)
    assert len(indexed) == 2 and np.array_equal(indexed[1]["ids"], ids[1])


def test_sample_file_errors(tmp_path):
    with pytest.raises(ValueError, match="rank 2"):
        samples_from_arrays({"ids": np.zeros((2, 2, 1, 8)), "x": np.zeros((1, 3))}, SPECS)
    with pytest.raises(ValueError, match="disagree"):
        samples_from_arrays({"ids": np.zeros((2, 1, 8)), "x": np.zeros((3, 1, 3))}, SPECS)
    with pytest.raises(ValueError, match="model's inputs are"):
        samples_from_arrays({"other": np.zeros(3)}, SPECS)
    with pytest.raises(ValueError, match="sample 0 has no array"):
        samples_from_arrays({"ids_0": np.zeros((1, 8))}, SPECS)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_samples(bad, SPECS)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
               elements=st.floats(-10, 10, width=32)),
    st.integers(-4, 3),
)
def test_channel_sum_squares_matches_direct_sum(x, axis):
    axis = axis % x.ndim
    sums, rows = channel_sum_squares(x, axis)
    direct = np.sum(np.moveaxis(x.astype(np.float64), axis, -1).reshape(-1, x.shape[axis]) ** 2, 0)
    np.testing.assert_allclose(sums, direct, rtol=1e-5, atol=1e-5)
    assert rows == (x.size // x.shape[axis] if x.shape[axis] else 0)
    assert sums.dtype == np.float64


def test_stats_accumulate_save_load_roundtrip(tmp_path):
    stats = ActivationStats()
    stats.add("main", "w1", np.array([1.0, 4.0]), 2)
    stats.add("main", "w1", np.array([3.0, 0.0]), 2)
    stats.add("other", "w2", np.array([9.0]), 1)
    entry = stats.get("w1")
    assert entry is not None and entry.rows == 4
    np.testing.assert_allclose(entry.mean_square(), [1.0, 1.0])
    np.testing.assert_allclose(stats.get("w2", "other").channel_scale(), [3.0])
    path = tmp_path / "s.npz"
    stats.save(path)
    loaded = ActivationStats.load(path)
    assert set(loaded) == {("main", "w1"), ("other", "w2")}
    np.testing.assert_array_equal(loaded.get("w1").sum_squares, entry.sum_squares)
    with pytest.raises(ValueError, match="channels so far"):
        stats.add("main", "w1", np.ones(3), 1)
    merged = stats.merge(loaded)
    assert merged.get("w1").rows == 8


def test_stats_load_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        ActivationStats.load(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.ones(3))
    with pytest.raises(ValueError, match="not an activation statistics file"):
        ActivationStats.load(foreign)
    good = tmp_path / "good.npz"
    stats = ActivationStats()
    stats.add("main", "w", np.array([1.0]), 1)
    stats.save(good)
    with np.load(good) as archive:
        arrays = {k: archive[k] for k in archive.files}
    key = next(k for k in arrays if k.endswith("sum_squares"))
    arrays[key] = -arrays[key]
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(ValueError, match="negative or non-finite"):
        ActivationStats.load(tampered)


def _write_stats_file(path, header_version, arrays):
    """An .npz in the stats file layout, written by hand (independent of ActivationStats.save)."""
    import json

    header = np.frombuffer(json.dumps({"version": header_version}).encode(), dtype=np.uint8)
    np.savez(path, __mil_sparsity_activation_stats__=header, **arrays)


def test_stats_version_1_files_still_load(tmp_path):
    path = tmp_path / "v1.npz"
    _write_stats_file(path, 1, {"main\x1fw\x1fsum_squares": np.array([4.0, 9.0]), "main\x1fw\x1frows": np.array(1)})
    loaded = ActivationStats.load(path)
    np.testing.assert_array_equal(loaded.get("w").channel_scale(), [2.0, 3.0])
    assert loaded.get("w").gram is None and set(loaded.get("w").statistics) == {"sum_squares"}
    _write_stats_file(path, 1, {"main\x1fw\x1fsum_squares": np.ones(2), "main\x1fw\x1frows": np.array(1),
                                "main\x1fw\x1fgram": np.eye(2)})
    with pytest.raises(ValueError, match="unknown entries"):  # a version 1 file has no gram
        ActivationStats.load(path)
    _write_stats_file(path, 3, {})
    with pytest.raises(ValueError, match="format version 3.*reads versions 1, 2"):
        ActivationStats.load(path)


def test_stats_gram_accumulates_saves_and_is_checked(tmp_path):
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    stats = ActivationStats()
    for x in (x1, x2):
        stats.add("main", "w", (x * x).sum(axis=0), len(x), x.T @ x)
    entry = stats.get("w")
    x = np.concatenate([x1, x2])
    np.testing.assert_allclose(entry.gram, x.T @ x)
    np.testing.assert_allclose(np.diag(entry.gram), entry.sum_squares)
    path = tmp_path / "gram.npz"
    stats.save(path)
    np.testing.assert_array_equal(ActivationStats.load(path).get("w").gram, entry.gram)
    with pytest.raises(ValueError, match="gram statistic for some activations and not for others"):
        stats.add("main", "w", np.ones(3), 1)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files if not k.startswith("__")}
    arrays["main\x1fw\x1fgram"] = np.eye(2)
    _write_stats_file(path, 2, arrays)
    with pytest.raises(ValueError, match="malformed gram"):
        ActivationStats.load(path)


def test_collect_gram_for_linear_rows_only_when_asked(sources):
    from mil_sparsity.samples import input_specs, random_samples
    from mil_sparsity.posthoc import load_model

    model = load_model(sources.get("mlp", "iOS18"))
    samples = random_samples(input_specs(model), 3, seed=1)
    plain = ms.collect_activation_stats(model, samples)
    assert all(plain.get(name).gram is None for _, name in plain)
    with_gram = ms.collect_activation_stats(model, samples, gram=True)
    first = with_gram.get("op_0_weight_to_fp16")
    # the fp16 model casts its input to fp16 before the first linear
    x = np.concatenate([sample["x"].reshape(-1, 64) for sample in samples]).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(first.gram, x.T.astype(np.float64) @ x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(first.sum_squares, plain.get("op_0_weight_to_fp16").sum_squares)
    with pytest.raises(TypeError, match="gram must be a bool"):
        ms.collect_activation_stats(model, samples, gram=1)
