"""Convolution and pooling kernels on stride-trick windows.

Spatial layout is [N, C, *D] (1, 2 or 3 spatial axes). A window view of the padded input
(``sliding_window_view``, no copy) is sliced by stride (output positions) and dilation (kernel
taps); convolution gathers it once into columns [groups, N * positions, C/groups * taps]
(im2col) and runs one batched BLAS matmul with the weight; pooling reduces over the taps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mil_sparsity.reference.ops_nn import matmul
from mil_sparsity.reference._registry import (
    Args,
    array,
    flag,
    integer,
    integers,
    kernel,
    optional_array,
    text,
)

Pads = list[tuple[int, int]]


def padding(
    pad_type: str,
    spatial: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    custom: Sequence[int],
) -> Pads:
    """(before, after) per spatial axis. ``same`` centres the total padding TF-style (the extra
    element after), ``same_lower`` before, ``custom`` reads ``pad`` as [b0, a0, b1, a1, ...]."""
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        return [(custom[2 * i], custom[2 * i + 1]) for i in range(len(spatial))]
    pads = []
    for size, k, s, d in zip(spatial, kernel_shape, strides, dilations):
        effective = (k - 1) * d + 1
        total = max(0, s * (-(-size // s)) - size + effective - s)
        small, large = total // 2, total - total // 2
        pads.append((large, small) if pad_type == "same_lower" else (small, large))
    return pads


def windows(
    x: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Pads,
    fill: float = 0.0,
) -> np.ndarray:
    """View [N, C, *out, *kernel]: the (dilated) input window of every output position."""
    spatial = len(kernel_shape)
    if any(p != (0, 0) for p in pads):
        x = np.pad(x, [(0, 0), (0, 0)] + list(pads), constant_values=np.asarray(fill, x.dtype))
    effective = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]
    view = sliding_window_view(x, effective, axis=tuple(range(2, 2 + spatial)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, None, d) for d in dilations
    )
    return view[index]


def convolve(
    x: np.ndarray,
    weight: np.ndarray,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Pads,
    groups: int,
) -> np.ndarray:
    """Grouped N-d convolution (cross-correlation) as im2col + one batched matmul."""
    n, channels = x.shape[:2]
    out_channels = weight.shape[0]
    kernel_shape = weight.shape[2:]
    spatial = len(kernel_shape)
    if all(k == 1 for k in kernel_shape) and all(s == 1 for s in strides) and groups == 1 and not any(
        a or b for a, b in pads
    ):
        flat = x.reshape(n, channels, -1)  # 1x1 conv: a plain matmul over positions
        out = matmul(weight.reshape(out_channels, channels), flat)
        return np.asarray(out.reshape((n, out_channels) + x.shape[2:]))
    view = windows(x, kernel_shape, strides, dilations, pads)
    out_shape = view.shape[2 : 2 + spatial]
    per_group = channels // groups
    # [N, G, C/G, *out, *k] -> [G, N, *out, C/G, *k] -> columns [G, N*P, C/G*K]
    grouped = view.reshape((n, groups, per_group) + view.shape[2:])
    order = (1, 0) + tuple(range(3, 3 + spatial)) + (2,) + tuple(range(3 + spatial, 3 + 2 * spatial))
    columns = np.ascontiguousarray(np.transpose(grouped, order)).reshape(groups, -1, per_group * int(np.prod(kernel_shape)))
    kernels = weight.reshape(groups, out_channels // groups, -1)
    out = matmul(columns, np.swapaxes(kernels, 1, 2))  # [G, N*P, O/G]
    out = out.reshape((groups, n) + tuple(out_shape) + (out_channels // groups,))
    order = (1, 0, 2 + spatial) + tuple(range(2, 2 + spatial))
    return np.transpose(out, order).reshape((n, out_channels) + tuple(out_shape))


def _conv_params(args: Args, spatial: int) -> tuple[list[int], list[int], int]:
    strides = integers(args, "strides", [1] * spatial)
    dilations = integers(args, "dilations", [1] * spatial)
    return strides, dilations, integer(args, "groups", 1)


def conv_geometry(args: Args) -> tuple[list[int], list[int], Pads, int]:
    """(strides, dilations, pads, groups) of a conv op's evaluated arguments: how the conv
    kernel reads them, and the calibration's patch extraction with it."""
    x, weight = array(args, "x"), array(args, "weight")
    spatial = x.ndim - 2
    strides, dilations, groups = _conv_params(args, spatial)
    pads = padding(
        text(args, "pad_type", "valid"), x.shape[2:], weight.shape[2:], strides, dilations,
        integers(args, "pad", [0] * 2 * spatial),
    )
    return strides, dilations, pads, groups


@kernel("conv")
def _conv(args: Args) -> np.ndarray:
    x, weight = array(args, "x"), array(args, "weight")
    strides, dilations, pads, groups = conv_geometry(args)
    out = convolve(x, weight, strides, dilations, pads, groups)
    bias = optional_array(args, "bias")
    if bias is not None:
        out += bias.reshape((1, -1) + (1,) * (x.ndim - 2))
    return out


def _dilate_with_zeros(x: np.ndarray, strides: Sequence[int]) -> np.ndarray:
    if all(s == 1 for s in strides):
        return x
    shape = x.shape[:2] + tuple((size - 1) * s + 1 for size, s in zip(x.shape[2:], strides))
    result = np.zeros(shape, x.dtype)
    result[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)] = x
    return result


