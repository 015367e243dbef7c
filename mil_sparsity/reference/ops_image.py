"""Resampling and space/depth rearrangement kernels on the last two (H, W) axes.

Bilinear resampling is separable: per axis, the source coordinate of every output index
(by the op's grid rule), the two neighbours and their weights, then one gather-and-blend.
"""

from __future__ import annotations

import numpy as np

from mil_sparsity.reference._registry import Args, array, flag, floating, integer, kernel, text


def _grid(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """Source coordinate of each output index (float32), clamped to [0, size_in - 1]."""
    i = np.arange(size_out, dtype=np.float32)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            grid = np.full(1, (size_in - 1) / 2.0 if mode == "ALIGN_CORNERS" else 0.0, np.float32)
        else:
            grid = i * np.float32((size_in - 1) / (size_out - 1))
    elif mode == "DEFAULT":
        spacing = (size_in - size_in / size_out) / (size_out - 1) if size_out > 1 else 0.0
        grid = i * np.float32(spacing)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, size_in - 1) / size_out
        grid = np.float32(0.5 * delta) + i * np.float32(delta)
    elif mode == "UNALIGN_CORNERS":
        spacing = size_in / size_out
        grid = i * np.float32(spacing) + np.float32(0.5 * spacing - 0.5)
    else:  # "LEGACY": i * in / out (align_corners=False, half_pixel_centers=False)
        grid = i * np.float32(size_in / size_out)
    return np.clip(grid, 0.0, size_in - 1).astype(np.float32)


def _interpolate(x: np.ndarray, axis: int, grid: np.ndarray) -> np.ndarray:
    low = np.floor(grid).astype(np.int32)
    high = np.minimum(low + 1, x.shape[axis] - 1)
    weight = (grid - low).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    below, above = np.take(x, low, axis=axis), np.take(x, high, axis=axis)
    return np.asarray(below + (above - below) * weight)


