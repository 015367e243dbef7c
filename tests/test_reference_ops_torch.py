"""Ops coremltools cannot fold (no ``value_inference``, a stub, or one that ignores an option):
the evaluator against torch's functional ops on random inputs, parameters drawn with
hypothesis; where torch has no equivalent, against numpy or the MIL documentation's examples.

Tolerance: float32 throughout, rtol 1e-4 / atol 1e-5 (different summation orders in the
convolution and matmul kernels), exact for index ops.
"""

from __future__ import annotations

from typing import Any, Callable

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mil_sparsity import reference

torch = pytest.importorskip("torch")
F = torch.nn.functional

OPS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IOS17 = ct.target.iOS17
TOL = dict(rtol=1e-4, atol=1e-5)
seeds = st.integers(0, 2**31 - 1)


def evaluate(build: Callable[[Any], Any], x: np.ndarray, target: Any = IOS17) -> list[np.ndarray]:
    dtype = types.int32 if x.dtype.kind in "iu" else types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape, dtype=dtype)], opset_version=target)
    def prog(v: Any) -> Any:
        return build(v)

    return list(reference.run(prog, {"v": x}).values())


def rand(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def t(a: np.ndarray) -> Any:
    return torch.from_numpy(np.ascontiguousarray(a))


@st.composite
def conv_case(draw: Any, transpose: bool = False) -> dict[str, Any]:
    spatial = draw(st.integers(1, 3 if not transpose else 2))
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
    strides = [draw(st.integers(1, 3)) for _ in range(spatial)]
    dilations = [draw(st.integers(1, 2)) for _ in range(spatial)]
    pads = [draw(st.integers(0, 2)) for _ in range(spatial)]
    size = [draw(st.integers((k - 1) * d + 1, (k - 1) * d + 6)) for k, d in zip(kernel, dilations)]
    return dict(spatial=spatial, groups=groups, cin=cin, cout=cout, kernel=kernel, strides=strides,
                dilations=dilations, pads=pads, size=size, batch=draw(st.integers(1, 2)), bias=draw(st.booleans()))


@OPS
@given(case=conv_case(), seed=seeds)
def test_conv_custom_padding(case: dict[str, Any], seed: int) -> None:
    x = rand(seed, case["batch"], case["cin"], *case["size"])
    weight = rand(seed + 1, case["cout"], case["cin"] // case["groups"], *case["kernel"])
    bias = rand(seed + 2, case["cout"]) if case["bias"] else None
    pad = [p for p in case["pads"] for _ in range(2)]
    (got,) = evaluate(lambda v: mb.conv(x=v, weight=weight, bias=bias, strides=case["strides"], pad_type="custom",
                                        pad=pad, dilations=case["dilations"], groups=case["groups"]), x)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[case["spatial"]]
    want = conv(t(x), t(weight), None if bias is None else t(bias), stride=case["strides"], padding=case["pads"],
                dilation=case["dilations"], groups=case["groups"]).numpy()
    np.testing.assert_allclose(got, want, **TOL)


@OPS
@given(size=st.integers(3, 9), kernel=st.integers(1, 4), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       lower=st.booleans(), seed=seeds)
def test_conv_same_padding(size: int, kernel: int, stride: int, dilation: int, lower: bool, seed: int) -> None:
    """same: output ceil(size / stride), total padding split evenly, the odd element after
    (same_lower: before)."""
    x, weight = rand(seed, 1, 2, size, size), rand(seed + 1, 3, 2, kernel, kernel)
    (got,) = evaluate(lambda v: mb.conv(x=v, weight=weight, strides=[stride] * 2, dilations=[dilation] * 2,
                                        pad_type="same_lower" if lower else "same"), x)
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    before = total - total // 2 if lower else total // 2
    padded = F.pad(t(x), [before, total - before] * 2)
    want = F.conv2d(padded, t(weight), stride=stride, dilation=dilation).numpy()
    assert got.shape == (1, 3, out, out)
    np.testing.assert_allclose(got, want, **TOL)


@OPS
@given(case=conv_case(transpose=True), seed=seeds, extra=st.integers(0, 1))
def test_conv_transpose(case: dict[str, Any], seed: int, extra: int) -> None:
    x = rand(seed, case["batch"], case["cin"], *case["size"])
    weight = rand(seed + 1, case["cin"], case["cout"] // case["groups"], *case["kernel"])
    bias = rand(seed + 2, case["cout"]) if case["bias"] else None
    output_padding = [min(extra, max(s, d) - 1) for s, d in zip(case["strides"], case["dilations"])]
    sizes = [(i - 1) * s - 2 * p + d * (k - 1) + 1 + o for i, s, p, d, k, o in zip(
        case["size"], case["strides"], case["pads"], case["dilations"], case["kernel"], output_padding)]
    assume(min(sizes) >= 1)
    convt = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[case["spatial"]]
    want = convt(t(x), t(weight), None if bias is None else t(bias), stride=case["strides"], padding=case["pads"],
                 output_padding=output_padding, groups=case["groups"], dilation=case["dilations"]).numpy()
    pad = [p for p in case["pads"] for _ in range(2)]
    (got,) = evaluate(lambda v: mb.conv_transpose(
        x=v, weight=weight, bias=bias, strides=case["strides"], pad_type="custom", pad=pad,
        dilations=case["dilations"], groups=case["groups"], output_shape=list(want.shape)), x)
    np.testing.assert_allclose(got, want, **TOL)
    if not any(output_padding):  # without output_shape the size follows from the padding
        (got,) = evaluate(lambda v: mb.conv_transpose(
            x=v, weight=weight, bias=bias, strides=case["strides"], pad_type="custom", pad=pad,
            dilations=case["dilations"], groups=case["groups"]), x)
        np.testing.assert_allclose(got, want, **TOL)


@OPS
@given(size=st.integers(4, 9), kernel=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 1),
       ceil_mode=st.booleans(), exclude=st.booleans(), seed=seeds)
def test_pools(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool, exclude: bool, seed: int) -> None:
    if pad * 2 > kernel:
        pad = kernel // 2
    x = rand(seed, 2, 3, size, size + 1)
    common = dict(kernel_sizes=[kernel, kernel], strides=[stride, stride], pad_type="custom", pad=[pad] * 4, ceil_mode=ceil_mode)
    (got_max,) = evaluate(lambda v: mb.max_pool(x=v, **common), x)
    (got_avg,) = evaluate(lambda v: mb.avg_pool(x=v, exclude_padding_from_average=exclude, **common), x)
    want_max = F.max_pool2d(t(x), kernel, stride, pad, ceil_mode=ceil_mode).numpy()
    # without padding, coremltools keeps a last ceil_mode window that starts past the input
    # (its documented shape rule) where torch drops it: compare where the shapes agree
    assume(got_max.shape == want_max.shape)
    want_avg = F.avg_pool2d(t(x), kernel, stride, pad, ceil_mode=ceil_mode, count_include_pad=not exclude).numpy()
    np.testing.assert_allclose(got_max, want_max, **TOL)
    np.testing.assert_allclose(got_avg, want_avg, **TOL)
    (got_l2,) = evaluate(lambda v: mb.l2_pool(x=v, kernel_sizes=[kernel, kernel], strides=[stride, stride], pad_type="valid"), x)
    np.testing.assert_allclose(got_l2, F.lp_pool2d(t(x), 2, kernel, stride).numpy(), **TOL)


@OPS
@given(height=st.integers(1, 6), width=st.integers(1, 6), scale_h=st.integers(1, 3), scale_w=st.integers(1, 3),
       align=st.booleans(), seed=seeds)
def test_upsampling(height: int, width: int, scale_h: int, scale_w: int, align: bool, seed: int) -> None:
    x = rand(seed, 1, 2, height, width)
    (nearest,) = evaluate(lambda v: mb.upsample_nearest_neighbor(x=v, scale_factor_height=scale_h, scale_factor_width=scale_w), x)
    np.testing.assert_array_equal(nearest, F.interpolate(t(x), scale_factor=(scale_h, scale_w), mode="nearest").numpy())
    (bilinear,) = evaluate(lambda v: mb.upsample_bilinear(
        x=v, scale_factor_height=float(scale_h), scale_factor_width=float(scale_w), align_corners=align), x)
    want = F.interpolate(t(x), scale_factor=(scale_h, scale_w), mode="bilinear", align_corners=align).numpy()
    np.testing.assert_allclose(bilinear, want, **TOL)
    out_h, out_w = height * scale_h + 1, width * scale_w
    mode = "STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS"
    (resized,) = evaluate(lambda v: mb.resize_bilinear(x=v, target_size_height=out_h, target_size_width=out_w, sampling_mode=mode), x)
    want = F.interpolate(t(x), size=(out_h, out_w), mode="bilinear", align_corners=align).numpy()
    np.testing.assert_allclose(resized, want, **TOL)


@OPS
@given(channels=st.integers(1, 4), spatial=st.integers(1, 3), seed=seeds)
def test_batch_and_instance_norm(channels: int, spatial: int, seed: int) -> None:
    x = rand(seed, 2, channels, *([3] * spatial))
    mean, gamma, beta = rand(seed + 1, channels), rand(seed + 2, channels), rand(seed + 3, channels)
    variance = np.abs(rand(seed + 4, channels)) + 0.1
    (got,) = evaluate(lambda v: mb.batch_norm(x=v, mean=mean, variance=variance, gamma=gamma, beta=beta, epsilon=1e-5), x)
    want = F.batch_norm(t(x), t(mean), t(variance), t(gamma), t(beta), training=False, eps=1e-5).numpy()
    np.testing.assert_allclose(got, want, **TOL)
    if spatial >= 1 and x.ndim in (3, 4):
        (got,) = evaluate(lambda v: mb.instance_norm(x=v, gamma=gamma, beta=beta, epsilon=1e-5), x)
        want = F.instance_norm(t(x), weight=t(gamma), bias=t(beta), eps=1e-5).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@OPS
@given(steps=st.integers(1, 5), batch=st.integers(1, 3), hidden=st.integers(1, 5), direction=st.sampled_from(["forward", "bidirectional"]),
       output_sequence=st.booleans(), seed=seeds)
def test_lstm(steps: int, batch: int, hidden: int, direction: str, output_sequence: bool, seed: int) -> None:
    """torch's LSTM with its [i, f, g, o] gate blocks reordered into MIL's [i, f, o, g]."""
    torch.manual_seed(seed)
    bidirectional = direction == "bidirectional"
    lstm = torch.nn.LSTM(3, hidden, bidirectional=bidirectional)
    x = rand(seed, steps, batch, 3)
    h0, c0 = rand(seed + 1, batch, 2 * hidden if bidirectional else hidden), rand(seed + 2, batch, 2 * hidden if bidirectional else hidden)

    def ifog(w: Any) -> np.ndarray:
        i, f, g, o = np.split(w.detach().numpy(), 4)
        return np.concatenate([i, f, o, g])

    def params(suffix: str) -> dict[str, np.ndarray]:
        return dict(
            weight_ih=ifog(getattr(lstm, f"weight_ih_l0{suffix}")), weight_hh=ifog(getattr(lstm, f"weight_hh_l0{suffix}")),
            bias=ifog(getattr(lstm, f"bias_ih_l0{suffix}") + getattr(lstm, f"bias_hh_l0{suffix}")),
        )

    kwargs: dict[str, Any] = params("")
    if bidirectional:
        kwargs.update({f"{k}_back": v for k, v in params("_reverse").items()})
    outputs, h, c = evaluate(lambda v: mb.lstm(x=v, initial_h=h0, initial_c=c0, direction=direction, output_sequence=output_sequence, **kwargs), x)
    split = lambda a: t(a).reshape(batch, 2, hidden).transpose(0, 1).contiguous() if bidirectional else t(a)[None]  # noqa: E731
    with torch.no_grad():
        want, (want_h, want_c) = lstm(t(x), (split(h0), split(c0)))
    joined = lambda s: s.transpose(0, 1).reshape(batch, -1).numpy()  # noqa: E731
    np.testing.assert_allclose(h, joined(want_h), **TOL)
    np.testing.assert_allclose(c, joined(want_c), **TOL)
    if output_sequence:
        np.testing.assert_allclose(outputs, want.numpy(), **TOL)
    elif not bidirectional:
        np.testing.assert_allclose(outputs, want.numpy()[-1:], **TOL)


@OPS
@given(seed=seeds, depth=st.integers(1, 5), axis=st.integers(-1, 1))
def test_one_hot_silu_gather_nd(seed: int, depth: int, axis: int) -> None:
    indices = np.random.default_rng(seed).integers(0, depth, (3, 2)).astype(np.int32)
    (got,) = evaluate(lambda v: mb.one_hot(indices=v, one_hot_vector_size=depth, axis=axis, on_value=2.0, off_value=-1.0), indices)
    want = np.where(F.one_hot(t(indices).long(), depth).numpy() > 0, 2.0, -1.0)
    np.testing.assert_array_equal(got, np.moveaxis(want, -1, axis % 3))
    x = rand(seed, 4, 5)
    (got,) = evaluate(lambda v: mb.silu(x=v), x)
    np.testing.assert_allclose(got, F.silu(t(x)).numpy(), **TOL)
    nd = np.stack([np.random.default_rng(seed).integers(0, 4, 6), np.random.default_rng(seed + 1).integers(0, 5, 6)], -1).astype(np.int32)
    (got,) = evaluate(lambda v: mb.gather_nd(x=x, indices=v), nd)
    np.testing.assert_array_equal(got, x[nd[:, 0], nd[:, 1]])
    updates = rand(seed + 2, 6)
    (got,) = evaluate(lambda v: mb.scatter_nd(data=v, indices=nd, updates=updates, mode="add"), x)
    want = x.copy()
    np.add.at(want, (nd[:, 0], nd[:, 1]), updates)
    np.testing.assert_allclose(got, want, **TOL)


@OPS
@given(seed=seeds, block=st.integers(1, 3))
def test_space_and_depth(seed: int, block: int) -> None:
    x = rand(seed, 2, 2 * block * block, 2 * block, 3 * block)
    (got,) = evaluate(lambda v: mb.pixel_shuffle(x=v, upscale_factor=block), x)
    np.testing.assert_array_equal(got, F.pixel_shuffle(t(x), block).numpy())
    (got,) = evaluate(lambda v: mb.pixel_unshuffle(x=v, downscale_factor=np.uint32(block)), x)
    np.testing.assert_array_equal(got, F.pixel_unshuffle(t(x), block).numpy())
    (back,) = evaluate(lambda v: mb.depth_to_space(x=mb.space_to_depth(x=v, block_size=block), block_size=block), x)
    np.testing.assert_array_equal(back, x)
    # depth_to_space is TF's DCR order: channel (i * block + j) * C_out + c
    (got,) = evaluate(lambda v: mb.depth_to_space(x=v, block_size=block), x)
    n, c, h, w = x.shape
    c_out = c // (block * block)
    want = x.reshape(n, block, block, c_out, h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, c_out, h * block, w * block)
    np.testing.assert_array_equal(got, want)


@OPS
@given(steps=st.integers(1, 5), batch=st.integers(1, 3), hidden=st.integers(1, 5), output_sequence=st.booleans(), seed=seeds)
def test_gru(steps: int, batch: int, hidden: int, output_sequence: bool, seed: int) -> None:
    """torch's GRU ([r, z, n] blocks, reordered to MIL's [r, o, z]) with a zero hidden-side
    bias, where MIL's single bias and torch's two biases mean the same thing."""
    torch.manual_seed(seed)
    gru = torch.nn.GRU(3, hidden)
    with torch.no_grad():
        gru.bias_hh_l0.zero_()
    x, h0 = rand(seed, steps, batch, 3), rand(seed + 1, batch, hidden)

    def roz(w: Any) -> np.ndarray:
        r, z, n = np.split(w.detach().numpy(), 3)
        return np.concatenate([r, n, z])

    outputs, h = evaluate(lambda v: mb.gru(
        x=v, initial_h=h0, weight_ih=roz(gru.weight_ih_l0), weight_hh=roz(gru.weight_hh_l0),
        bias=roz(gru.bias_ih_l0), output_sequence=output_sequence), x)
    with torch.no_grad():
        want, want_h = gru(t(x), t(h0)[None])
    np.testing.assert_allclose(h, want_h[0].numpy(), **TOL)
    np.testing.assert_allclose(outputs, want.numpy() if output_sequence else want.numpy()[-1:], **TOL)


@OPS
@given(seed=seeds, block=st.tuples(st.integers(1, 3), st.integers(1, 3)), pad=st.integers(0, 1))
def test_space_to_batch_and_back(seed: int, block: tuple[int, int], pad: int) -> None:
    """space_to_batch then batch_to_space with the same padding as crops is the identity;
    batch entry (i * block_w + j) * n + b holds pixels (i::block_h, j::block_w) of entry b."""
    bh, bw = block
    x = rand(seed, 2, 3, 2 * bh, 3 * bw)
    paddings = np.array([[0, 0], [pad * bw, pad * bw]], np.int32)
    (moved,) = evaluate(lambda v: mb.space_to_batch(x=v, block_shape=np.array(block, np.int32), paddings=paddings), x)
    padded = np.pad(x, [(0, 0), (0, 0), (0, 0), (pad * bw, pad * bw)])
    for i in range(bh):
        for j in range(bw):
            np.testing.assert_array_equal(moved[(i * bw + j) * 2 : (i * bw + j) * 2 + 2], padded[:, :, i::bh, j::bw])
    (back,) = evaluate(lambda v: mb.batch_to_space(
        x=mb.space_to_batch(x=v, block_shape=np.array(block, np.int32), paddings=paddings),
        block_shape=np.array(block, np.int32), crops=paddings), x)
    np.testing.assert_array_equal(back, x)


@OPS
@given(seed=seeds, length=st.integers(1, 8), size=st.integers(1, 4), stride=st.integers(1, 3), axis=st.integers(0, 2))
def test_sliding_windows(seed: int, length: int, size: int, stride: int, axis: int) -> None:
    assume(size <= length)
    shape = [2, 3, 2]
    shape[axis] = length
    x = rand(seed, *shape)
    (got,) = evaluate(lambda v: mb.sliding_windows(x=v, axis=axis, size=size, stride=stride), x)
    starts = range(0, length - size + 1, stride)
    want = np.stack([np.take(x, np.arange(s, s + size), axis=axis) for s in starts], axis=axis)
    np.testing.assert_array_equal(got, want)


@OPS
@given(seed=seeds, size=st.sampled_from([1, 3, 5]), channels=st.integers(1, 6))
def test_local_response_norm(seed: int, size: int, channels: int) -> None:
    """Odd window sizes (centred windows, where torch's and MIL's conventions agree)."""
    x = rand(seed, 2, channels, 3, 2)
    (got,) = evaluate(lambda v: mb.local_response_norm(x=v, size=size, alpha=1e-2, beta=0.75, k=1.5), x)
    np.testing.assert_allclose(got, F.local_response_norm(t(x), size, alpha=1e-2, beta=0.75, k=1.5).numpy(), **TOL)


@OPS
@given(steps=st.integers(1, 5), batch=st.integers(1, 3), hidden=st.integers(1, 5), output_sequence=st.booleans(), seed=seeds)
def test_rnn(steps: int, batch: int, hidden: int, output_sequence: bool, seed: int) -> None:
    torch.manual_seed(seed)
    rnn = torch.nn.RNN(3, hidden)
    x, h0 = rand(seed, steps, batch, 3), rand(seed + 1, batch, hidden)
    outputs, h = evaluate(lambda v: mb.rnn(
        x=v, initial_h=h0, weight_ih=rnn.weight_ih_l0.detach().numpy(), weight_hh=rnn.weight_hh_l0.detach().numpy(),
        bias=(rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy(), output_sequence=output_sequence), x)
    with torch.no_grad():
        want, want_h = rnn(t(x), t(h0)[None])
    np.testing.assert_allclose(h, want_h[0].numpy(), **TOL)
    np.testing.assert_allclose(outputs, want.numpy() if output_sequence else want.numpy()[-1:], **TOL)


@OPS
@given(seed=seeds, height=st.integers(1, 6), width=st.integers(1, 6), out_h=st.integers(1, 9), out_w=st.integers(1, 9))
def test_resize_nearest_neighbor_and_crop(seed: int, height: int, width: int, out_h: int, out_w: int) -> None:
    x = rand(seed, 1, 2, height, width)
    (got,) = evaluate(lambda v: mb.resize_nearest_neighbor(x=v, target_size_height=out_h, target_size_width=out_w), x)
    np.testing.assert_array_equal(got, F.interpolate(t(x), size=(out_h, out_w), mode="nearest").numpy())
    top, left = height // 3, width // 3
    (got,) = evaluate(lambda v: mb.crop(x=v, crop_height=[top, height // 4], crop_width=[left, 0]), x)
    np.testing.assert_array_equal(got, x[..., top : height - height // 4, left:])


@OPS
@given(seed=seeds, axis=st.integers(0, 2), mode=st.sampled_from(["update", "add", "mul", "max", "min"]))
def test_scatter_and_reshape_like(seed: int, axis: int, mode: str) -> None:
    data = rand(seed, 4, 5, 3)
    count = 2
    indices = np.random.default_rng(seed).permutation(data.shape[axis])[:count].astype(np.int32)
    update_shape = list(data.shape)
    update_shape[axis] = count
    updates = rand(seed + 1, *update_shape)
    (got,) = evaluate(lambda v: mb.scatter(data=v, indices=indices, updates=updates, axis=axis, mode=mode), data)
    want = data.copy()
    combine = {"update": lambda a, b: b, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[mode]
    for i, index in enumerate(indices):  # distinct indices: one update per slice
        target = [slice(None)] * 3
        target[axis] = index
        source = [slice(None)] * 3
        source[axis] = i
        want[tuple(target)] = combine(data[tuple(target)], updates[tuple(source)])
    np.testing.assert_allclose(got, want, **TOL)
    ref = np.zeros((2, 6, 5), np.float32)
    (got,) = evaluate(lambda v: mb.reshape_like(x=v, ref_tensors=(ref, ref), begins=[0, 2], ends=[2, 3], end_masks=[False, True]), data.reshape(-1)[:60].copy())
    np.testing.assert_array_equal(got, data.reshape(2, 6, 5))


@pytest.mark.parametrize(
    "mode, size, grid",
    [
        ("UNALIGN_CORNERS", 5, [0.0, 0.1, 0.5, 0.9, 1.0]),
        ("STRICT_ALIGN_CORNERS", 5, [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("ALIGN_CORNERS", 5, [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("DEFAULT", 5, [0.0, 0.4, 0.8, 1.0, 1.0]),
        ("OFFSET_CORNERS", 5, [0.1, 0.3, 0.5, 0.7, 0.9]),
        ("UNALIGN_CORNERS", 6, [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]),
        ("ALIGN_CORNERS", 6, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        ("DEFAULT", 6, [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]),
        ("OFFSET_CORNERS", 6, [1 / 12, 0.25, 5 / 12, 7 / 12, 0.75, 11 / 12]),
    ],
)
def test_resize_bilinear_sampling_modes(mode: str, size: int, grid: list[float]) -> None:
    """The grid points the MIL documentation lists for an input interval [0, 1] (Xin = 2):
    resizing the ramp [0, 1] returns them."""
    ramp = np.array([0.0, 1.0], np.float32).reshape(1, 1, 1, 2)
    (got,) = evaluate(lambda v: mb.resize_bilinear(x=v, target_size_height=1, target_size_width=size, sampling_mode=mode), ramp)
    np.testing.assert_allclose(got.reshape(-1), grid, atol=1e-6)


@OPS
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=3).map(tuple), seed=seeds, data=st.data())
def test_reverse_sequence(shape: tuple[int, ...], seed: int, data: Any) -> None:
    """coremltools' reverse_sequence.value_inference is a stub: each batch entry against a
    flip of its first ``length`` steps."""
    x = rand(seed, *shape)
    seq_axis, batch_axis = data.draw(st.permutations(range(len(shape))))[:2]
    lengths = np.random.default_rng(seed).integers(0, shape[seq_axis] + 1, shape[batch_axis]).astype(np.int32)
    (got,) = evaluate(lambda v: mb.reverse_sequence(x=v, lengths=lengths, seq_axis=seq_axis, batch_axis=batch_axis), x)
    for b, length in enumerate(lengths):
        entry = np.take(x, b, axis=batch_axis)
        axis = seq_axis - (seq_axis > batch_axis)
        head = np.flip(np.take(entry, np.arange(length), axis=axis), axis=axis)
        tail = np.take(entry, np.arange(length, entry.shape[axis]), axis=axis)
        np.testing.assert_array_equal(np.take(got, b, axis=batch_axis), np.concatenate([head, tail], axis=axis))


def test_concat_interleave_as_documented() -> None:
    """coremltools' concat.value_inference ignores interleave: the MIL docs' example instead."""
    a, b = np.array([[1, 2], [3, 4]], np.float32), np.array([[5, 6], [7, 8]], np.float32)
    (got,) = evaluate(lambda v: mb.concat(values=(v, b), axis=0, interleave=True), a)
    np.testing.assert_array_equal(got, [[1, 2], [5, 6], [3, 4], [7, 8]])
    (got,) = evaluate(lambda v: mb.concat(values=(v, b), axis=1, interleave=True), a)
    np.testing.assert_array_equal(got, [[1, 5, 2, 6], [3, 7, 4, 8]])