@kernel("conv_transpose")
def _conv_transpose(args: Args) -> np.ndarray:
    """Transposed convolution as a convolution: zeros between input elements (stride), the
    kernel flipped and its in/out channels swapped per group, full padding d*(k-1); the op's
    padding then crops each side (``output_shape``, when given, fixes the size after the
    leading crop; positions past the last contribution are zero)."""
    x, weight = array(args, "x"), array(args, "weight")
    spatial = x.ndim - 2
    strides, dilations, groups = _conv_params(args, spatial)
    kernel_shape = weight.shape[2:]
    effective = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]
    pad_type = text(args, "pad_type", "valid")
    if pad_type == "custom":
        custom = integers(args, "pad", [0] * 2 * spatial)
        pads = [(custom[2 * i], custom[2 * i + 1]) for i in range(spatial)]
    elif pad_type == "valid":
        pads = [(0, 0)] * spatial
    else:  # same: output = stride * input
        totals = [max(e - s, 0) for e, s in zip(effective, strides)]
        pads = [(t // 2, t - t // 2) if pad_type == "same" else (t - t // 2, t // 2) for t in totals]
    in_channels = weight.shape[0]
    out_per_group = weight.shape[1]
    # [C_in, C_out/G, *k] -> [G, C_out/G, C_in/G, *k] flipped -> [C_out, C_in/G, *k]
    swapped = weight.reshape((groups, in_channels // groups, out_per_group) + kernel_shape)
    swapped = np.swapaxes(swapped, 1, 2)[(Ellipsis,) + (slice(None, None, -1),) * spatial]
    swapped = np.ascontiguousarray(swapped).reshape((groups * out_per_group, in_channels // groups) + kernel_shape)
    # the full transposed convolution, (I - 1) * s + effective long, then the op's window on it
    full_pads = [(e - 1, e - 1) for e in effective]
    full = convolve(_dilate_with_zeros(x, strides), swapped, [1] * spatial, dilations, full_pads, groups)
    target = optional_array(args, "output_shape")
    if target is not None:
        sizes = [int(v) for v in target.reshape(-1)[-spatial:]]
    elif pad_type in ("same", "same_lower"):
        sizes = [size * s for size, s in zip(x.shape[2:], strides)]
    else:
        sizes = [length - b - a for length, (b, a) in zip(full.shape[2:], pads)]
    out = full[(slice(None), slice(None)) + tuple(slice(b, b + size) for (b, _), size in zip(pads, sizes))]
    missing = [(0, max(size - have, 0)) for size, have in zip(sizes, out.shape[2:])]
    if any(after for _, after in missing):  # output padding past the last contribution: zeros
        out = np.pad(out, [(0, 0), (0, 0)] + missing)
    bias = optional_array(args, "bias")
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * spatial)
    return out


def _pool_setup(args: Args, fill: float) -> tuple[np.ndarray, np.ndarray, Pads, list[int]]:
    """Window view of x and of a validity mask (1 inside input + declared padding, 0 in the
    extra tail ceil_mode adds), the declared pads, and the kernel size."""
    x = array(args, "x")
    spatial = x.ndim - 2
    kernel_shape = integers(args, "kernel_sizes")
    strides = integers(args, "strides", [1] * spatial)
    pads = padding(
        text(args, "pad_type", "valid"), x.shape[2:], kernel_shape, strides, [1] * spatial,
        integers(args, "pad", [0] * 2 * spatial),
    )
    padded_sizes = [size + b + a for size, (b, a) in zip(x.shape[2:], pads)]
    tails = [0] * spatial
    if flag(args, "ceil_mode"):
        for i, (size, k, s) in enumerate(zip(padded_sizes, kernel_shape, strides)):
            out = (size - k + s - 1) // s + 1
            if (out - 1) * s >= x.shape[2 + i] + pads[i][0] and (pads[i][0] or pads[i][1]):
                out -= 1
            tails[i] = max((out - 1) * s + k - size, 0)
    full = [(b, a + t) for (b, a), t in zip(pads, tails)]
    view = windows(x, kernel_shape, strides, [1] * spatial, full, fill)
    return view, x, pads, tails


def _window_axes(view: np.ndarray) -> tuple[int, ...]:
    spatial = (view.ndim - 2) // 2
    return tuple(range(2 + spatial, view.ndim))


@kernel("max_pool")
def _max_pool(args: Args) -> np.ndarray:
    view, _, _, _ = _pool_setup(args, -np.inf)
    return np.asarray(np.max(view, axis=_window_axes(view)))


def _divisor(args: Args, x: np.ndarray, pads: Pads, tails: list[int], exclude_padding: bool) -> np.ndarray:
    """Number of counted elements in each window: the real input only, or input + padding."""
    spatial = x.ndim - 2
    kernel_shape = integers(args, "kernel_sizes")
    strides = integers(args, "strides", [1] * spatial)
    ones = np.ones((1, 1) + x.shape[2:], np.float32)
    if exclude_padding:
        mask = np.pad(ones, [(0, 0), (0, 0)] + [(b, a + t) for (b, a), t in zip(pads, tails)])
    else:
        mask = np.pad(np.pad(ones, [(0, 0), (0, 0)] + pads, constant_values=1.0),
                      [(0, 0), (0, 0)] + [(0, t) for t in tails])
    view = windows(mask, kernel_shape, strides, [1] * spatial, [(0, 0)] * spatial)
    return np.asarray(np.sum(view, axis=_window_axes(view)))


@kernel("avg_pool")
def _avg_pool(args: Args) -> np.ndarray:
    view, x, pads, tails = _pool_setup(args, 0.0)
    total = np.sum(view, axis=_window_axes(view))
    divisor = _divisor(args, x, pads, tails, flag(args, "exclude_padding_from_average"))
    return np.asarray(total / np.maximum(divisor, 1.0))


@kernel("l2_pool")
def _l2_pool(args: Args) -> np.ndarray:
    view, _, _, _ = _pool_setup(args, 0.0)
    return np.asarray(np.sqrt(np.sum(np.square(view), axis=_window_axes(view))))
