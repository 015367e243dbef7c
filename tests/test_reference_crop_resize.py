"""crop_resize in the reference evaluator: every roi/boxes form, bilinear inside the boxes,
pad_value outside the image; the sampling modes it lacks raise NotImplementedError."""

from __future__ import annotations

from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

from mil_sparsity import reference

X = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)  # x[i, j] = 1 + 4 i + j: bilinear is exact


def run(build: Any, x: np.ndarray = X, target: Any = ct.target.iOS17) -> np.ndarray:
    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=target)
    def prog(v: Any) -> Any:
        return build(v)

    (got,) = reference.run(prog, {"v": x}).values()
    return got


def test_ios17_boxes_normalized_with_padding() -> None:
    """coremltools' iOS17 TestCropResize values (N=3): outside the image reads pad_value."""
    boxes = np.array([[0.1, 0.3, 1.3, 1.0], [0.5, 1.8, 1.0, 0.3], [0.0, 0.4, 0.6, 0.7]], np.float32)
    got = run(lambda v: mb.crop_resize(
        x=v, boxes=boxes, box_indices=np.zeros(3, np.int32), target_height=2, target_width=2,
        normalized_coordinates=True, sampling_mode="ALIGN_CORNERS", pad_value=10.0,
    ))
    expected = np.array([3.1, 5.2, 10, 10, 10, 7.9, 10, 13.9, 2.2, 3.1, 9.4, 10.3], np.float32).reshape(3, 1, 2, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_ios16_roi_forms() -> None:
    x = np.concatenate([X, X + 100])  # two images
    roi4 = np.array([1, 1, 2, 2], np.float32).reshape(1, 1, 4, 1, 1)  # every image
    got = run(lambda v: mb.crop_resize(x=v, roi=roi4, target_height=2, target_width=2, sampling_mode="ALIGN_CORNERS"), x, ct.target.iOS16)
    assert got.shape == (1, 2, 1, 2, 2)
    np.testing.assert_allclose(got[0, :, 0], [[[6, 7], [10, 11]], [[106, 107], [110, 111]]])
    roi5 = np.array([1, 0, 0, 3, 3], np.float32).reshape(1, 1, 5, 1, 1)  # image 1 only
    got = run(lambda v: mb.crop_resize(x=v, roi=roi5, target_height=3, target_width=2, sampling_mode="STRICT_ALIGN_CORNERS"), x, ct.target.iOS16)
    # rows 0, 1.5, 3 and columns 0, 3 of image 1: 101 + 4 y + x
    np.testing.assert_allclose(got[0, 0, 0], [[101, 104], [107, 110], [113, 116]])


def test_a_sampling_mode_it_lacks_raises() -> None:
    boxes = np.array([[1, 1, 2, 2]], np.float32)
    with pytest.raises(NotImplementedError, match="crop_resize: sampling_mode 'DEFAULT'"):
        run(lambda v: mb.crop_resize(x=v, boxes=boxes, target_height=2, target_width=2))
