"""The Gram matrix of a conv weight: X^T X of the im2col patches, one per group
(:func:`mil_sparsity.calibration.collect.conv_gram`), against a loop over output positions;
collected from a program; reconstruction of conv weights through prune_by_magnitude."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil.mil import Builder as mb

import mil_sparsity as ms
from mil_sparsity.calibration import collect_activation_stats
from mil_sparsity.calibration.collect import conv_gram
from mil_sparsity.kernels.reconstruction import sparsegpt
from mil_sparsity.reference import ReferenceEvaluator
from mil_sparsity.reference.ops_conv import padding
from _mil_helpers import snapshot
from test_activation_scoring import pruned_weights, run

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]


def brute_force_gram(x: np.ndarray, kernel: tuple[int, int], strides: list[int], dilations: list[int],
                     pads: list[tuple[int, int]], groups: int) -> np.ndarray:
    """One patch vector per (sample, output position), built element by element."""
    n, channels, height, width = x.shape
    padded = np.zeros((n, channels, height + sum(pads[0]), width + sum(pads[1])), dtype=np.float64)
    padded[:, :, pads[0][0]: pads[0][0] + height, pads[1][0]: pads[1][0] + width] = x
    per_group = channels // groups
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out_h = (padded.shape[2] - span[0]) // strides[0] + 1
    out_w = (padded.shape[3] - span[1]) // strides[1] + 1
    k_size = per_group * kernel[0] * kernel[1]
    grams = np.zeros((groups, k_size, k_size))
    for g, b, i, j in itertools.product(range(groups), range(n), range(out_h), range(out_w)):
        patch = np.zeros(k_size)
        index = 0
        for c in range(per_group):
            for ki in range(kernel[0]):
                for kj in range(kernel[1]):
                    patch[index] = padded[b, g * per_group + c, i * strides[0] + ki * dilations[0], j * strides[1] + kj * dilations[1]]
                    index += 1
        grams[g] += np.outer(patch, patch)
    return grams


@pytest.mark.parametrize("kernel, strides, dilations, pads, groups", [
    ((3, 3), [1, 1], [1, 1], [(1, 1), (1, 1)], 1),
    ((3, 2), [2, 1], [1, 2], [(0, 2), (1, 0)], 2),
    ((2, 3), [1, 2], [2, 1], [(0, 0), (0, 0)], 3),
    ((1, 1), [1, 1], [1, 1], [(0, 0), (0, 0)], 1),
])
def test_conv_gram_matches_a_loop(kernel: tuple[int, int], strides: list[int], dilations: list[int],
                                  pads: list[tuple[int, int]], groups: int) -> None:
    x = np.random.default_rng(0).standard_normal((2, 6, 7, 8)).astype(np.float32)
    got = conv_gram(x, kernel, strides, dilations, pads, groups)
    want = brute_force_gram(x, kernel, strides, dilations, pads, groups)
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_patch_order_is_the_weight_reshape_order() -> None:
    """conv(x, W) at every position equals patches @ W.reshape(O, -1).T: the output error of a
    pruned weight is trace((W - W') H (W - W')^T) with the collected H."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    delta = rng.standard_normal(w.shape).astype(np.float32)
    pads = padding("same", x.shape[2:], w.shape[2:], [1, 1], [1, 1], [])
    gram = conv_gram(x, (3, 3), [1, 1], [1, 1], pads, 1)[0]
    from mil_sparsity.reference.ops_conv import convolve

    out = convolve(x.astype(np.float64), delta.astype(np.float64), [1, 1], [1, 1], pads, 1)
    d = delta.reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(np.sum(out**2), np.trace(d @ gram @ d.T), rtol=1e-5)


def conv_program(weight: np.ndarray, groups: int) -> Any:
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8, 7, 7))], opset_version=ct.target.iOS18)
    def prog(img: Any) -> Any:
        w = mb.const(val=weight, name="conv_w")
        return mb.conv(x=img, weight=w, groups=groups, strides=[2, 1], dilations=[1, 2], pad_type="custom",
                       pad=[1, 0, 2, 1], name="conv")

    return prog