def bilinear(x: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    rows = _interpolate(x, x.ndim - 2, _grid(x.shape[-2], height, mode))
    return _interpolate(rows, x.ndim - 1, _grid(x.shape[-1], width, mode))


def nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Output index i reads floor(i * in / out) on each axis."""
    rows = (np.arange(height, dtype=np.int32) * x.shape[-2]) // height
    cols = (np.arange(width, dtype=np.int32) * x.shape[-1]) // width
    return np.asarray(np.take(np.take(x, rows, axis=-2), cols, axis=-1))


def _scaled(args: Args, x: np.ndarray) -> tuple[int, int]:
    scale_h = floating(args, "scale_factor_height", 1.0)
    scale_w = floating(args, "scale_factor_width", 1.0)
    return int(np.floor(x.shape[-2] * scale_h)), int(np.floor(x.shape[-1] * scale_w))


@kernel("upsample_nearest_neighbor")
def _upsample_nearest_neighbor(args: Args) -> np.ndarray:
    x = array(args, "x")
    return nearest(x, *_scaled(args, x))


@kernel("resize_nearest_neighbor")
def _resize_nearest_neighbor(args: Args) -> np.ndarray:
    x = array(args, "x")
    return nearest(x, integer(args, "target_size_height"), integer(args, "target_size_width"))


@kernel("upsample_bilinear")
def _upsample_bilinear(args: Args) -> np.ndarray:
    """align_corners -> corners aligned; else half_pixel_centers (default: not align_corners)
    -> half-pixel grid, or the legacy i * in / out grid."""
    x = array(args, "x")
    align = flag(args, "align_corners", True)
    half_pixel = flag(args, "half_pixel_centers", not align)
    mode = "STRICT_ALIGN_CORNERS" if align else ("UNALIGN_CORNERS" if half_pixel else "LEGACY")
    return bilinear(x, *_scaled(args, x), mode)


@kernel("resize_bilinear")
def _resize_bilinear(args: Args) -> np.ndarray:
    x = array(args, "x")
    return bilinear(
        x, integer(args, "target_size_height", 1), integer(args, "target_size_width", 1),
        text(args, "sampling_mode", "DEFAULT"),
    )


def _to_depth(x: np.ndarray, block: int, channel_first: bool) -> np.ndarray:
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // block, block, w // block, block)
    order = (0, 3, 5, 1, 2, 4) if not channel_first else (0, 1, 3, 5, 2, 4)
    return blocks.transpose(order).reshape(n, c * block * block, h // block, w // block)


def _from_depth(x: np.ndarray, block: int, channel_first: bool) -> np.ndarray:
    n, c, h, w = x.shape
    out = c // (block * block)
    if channel_first:  # pixel_shuffle: channel index = c_out * b * b + i * b + j
        blocks = x.reshape(n, out, block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:  # depth_to_space (DCR): channel index = (i * b + j) * c_out + c_out_index
        blocks = x.reshape(n, block, block, out, h, w).transpose(0, 3, 4, 1, 5, 2)
    return blocks.reshape(n, out, h * block, w * block)


@kernel("depth_to_space")
def _depth_to_space(args: Args) -> np.ndarray:
    return _from_depth(array(args, "x"), integer(args, "block_size"), channel_first=False)


@kernel("space_to_depth")
def _space_to_depth(args: Args) -> np.ndarray:
    return _to_depth(array(args, "x"), integer(args, "block_size"), channel_first=False)


@kernel("pixel_shuffle")
def _pixel_shuffle(args: Args) -> np.ndarray:
    return _from_depth(array(args, "x"), integer(args, "upscale_factor"), channel_first=True)


@kernel("pixel_unshuffle")
def _pixel_unshuffle(args: Args) -> np.ndarray:
    return _to_depth(array(args, "x"), integer(args, "downscale_factor"), channel_first=True)


@kernel("crop")
def _crop(args: Args) -> np.ndarray:
    x = array(args, "x")
    top, bottom = (int(v) for v in np.asarray(args["crop_height"]).reshape(-1))
    left, right = (int(v) for v in np.asarray(args["crop_width"]).reshape(-1))
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


@kernel("space_to_batch")
def _space_to_batch(args: Args) -> np.ndarray:
    """Pad H, W by ``paddings``, then move each (i, j) offset of a block_shape block into the
    batch axis: new batch index (i * block_w + j) * n + batch (TF order)."""
    x = array(args, "x")
    block_h, block_w = (int(v) for v in np.asarray(args["block_shape"]).reshape(-1))
    pads = np.asarray(args["paddings"]).reshape(2, 2)
    padded = np.pad(x, [(0, 0), (0, 0), (int(pads[0, 0]), int(pads[0, 1])), (int(pads[1, 0]), int(pads[1, 1]))])
    n, c, h, w = padded.shape
    blocks = padded.reshape(n, c, h // block_h, block_h, w // block_w, block_w)
    return blocks.transpose(3, 5, 0, 1, 2, 4).reshape(block_h * block_w * n, c, h // block_h, w // block_w)


@kernel("batch_to_space")
def _batch_to_space(args: Args) -> np.ndarray:
    """The inverse of space_to_batch, then ``crops`` removed from H and W."""
    x = array(args, "x")
    block_h, block_w = (int(v) for v in np.asarray(args["block_shape"]).reshape(-1))
    crops = np.asarray(args["crops"]).reshape(2, 2)
    batch, c, h, w = x.shape
    n = batch // (block_h * block_w)
    blocks = x.reshape(block_h, block_w, n, c, h, w).transpose(2, 3, 4, 0, 5, 1)
    full = blocks.reshape(n, c, h * block_h, w * block_w)
    return full[:, :, int(crops[0, 0]) : h * block_h - int(crops[0, 1]), int(crops[1, 0]) : w * block_w - int(crops[1, 1])]


@kernel("resize")
def _resize(args: Args) -> np.ndarray:
    """iOS17 resize: the last ``resized_dims`` axes of x take their sizes from the last
    ``resized_dims`` entries of ``shape`` (a 0 keeps x's size); each axis is resampled on its own
    on the sampling mode's grid: blended (LINEAR) or the nearest source index, halves rounded
    up (NEAREST_NEIGHBOR; 2 -> 3 reads rows 0, 1, 1 on the DEFAULT grid)."""
    x = array(args, "x")
    count = integer(args, "resized_dims")
    shape = [int(s) for s in np.asarray(args["shape"]).reshape(-1)]
    targets = shape[len(shape) - count :]
    mode = text(args, "sampling_mode", "DEFAULT")
    linear = text(args, "interpolation_mode", "LINEAR") == "LINEAR"
    result = x.astype(np.float32) if linear else x
    for offset, target in enumerate(targets):
        axis = x.ndim - count + offset
        size = target if target > 0 else x.shape[axis]
        if linear:
            result = _interpolate(result, axis, _grid(x.shape[axis], size, mode))
        else:
            nearest_index = np.floor(_grid(x.shape[axis], size, mode) + np.float32(0.5)).astype(np.int64)
            result = np.take(result, np.minimum(nearest_index, x.shape[axis] - 1), axis=axis)
    return np.asarray(result).astype(x.dtype, copy=False)


def _box_grid(start: np.ndarray, end: np.ndarray, count: int, mode: str) -> np.ndarray:
    """(N, count) sample coordinates inside boxes from ``start`` to ``end`` (N each), corners
    aligned (one sample: the box's middle, or its start for STRICT_ALIGN_CORNERS)."""
    i = np.arange(count, dtype=np.float32)
    length = (end - start)[:, None]
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if count == 1:
            middle = (start + end) / 2 if mode == "ALIGN_CORNERS" else start
            return np.asarray(middle, np.float32)[:, None]
        return np.asarray(start[:, None] + i * length / (count - 1), np.float32)
    # the other modes: the runtime's rule inside a box is not known here (coremltools' iOS15
    # UNALIGN_CORNERS case samples an inverted normalized box at 0.5, 2.5 of a 4-pixel axis)
    raise NotImplementedError(f"crop_resize: sampling_mode {mode!r} (the evaluator has ALIGN_CORNERS, STRICT_ALIGN_CORNERS)")


def crop_resize(x: np.ndarray, boxes: np.ndarray, box_indices: np.ndarray, args: Args) -> np.ndarray:
    """(N, C, target_height, target_width): box n of image box_indices[n], bilinear; samples
    outside the image take ``pad_value``."""
    boxes = boxes.astype(np.float32) * np.float32(floating(args, "spatial_scale", 1.0))
    mode = text(args, "box_coordinate_mode", "CORNERS_HEIGHT_FIRST")
    a, b, c, d = (boxes[:, k] for k in range(4))
    if mode == "CORNERS_HEIGHT_FIRST":
        y1, x1, y2, x2 = a, b, c, d
    elif mode == "CORNERS_WIDTH_FIRST":
        x1, y1, x2, y2 = a, b, c, d
    else:  # CENTER_SIZE_*: centre and size
        yc, xc, h, w = (a, b, c, d) if mode == "CENTER_SIZE_HEIGHT_FIRST" else (b, a, d, c)
        y1, y2, x1, x2 = yc - h / 2, yc + h / 2, xc - w / 2, xc + w / 2
    height, width = x.shape[-2], x.shape[-1]
    if flag(args, "normalized_coordinates"):
        y1, y2, x1, x2 = y1 * (height - 1), y2 * (height - 1), x1 * (width - 1), x2 * (width - 1)
    sampling = text(args, "sampling_mode", "DEFAULT")
    ys = _box_grid(y1, y2, integer(args, "target_height", 1), sampling)  # (N, th)
    xs = _box_grid(x1, x2, integer(args, "target_width", 1), sampling)  # (N, tw)
    images = x[box_indices.astype(np.int64)].astype(np.float32)  # (N, C, H, W)

    def corners(grid: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        inside = (grid >= 0) & (grid <= size - 1)
        clipped = np.clip(grid, 0, size - 1)
        low = np.floor(clipped).astype(np.int64)
        return low, np.minimum(low + 1, size - 1), (clipped - low).astype(np.float32), inside

    y0, y1i, wy, y_in = corners(ys, height)
    x0, x1i, wx, x_in = corners(xs, width)
    n = np.arange(len(images))[:, None, None]

    def at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:  # (N, th, tw, C)
        return np.asarray(images[n, :, rows[:, :, None], cols[:, None, :]])

    wy4, wx4 = wy[:, :, None, None], wx[:, None, :, None]
    top = at(y0, x0) + (at(y0, x1i) - at(y0, x0)) * wx4
    bottom = at(y1i, x0) + (at(y1i, x1i) - at(y1i, x0)) * wx4
    result = top + (bottom - top) * wy4
    inside = (y_in[:, :, None] & x_in[:, None, :])[..., None]
    result = np.where(inside, result, np.float32(floating(args, "pad_value", 0.0)))
    return np.transpose(result, (0, 3, 1, 2))


@kernel("crop_resize")
def _crop_resize(args: Args) -> np.ndarray:
    """iOS17: boxes (N, 4) and box_indices (default arange(N)) -> (N, C, th, tw). iOS15/16:
    roi (N, 1, 4 or 5, 1, 1); with 5 the first entry is the image index -> (N, 1, C, th, tw),
    with 4 every box crops every image -> (N, B, C, th, tw)."""
    x = array(args, "x")
    if "boxes" in args:
        boxes = array(args, "boxes").reshape(-1, 4)
        indices = args.get("box_indices")
        box_indices = np.arange(len(boxes)) if indices is None else np.asarray(indices).reshape(-1)
        return crop_resize(x, boxes, box_indices, args)
    roi = array(args, "roi").reshape(array(args, "roi").shape[0], -1)
    if roi.shape[1] == 5:
        return crop_resize(x, roi[:, 1:], roi[:, 0].astype(np.int64), args)[:, None]
    count, batch = roi.shape[0], x.shape[0]
    every = crop_resize(x, np.repeat(roi, batch, axis=0), np.tile(np.arange(batch), count), args)
    return every.reshape((count, batch) + every.shape[1:])


def _source(coords: np.ndarray, size: int, mode: str, align: bool) -> np.ndarray:
    """Pixel coordinates (0 .. size - 1 inside the image) of resample's ``coordinates``."""
    if mode == "normalized_minus_one_to_one":
        return (coords + 1) / 2 * (size - 1) if align else ((coords + 1) * size - 1) / 2
    if mode == "normalized_zero_to_one":
        return coords * (size - 1) if align else coords * size - 0.5
    return coords  # unnormalized


def _reflect(p: np.ndarray, low: float, high: float) -> np.ndarray:
    span = high - low
    if span <= 0:
        return np.zeros_like(p)
    distance = np.abs(p - low)
    flips = np.floor(distance / span)
    extra = distance - flips * span
    return np.where(flips % 2 == 0, low + extra, high - extra)


@kernel("resample")
def _resample(args: Args) -> np.ndarray:
    """x (B, C, H, W) sampled at coordinates (B, H2, W2, 2) given as (x, y): bilinear (outside
    samples by ``padding_mode``: constant per corner, border clamps, reflection mirrors about the
    edge pixels, symmetric about the image's edges) or nearest (halves to even)."""
    return resample(array(args, "x"), array(args, "coordinates"), args)


def resample(x: np.ndarray, coords: np.ndarray, args: Args) -> np.ndarray:
    """resample's (and affine's) sampling of x (B, C, H, W) at coords (B, H2, W2, 2)."""
    x, coords = x.astype(np.float32), coords.astype(np.float32)
    mode, align = text(args, "coordinates_mode", "normalized_minus_one_to_one"), flag(args, "align_corners")
    padding = text(args, "padding_mode", "constant")
    height, width = x.shape[-2], x.shape[-1]
    px, py = _source(coords[..., 0], width, mode, align), _source(coords[..., 1], height, mode, align)
    if padding == "reflection":
        px, py = _reflect(px, 0, width - 1), _reflect(py, 0, height - 1)
    elif padding == "symmetric":
        px, py = _reflect(px, -0.5, width - 0.5), _reflect(py, -0.5, height - 0.5)
    if padding != "constant":
        px, py = np.clip(px, 0, width - 1), np.clip(py, 0, height - 1)
    batch = np.arange(x.shape[0])[:, None, None]
    value = np.float32(floating(args, "padding_value", 0.0))

    def pixel(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:  # (B, C, H2, W2)
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        got = x[batch, :, np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)]  # (B, H2, W2, C)
        return np.transpose(np.where(inside[..., None], got, value), (0, 3, 1, 2))

    if text(args, "sampling_mode", "bilinear") == "nearest":
        return pixel(np.rint(py).astype(np.int64), np.rint(px).astype(np.int64))
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    wx, wy = (px - x0)[:, None], (py - y0)[:, None]
    top = pixel(y0, x0) * (1 - wx) + pixel(y0, x0 + 1) * wx
    bottom = pixel(y0 + 1, x0) * (1 - wx) + pixel(y0 + 1, x0 + 1) * wx
    return np.asarray(top * (1 - wy) + bottom * wy, np.float32)


@kernel("affine")
def _affine(args: Args) -> np.ndarray:
    """The output's (x, y) grid in the coordinates mode (corners aligned or not), mapped by
    [a0, a1, a2, b0, b1, b2] (one row per batch, or one for all) to x' = a0 x + a1 y + a2,
    y' = b0 x + b1 y + b2, then sampled like resample."""
    x = array(args, "x")
    matrix = array(args, "transform_matrix").astype(np.float32).reshape(-1, 6)
    matrix = np.broadcast_to(matrix, (x.shape[0], 6))
    height, width = integer(args, "output_height"), integer(args, "output_width")

    def axis(size: int) -> np.ndarray:  # normalized -1..1 positions of the output's pixels
        if flag(args, "align_corners"):
            return np.linspace(-1, 1, size, dtype=np.float32) if size > 1 else np.zeros(1, np.float32)
        return ((2 * np.arange(size, dtype=np.float32) + 1) / size - 1).astype(np.float32)

    gx, gy = np.meshgrid(axis(width), axis(height))  # (H2, W2)
    a, b = matrix[:, None, None, :3], matrix[:, None, None, 3:]
    coords = np.stack(
        [a[..., 0] * gx + a[..., 1] * gy + a[..., 2], b[..., 0] * gx + b[..., 1] * gy + b[..., 2]], axis=-1
    )
    return resample(x, coords, args)
