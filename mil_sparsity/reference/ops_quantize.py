"""Activation quantization ops (iOS17): quantize and dequantize with a scalar or per-axis
scale and zero point."""

from __future__ import annotations

from typing import Optional

import numpy as np

from mil_sparsity.reference._registry import Args, array, kernel, optional_array, text

_QUANTIZED = {"int8": np.int8, "uint8": np.uint8}


def _along_axis(param: Optional[np.ndarray], args: Args, rank: int) -> Optional[np.ndarray]:
    """A per-axis (rank-1) parameter shaped to broadcast along ``axis``; scalars as they are."""
    if param is None or param.ndim == 0:
        return param
    axis = int(np.asarray(args["axis"]).item()) % rank
    shape = [1] * rank
    shape[axis] = -1
    return param.reshape(shape)


def _per_axis_scale(args: Args, rank: int) -> np.ndarray:
    scale = array(args, "scale")
    shaped = _along_axis(scale, args, rank)
    return scale if shaped is None else shaped


@kernel("quantize")
def _quantize(args: Args) -> np.ndarray:
    """clip(round_half_even(x / scale + zero_point)) in the output integer type."""
    x = array(args, "input")
    dtype = np.dtype(_QUANTIZED[text(args, "output_dtype")])
    scale = _per_axis_scale(args, x.ndim)
    zero_point = _along_axis(optional_array(args, "zero_point"), args, x.ndim)
    scaled = x / scale
    if zero_point is not None:
        scaled = scaled + zero_point.astype(np.float32)
    info = np.iinfo(dtype)
    return np.asarray(np.clip(np.round(scaled), info.min, info.max).astype(dtype))


@kernel("dequantize")
def _dequantize(args: Args) -> np.ndarray:
    """scale * (input - zero_point), float32."""
    data = array(args, "input").astype(np.float32)
    zero_point = _along_axis(optional_array(args, "zero_point"), args, data.ndim)
    if zero_point is not None:
        data = data - zero_point.astype(np.float32)
    return np.asarray(data * _per_axis_scale(args, data.ndim))