def feeds(count: int = 3) -> list[dict[str, np.ndarray]]:
    """Correlated channels (3 sources mixed into 8, plus a little noise), as real features are."""
    rng = np.random.default_rng(7)
    mixing = rng.standard_normal((8, 3))
    out = []
    for _ in range(count):
        sources = rng.standard_normal((2, 3, 7, 7))
        img = np.einsum("cs,nshw->nchw", mixing, sources) + 0.1 * rng.standard_normal((2, 8, 7, 7))
        out.append({"img": img.astype(np.float32)})
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_collected_conv_gram_and_reconstruction(groups: int) -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((6, 8 // groups, 3, 2)).astype(np.float32)
    stats = collect_activation_stats(conv_program(weight, groups), feeds(), progress=False, gram=True)
    entry = stats.get("conv_w")
    assert entry is not None and entry.gram is not None and entry.channels == 8
    pads = [(1, 0), (2, 1)]
    want = sum(brute_force_gram(f["img"], (3, 2), [2, 1], [1, 2], pads, groups) for f in feeds())
    np.testing.assert_allclose(entry.gram, want, rtol=1e-5, atol=1e-3)

    prog = conv_program(weight, groups)
    report = run(prog, ms.MagnitudeConfig(0.5, weight_threshold=0, method="sparsegpt"), stats)
    pruned = pruned_weights(prog)["conv_w"]
    assert np.count_nonzero(pruned == 0) == weight.size // 2
    rows, per = weight.reshape(6, -1), 6 // groups
    counts = [weight.size // 2 * k // groups for k in range(groups + 1)]
    for k in range(groups):
        share = (counts[k + 1] - counts[k]) / (per * rows.shape[1])
        expected = sparsegpt(np.ascontiguousarray(rows[k * per:(k + 1) * per]), entry.gram[k], target_sparsity=share).values
        assert pruned.reshape(6, -1)[k * per:(k + 1) * per].tobytes() == expected.tobytes()
    assert report.packed[0].method == "sparsegpt"
    # closer to the dense outputs than magnitude pruning
    magnitude = conv_program(weight, groups)
    run(magnitude, ms.MagnitudeConfig(0.5, weight_threshold=0), stats)

    def output_error(pruned_weight: np.ndarray) -> float:
        total = 0.0
        for feed in feeds():
            dense = ReferenceEvaluator(conv_program(weight, groups)).run(feed)
            sparse = ReferenceEvaluator(conv_program(pruned_weight, groups)).run(feed)
            total += sum(float(np.sum((dense[k] - sparse[k]) ** 2)) for k in dense)
        return total

    assert output_error(pruned) < 0.8 * output_error(pruned_weights(magnitude)["conv_w"])


@pytest.mark.parametrize("method", ["sparsegpt", "admm"])
def test_conv_n_m_runs_along_the_input_channels(method: str) -> None:
    """As for method="prune": n of every m along axis 1 at every (output, kernel tap)."""
    weight = np.random.default_rng(4).standard_normal((6, 8, 3, 2)).astype(np.float32)
    stats = collect_activation_stats(conv_program(weight, 1), feeds(), progress=False, gram=True)
    prog = conv_program(weight, 1)
    run(prog, ms.NMConfig(2, 4, weight_threshold=0, method=method), stats)
    pruned = pruned_weights(prog)["conv_w"]
    along_channels = np.moveaxis(pruned, 1, -1).reshape(6, 3, 2, 2, 4)
    assert np.all(np.count_nonzero(along_channels == 0, axis=-1) == 2)
    magnitude = conv_program(weight, 1)
    run(magnitude, ms.NMConfig(2, 4, weight_threshold=0), stats)
    entry = stats.get("conv_w")
    assert entry is not None and entry.gram is not None

    def error(value: np.ndarray) -> float:  # trace(D H D^T): the output error on the calibration data
        d = (value - weight).reshape(6, -1).astype(np.float64)
        return float(np.trace(d @ entry.gram[0] @ d.T))  # type: ignore[index]

    assert error(pruned) < 0.8 * error(pruned_weights(magnitude)["conv_w"])
    odd = conv_program(weight, 1)
    before = snapshot(odd)
    with pytest.raises(ValueError, match="along its 8 input channels per kernel tap, which must be a multiple of m"):
        run(odd, ms.NMConfig(2, 3, weight_threshold=0, method=method), stats)
    assert snapshot(odd) == before


def test_conv_transpose_with_a_reconstruction_method_raises() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 5, 5))], opset_version=ct.target.iOS18)
    def prog(img: Any) -> Any:
        w = mb.const(val=np.random.default_rng(0).standard_normal((4, 6, 3, 3)).astype(np.float32), name="convt_w")
        return mb.conv_transpose(x=img, weight=w, name="convt")

    stats = collect_activation_stats(prog, [{"img": np.ones((1, 4, 5, 5), np.float32)}], progress=False, gram=True)
    before = snapshot(prog)
    with pytest.raises(ValueError, match="'convt_w'.* conv_transpose weight; method='admm' reconstructs linear, conv"):
        run(prog, ms.MagnitudeConfig(0.5, weight_threshold=0, method="admm"), stats)
    assert snapshot(prog) == before


