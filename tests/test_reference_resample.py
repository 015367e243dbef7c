"""resample in the reference evaluator: the four padding modes, three coordinate modes and two
sampling modes, on the values coremltools' iOS15 TestResample expects of the runtime; affine."""

from __future__ import annotations

from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

from mil_sparsity import reference

X = np.array([11.0, 22.0, 33.0, 44.0], np.float32).reshape(1, 1, 2, 2)
COORDS = np.array([-1.0, -2.0, -3.7, -1.0, 0.0, 0.0, 3.5, 1.2], np.float32).reshape(1, 2, 2, 2)


@pytest.mark.parametrize(
    ("sampling", "padding", "coordinates", "align", "expected"),
    [
        ("bilinear", "constant", "normalized_minus_one_to_one", True, [8.585, 6.17, 27.5, 6.17]),
        ("nearest", "border", "unnormalized", False, [11.0, 11.0, 11.0, 44.0]),
        ("bilinear", "reflection", "normalized_zero_to_one", True, [22.0, 36.3, 11.0, 34.1]),
        ("nearest", "symmetric", "normalized_zero_to_one", False, [22.0, 33.0, 11.0, 33.0]),
    ],
)
def test_resample(sampling: str, padding: str, coordinates: str, align: bool, expected: list[float]) -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=X.shape), mb.TensorSpec(shape=COORDS.shape)], opset_version=ct.target.iOS17)
    def prog(x: Any, c: Any) -> Any:
        return mb.resample(
            x=x, coordinates=c, sampling_mode=sampling, padding_mode=padding, padding_value=6.17,
            coordinates_mode=coordinates, align_corners=align,
        )

    (got,) = reference.run(prog, {"x": X, "c": COORDS}).values()
    np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("align", [True, False])
def test_affine_identity_and_shift(align: bool) -> None:
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)

    def affine(matrix: list[float]) -> np.ndarray:
        @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
        def prog(v: Any) -> Any:
            return mb.affine(
                x=v, transform_matrix=np.array([matrix], np.float32), output_height=3, output_width=4,
                sampling_mode="bilinear", padding_mode="constant", padding_value=0.0,
                coordinates_mode="normalized_minus_one_to_one", align_corners=align,
            )

        (got,) = reference.run(prog, {"v": x}).values()
        return got

    np.testing.assert_allclose(affine([1, 0, 0, 0, 1, 0]), x, atol=1e-5)
    # x' = x + one pixel (2 / (W - 1) aligned, 2 / W not): column j reads column j + 1, the last pads
    step = 2 / 3 if align else 2 / 4
    shifted = np.concatenate([x[..., 1:], np.zeros((1, 1, 3, 1), np.float32)], axis=-1)
    np.testing.assert_allclose(affine([1, 0, step, 0, 1, 0]), shifted, atol=1e-5)