def test_conv_gram_saves_and_loads_and_malformed_shapes_are_rejected(tmp_path: Any) -> None:
    weight = np.random.default_rng(3).standard_normal((6, 4, 3, 2)).astype(np.float32)
    stats = collect_activation_stats(conv_program(weight, 2), feeds(1), progress=False, gram=True)
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = ms.ActivationStats.load(path)
    entry = loaded.get("conv_w")
    assert entry is not None and entry.gram is not None and entry.gram.shape == (2, 24, 24)
    assert entry.gram.tobytes() == stats.get("conv_w").gram.tobytes()  # type: ignore[union-attr]
    arrays = dict(np.load(path))
    key = next(k for k in arrays if k.endswith("gram"))
    arrays[key] = arrays[key][:, :, :23]
    with pytest.raises(ValueError, match="malformed gram"):
        ms.ActivationStats.from_arrays(arrays, where="x")


@pytest.mark.parametrize("config", [
    ms.MagnitudeConfig(0.5, weight_threshold=0, method="sparsegpt"),
    ms.NMConfig(2, 4, weight_threshold=0, method="admm"),
], ids=["sparsegpt-50", "admm-2:4"])
def test_conv_package_streaming_equals_pymil(config: Any, tmp_path: Any) -> None:
    from mil_sparsity.posthoc import load_model, load_program
    from _mil_helpers import one_pass

    weight = np.random.default_rng(5).standard_normal((6, 4, 3, 2)).astype(np.float32)
    package = tmp_path / "conv.mlpackage"
    ct.convert(conv_program(weight, 2), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18).save(str(package))
    stats = collect_activation_stats(package, feeds(), progress=False, gram=True)
    pipeline = one_pass(ms.PRUNE_BY_MAGNITUDE, config=config, calibration=stats)
    streamed, pymil = tmp_path / "streamed.mlpackage", tmp_path / "pymil.mlpackage"
    stream_report, pymil_report = ms.SparsityReport(), ms.SparsityReport()
    ms.apply_pipeline(package, pipeline, streaming=True, report=stream_report).save(str(streamed))
    ms.apply_pipeline(package, pipeline, streaming=False, report=pymil_report).save(str(pymil))
    assert [r.to_dict() for r in stream_report] == [r.to_dict() for r in pymil_report]
    assert [r.method for r in stream_report.packed] == [config.method]
    a, b = pruned_weights(load_program(load_model(streamed))), pruned_weights(load_program(load_model(pymil)))
    assert len(a) == 1 and a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == np.float16 and a[name].tobytes() == b[name].tobytes(), name
