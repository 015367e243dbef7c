"""The reference evaluator's engine: loading, input checks, unsupported ops, capture, memory,
fp16 rounding, control flow, multifunction programs and constexpr ops."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol, types

from mil_sparsity import _coremltools_private as private
from mil_sparsity import reference
from tests._mil_helpers import all_ops, snapshot
from tests._models import cond_linear_program

IOS16, IOS17, IOS18 = ct.target.iOS16, ct.target.iOS17, ct.target.iOS18
RNG = np.random.default_rng(0)


def mlp(target: Any = IOS17, shape: tuple[Any, ...] = (2, 8)) -> Any:
    w1 = RNG.standard_normal((16, 8)).astype(np.float32)
    w2 = RNG.standard_normal((4, 16)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=target)
    def prog(x: Any) -> Any:
        return mb.softmax(x=mb.linear(x=mb.relu(x=mb.linear(x=x, weight=w1)), weight=w2), axis=-1)

    return prog, w1, w2


def numpy_mlp(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    logits = np.maximum(x @ w1.T, 0) @ w2.T
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def convert(prog: Any, target: Any, **kwargs: Any) -> Any:
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True, **kwargs)


# ---- models of every kind ------------------------------------------------------------------------


def test_program_mlmodel_and_package_give_the_same_outputs(tmp_path: Path) -> None:
    prog, w1, w2 = mlp()
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    want = numpy_mlp(x, w1, w2)
    (from_program,) = reference.run(prog, {"x": x}).values()
    np.testing.assert_allclose(from_program, want, rtol=1e-5, atol=1e-6)
    model = convert(mlp()[0], IOS17, compute_precision=ct.precision.FLOAT32)
    path = tmp_path / "m.mlpackage"
    model.save(str(path))
    loaded = ct.models.MLModel(str(path), skip_model_load=True)
    assert getattr(loaded, "_mil_program", None) is None  # the spec path is exercised
    for source in (model, str(path), path, loaded):
        (got,) = reference.run(source, {"x": x}).values()
        assert got.dtype == np.float32


def test_outputs_by_name_match_the_model_description() -> None:
    model = convert(mlp()[0], IOS17)
    outputs = reference.run(model, {"x": np.ones((2, 8), np.float32)})
    assert list(outputs) == [o.name for o in model.get_spec().description.output]


def test_model_of_the_wrong_kind_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="model must be"):
        reference.run(42, {})
    with pytest.raises(FileNotFoundError):
        reference.run("/no/such/model.mlpackage", {})


# ---- inputs ---------------------------------------------------------------------------------------


def test_bad_input_names_are_listed() -> None:
    prog, _, _ = mlp()
    with pytest.raises(ValueError, match=r"missing \['x'\].*takes \['x'\]"):
        reference.run(prog, {})
    with pytest.raises(ValueError, match=r"unknown \['y'\]"):
        reference.run(prog, {"x": np.ones((2, 8)), "y": np.ones(1)})


@pytest.mark.parametrize("shape, what", [((2, 8, 1), "rank"), ((8,), "rank"), ((3, 8), "shape"), ((2, 7), "shape")])
def test_shape_outside_a_fixed_spec(shape: tuple[int, ...], what: str) -> None:
    prog, _, _ = mlp()
    with pytest.raises(ValueError, match=rf"input 'x': wrong {what}: got shape \({', '.join(map(str, shape))},?\), allowed \(2, 8\)"):
        reference.run(prog, {"x": np.ones(shape, np.float32)})


def test_range_dim_spec_accepts_inside_and_rejects_outside() -> None:
    model = convert(mlp(shape=(get_new_symbol(), 8))[0], IOS17, inputs=[ct.TensorType(name="x", shape=(ct.RangeDim(1, 4), 8))])
    for batch in (1, 3, 4):
        (got,) = reference.run(model, {"x": np.ones((batch, 8), np.float32)}).values()
        assert got.shape == (batch, 4)
    with pytest.raises(ValueError, match=r"input 'x': wrong shape: got shape \(5, 8\), allowed \(1\.\.4, 8\)"):
        reference.run(model, {"x": np.ones((5, 8), np.float32)})


def test_enumerated_shapes_spec() -> None:
    shapes = ct.EnumeratedShapes(shapes=[(1, 8), (3, 8)])
    model = convert(mlp(shape=(get_new_symbol(), 8))[0], IOS17, inputs=[ct.TensorType(name="x", shape=shapes)])
    assert reference.run(model, {"x": np.ones((3, 8), np.float32)})
    with pytest.raises(ValueError, match=r"got shape \(2, 8\), allowed one of \(1, 8\), \(3, 8\)"):
        reference.run(model, {"x": np.ones((2, 8), np.float32)})


def test_symbolic_dimension_of_a_program_accepts_any_size() -> None:
    prog, w1, w2 = mlp(shape=(get_new_symbol(), 8))
    x = RNG.standard_normal((5, 8)).astype(np.float32)
    (got,) = reference.run(prog, {"x": x}).values()
    np.testing.assert_allclose(got, numpy_mlp(x, w1, w2), rtol=1e-5, atol=1e-6)


def test_integer_inputs_converted_as_core_ml_does() -> None:
    table = RNG.standard_normal((10, 3)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4), dtype=types.int32)], opset_version=IOS17)
    def prog(ids: Any) -> Any:
        return mb.gather(x=table, indices=ids, axis=0)

    ids = RNG.integers(0, 10, (2, 4))
    (got,) = reference.run(prog, {"ids": ids.astype(np.int64)}).values()
    np.testing.assert_array_equal(got, table[ids])
    with pytest.raises(ValueError, match=r"input 'ids': values .* do not fit int32"):
        reference.run(prog, {"ids": np.full((2, 4), 2**40, np.int64)})
    # floats that hold whole numbers are accepted, as Core ML's predict takes them
    (got,) = reference.run(prog, {"ids": ids.astype(np.float32)}).values()
    np.testing.assert_array_equal(got, table[ids])
    for bad in (0.5, np.nan, np.inf):
        floats = ids.astype(np.float32)
        floats[1, 2] = bad
        with pytest.raises(ValueError, match=r"input 'ids': expected integers \(int32\).*whole numbers"):
            reference.run(prog, {"ids": floats})
    with pytest.raises(ValueError, match=r"input 'ids': values .* do not fit int32"):
        reference.run(prog, {"ids": np.full((2, 4), 2.0**40, np.float32)})
    with pytest.raises(TypeError, match=r"input 'ids': expected integers"):
        reference.run(prog, {"ids": np.full((2, 4), "1")})


def test_float_inputs_follow_the_input_type() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(3,), dtype=types.fp16)], opset_version=IOS17)
    def prog(x: Any) -> Any:
        return mb.mul(x=x, y=np.float16(1.0))

    x = np.array([0.1, 1 / 3, 1000.06], np.float64)
    (got,) = reference.run(prog, {"x": x}).values()
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))


# ---- unsupported ops, the model left alone -----------------------------------------------------


def test_every_unsupported_op_type_is_listed_before_anything_runs() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 4), dtype=types.fp32), mb.TensorSpec(shape=(1,), dtype=types.int32)], opset_version=IOS17)
    def prog(x: Any, flag: Any) -> Any:
        scores = mb.reduce_sum(x=x, axes=[-1], keep_dims=True)
        a = mb.non_maximum_suppression(boxes=x, scores=scores, iou_threshold=0.5, max_boxes=2)[1]
        b = mb.non_maximum_suppression(boxes=x, scores=scores, iou_threshold=0.2, max_boxes=2)[1]
        pred = mb.greater(x=mb.squeeze(x=flag), y=np.int32(0))
        image = mb.expand_dims(x=x, axes=[0])
        c = mb.cond(
            pred=pred,
            _true_fn=lambda: mb.conv_quantized(
                x=image, weight=np.ones((1, 1, 1, 1), np.uint8), quantization_type="linear", nbits=8,
                quant_scale=np.float32(1.0), quant_bias=np.float32(0.0),
            ),
            _false_fn=lambda: mb.add(x=image, y=1.0),
        )
        return mb.add(x=a, y=b), c

    calls: list[str] = []
    with pytest.raises(NotImplementedError) as error:
        reference.run(prog, {"x": np.ones((1, 4, 4)), "flag": np.ones(1, np.int32)}, capture=lambda op, i, o: calls.append(op.op_type))
    message = str(error.value)
    assert "2 op type(s)" in message
    assert "conv_quantized (x1)" in message and "non_maximum_suppression (x2)" in message
    assert calls == []


def test_the_program_is_not_modified() -> None:
    w = RNG.standard_normal((4, 4)).astype(np.float32)
    prog = cond_linear_program(IOS17, w, -w, w.T.copy())
    before = snapshot(prog)
    for flag in (0, 1):
        reference.run(prog, {"x": np.ones((1, 4), np.float32), "flag": np.array([flag], np.int32)})
    assert snapshot(prog) == before


# ---- capture and memory --------------------------------------------------------------------------


def test_capture_sees_every_op_once_with_its_values() -> None:
    prog, w1, w2 = mlp()
    seen: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = []
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    reference.run(prog, {"x": x}, capture=lambda op, inputs, outputs: seen.append((op.name, dict(inputs), outputs)))
    ops = list(all_ops(prog))
    assert [name for name, _, _ in seen] == [op.name for op in ops]
    first_linear = next((inputs, outputs) for name, inputs, outputs in seen if name == ops[[o.op_type for o in ops].index("linear")].name)
    np.testing.assert_array_equal(first_linear[0]["x"], x)
    np.testing.assert_array_equal(first_linear[0]["weight"], w1)
    np.testing.assert_allclose(first_linear[1][0], x @ w1.T, rtol=1e-5, atol=1e-6)


def test_values_are_freed_after_their_last_reader() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(64,))], opset_version=IOS17)
    def prog(x: Any) -> Any:
        for _ in range(12):
            x = mb.add(x=x, y=1.0)
        return x

    alive: list[weakref.ref[np.ndarray]] = []
    max_alive = 0

    def capture(op: Any, inputs: Any, outputs: tuple[Any, ...]) -> None:
        nonlocal max_alive
        gc.collect()
        max_alive = max(max_alive, sum(ref() is not None for ref in alive))
        if op.op_type == "add":
            alive.append(weakref.ref(outputs[0]))

    (got,) = reference.run(prog, {"x": np.zeros(64, np.float32)}, capture=capture).values()
    np.testing.assert_array_equal(got, np.full(64, 12.0, np.float32))
    assert len(alive) == 12
    assert max_alive <= 2  # the chain holds one add result at a time (plus the one just made)


# ---- fp16 ------------------------------------------------------------------------------------------


def test_rounding_fp16_intermediates_is_observable_and_exact() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(256,))], opset_version=IOS17)
    def prog(x: Any) -> Any:
        h = mb.cast(x=x, dtype="fp16")
        h = mb.mul(x=h, y=np.float16(1.001))
        h = mb.add(x=h, y=np.float16(0.0003))
        h = mb.mul(x=h, y=h)
        return mb.cast(x=h, dtype="fp32")

    x = RNG.uniform(0.5, 2.0, 256).astype(np.float32)
    (plain,) = reference.run(prog, {"x": x}).values()
    (rounded,) = reference.run(prog, {"x": x}, round_fp16_intermediates=True).values()
    h = x.astype(np.float16)
    h = h * np.float16(1.001)  # numpy float16 arithmetic: float32 math rounded to fp16
    h = h + np.float16(0.0003)
    h = h * h
    np.testing.assert_array_equal(rounded, h.astype(np.float32))
    exact = (x.astype(np.float16).astype(np.float32) * np.float32(np.float16(1.001)) + np.float32(np.float16(0.0003))) ** 2
    np.testing.assert_allclose(plain, exact, rtol=1e-6)
    assert np.any(plain != rounded)


# ---- control flow and functions ------------------------------------------------------------------


def test_cond_takes_the_branch_the_predicate_picks() -> None:
    w = RNG.standard_normal((3, 3)).astype(np.float32)
    out = RNG.standard_normal((2, 3)).astype(np.float32)
    prog = cond_linear_program(IOS17, w, -2 * w, out)
    x = RNG.standard_normal((1, 3)).astype(np.float32)
    ran: list[str] = []
    for flag, weight in ((1, w), (0, -2 * w)):
        ran.clear()
        (got,) = reference.run(prog, {"x": x, "flag": np.array([flag], np.int32)}, capture=lambda op, i, o: ran.append(op.op_type)).values()
        np.testing.assert_allclose(got, (x @ weight.T) @ out.T, rtol=1e-5, atol=1e-6)
        assert ran.count("linear") == 2  # one branch and the linear after the cond


def test_while_loop_runs_its_body_until_the_condition_fails() -> None:
    scale = np.float32(1.5)

    @mb.program(input_specs=[mb.TensorSpec(shape=(3,)), mb.TensorSpec(shape=(1,), dtype=types.int32)], opset_version=IOS17)
    def prog(x: Any, n: Any) -> Any:
        factor = mb.mul(x=x, y=0.0)  # defined outside, read inside the body
        factor = mb.add(x=factor, y=scale)
        i0 = mb.mul(x=n, y=np.int32(0))

        def cond(value: Any, i: Any) -> Any:
            return mb.squeeze(x=mb.less(x=i, y=n))

        def body(value: Any, i: Any) -> Any:
            return mb.mul(x=value, y=factor), mb.add(x=i, y=np.int32(1))

        value, count = mb.while_loop(_cond=cond, _body=body, loop_vars=(x, i0))
        return value, count

    x = np.array([1.0, -2.0, 0.5], np.float32)
    for n in (0, 1, 4):
        value, count = reference.run(prog, {"x": x, "n": np.array([n], np.int32)}).values()
        np.testing.assert_allclose(value, x * scale**n, rtol=1e-6)
        np.testing.assert_array_equal(count, [n])


def test_function_name_picks_a_function_of_a_multifunction_program() -> None:
    prog, w1, w2 = mlp()

    @mb.function(input_specs=[mb.TensorSpec(shape=(2, 8))], opset_version=IOS17)
    def doubled(x: Any) -> Any:
        return mb.mul(x=x, y=2.0)

    prog.add_function("doubled", doubled)
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    (main,) = reference.run(prog, {"x": x}).values()
    np.testing.assert_allclose(main, numpy_mlp(x, w1, w2), rtol=1e-5, atol=1e-6)
    (twice,) = reference.run(prog, {"x": x}, function_name="doubled").values()
    np.testing.assert_array_equal(twice, 2 * x)
    with pytest.raises(ValueError, match=r"function_name: 'other' is not in the model; it has \['doubled', 'main'\]"):
        reference.run(prog, {"x": x}, function_name="other")


def test_multifunction_package(tmp_path: Path) -> None:
    first, second = tmp_path / "a.mlpackage", tmp_path / "b.mlpackage"
    prog_a, w1, w2 = mlp()
    convert(prog_a, IOS18, compute_precision=ct.precision.FLOAT32).save(str(first))

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8))], opset_version=IOS18)
    def prog_b(x: Any) -> Any:
        return mb.mul(x=x, y=3.0)

    convert(prog_b, IOS18, compute_precision=ct.precision.FLOAT32).save(str(second))
    desc = ct.utils.MultiFunctionDescriptor()
    desc.add_function(str(first), src_function_name="main", target_function_name="mlp")
    desc.add_function(str(second), src_function_name="main", target_function_name="triple")
    desc.default_function_name = "mlp"
    joined = tmp_path / "joined.mlpackage"
    ct.utils.save_multifunction(desc, str(joined))
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    (got,) = reference.run(joined, {"x": x}, function_name="mlp").values()
    np.testing.assert_allclose(got, numpy_mlp(x, w1, w2), rtol=1e-5, atol=1e-6)
    (got,) = reference.run(joined, {"x": x}, function_name="triple").values()
    np.testing.assert_allclose(got, 3 * x, rtol=1e-6)


# ---- constexpr ops -----------------------------------------------------------------------------------


def linear_through(build_weight: Any, target: Any, x: np.ndarray) -> np.ndarray:
    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=target)
    def prog(v: Any) -> Any:
        weight = build_weight()
        if weight.dtype == types.fp16:
            v = mb.cast(x=v, dtype="fp16")
        return mb.linear(x=v, weight=weight)

    (got,) = reference.run(prog, {"v": x}).values()
    return got


def sparse_case() -> tuple[np.ndarray, np.ndarray]:
    mask = RNG.random((6, 8)) < 0.5
    dense = np.where(mask, RNG.standard_normal((6, 8)), 0).astype(np.float16)
    return mask, dense


X = RNG.standard_normal((3, 8)).astype(np.float32)


def check_weight(build: Any, target: Any, dense: np.ndarray, rtol: float = 1e-5) -> None:
    """linear(x, weight) evaluates to x @ dense.T; fp16 weights read an fp16-rounded x."""
    x = X.astype(dense.dtype).astype(np.float32)
    got = linear_through(build, target, X)
    np.testing.assert_allclose(got, x @ dense.astype(np.float32).T, rtol=rtol, atol=1e-4)


def test_sparse_to_dense_ios16_packed_mask() -> None:
    mask, dense = sparse_case()
    packed = np.packbits(mask.reshape(-1), bitorder="little")
    check_weight(
        lambda: mb.constexpr_sparse_to_dense(nonzero_data=dense[mask], mask=packed, shape=np.array(dense.shape, np.uint32)),
        IOS16, dense,
    )


def test_sparse_to_dense_ios18_uint1_mask() -> None:
    mask, dense = sparse_case()
    check_weight(
        lambda: mb.constexpr_sparse_to_dense(nonzero_data=dense[mask], mask=mask.astype(private.UINT1_DTYPE)),
        IOS18, dense,
    )


def test_lut_to_dense_both_forms() -> None:
    lut = RNG.standard_normal(256).astype(np.float16)
    indices = RNG.integers(0, 256, (6, 8)).astype(np.uint8)
    dense = lut[indices]
    check_weight(lambda: mb.constexpr_lut_to_dense(lut=lut, indices=indices.reshape(-1), shape=np.array([6, 8], np.uint32)), IOS16, dense)
    check_weight(lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut.reshape(1, 1, 256, 1)), IOS18, dense)


def test_affine_dequantize_and_cast() -> None:
    quantized = RNG.integers(0, 256, (6, 8)).astype(np.uint8)
    zero_point = RNG.integers(100, 150, 6).astype(np.uint8)
    scale = RNG.uniform(0.01, 0.1, 6).astype(np.float32)
    dense = (quantized.astype(np.float32) - zero_point[:, None]) * scale[:, None]
    check_weight(lambda: mb.constexpr_affine_dequantize(quantized_data=quantized, zero_point=zero_point, scale=scale, axis=0), IOS16, dense)
    half = RNG.standard_normal((6, 8)).astype(np.float16)
    check_weight(lambda: mb.constexpr_cast(source_val=half, output_dtype="fp32"), IOS16, half.astype(np.float32))


def test_blockwise_shift_scale() -> None:
    data = RNG.integers(-128, 128, (6, 8)).astype(np.int8)
    scale = RNG.uniform(0.01, 0.1, (6, 2)).astype(np.float16)
    offset = RNG.integers(-3, 3, (6, 2)).astype(np.int8)
    dense = (data.astype(np.float32) - np.repeat(offset, 4, axis=1)) * np.repeat(scale, 4, axis=1).astype(np.float32)
    # the op's value is fp16: the weight is the float32 product rounded to fp16 (rtol: 1 ulp)
    check_weight(lambda: mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset), IOS18, dense.astype(np.float16), rtol=2e-3)


def test_lut_to_sparse_feeds_sparse_to_dense() -> None:
    mask = RNG.random((6, 8)) < 0.5
    lut = RNG.standard_normal(256).astype(np.float16)
    indices = RNG.integers(0, 256, int(mask.sum())).astype(np.uint8)
    dense = np.zeros((6, 8), np.float16)
    dense[mask] = lut[indices]

    def build() -> Any:
        sparse_mask, nonzero = mb.constexpr_lut_to_sparse(
            indices_mask=mask.astype(private.UINT1_DTYPE), indices_nonzero_data=indices, lut=lut.reshape(1, 1, 256, 1)
        )
        return mb.constexpr_sparse_to_dense(nonzero_data=nonzero, mask=sparse_mask)

    check_weight(build, IOS18, dense)


def test_sparse_blockwise_shift_scale_feeds_sparse_to_dense() -> None:
    mask = RNG.random((6, 8)) < 0.5
    data = RNG.integers(-100, 100, int(mask.sum())).astype(np.int8)
    scale = RNG.uniform(0.01, 0.1, (6, 1)).astype(np.float16)
    dense = np.zeros((6, 8), np.float32)
    dense[mask] = data
    dense = (dense * scale.astype(np.float32)).astype(np.float16)

    def build() -> Any:
        sparse_mask, nonzero = mb.constexpr_sparse_blockwise_shift_scale(
            data_mask=mask.astype(private.UINT1_DTYPE), nonzero_data=data, scale=scale
        )
        return mb.constexpr_sparse_to_dense(nonzero_data=nonzero, mask=sparse_mask)

    check_weight(build, IOS18, dense, rtol=2e-3)


def test_quantized_lut_feeds_lut_to_sparse() -> None:
    """Joint compression: an int8 LUT (blockwise_shift_scale) read by lut_to_sparse, read by
    sparse_to_dense; coremltools cannot materialize the middle op (its lut has no .val)."""
    mask = RNG.random((6, 8)) < 0.5
    quantized = RNG.integers(-128, 128, (1, 1, 256, 1)).astype(np.int8)
    scale = np.full((1, 1, 1, 1), 0.02, np.float16)
    offset = np.full((1, 1, 1, 1), 3, np.int8)
    lut = ((quantized.astype(np.float32) - 3) * np.float32(scale.item())).astype(np.float16).reshape(256)
    indices = RNG.integers(0, 256, int(mask.sum())).astype(np.uint8)
    dense = np.zeros((6, 8), np.float16)
    dense[mask] = lut[indices]

    def build() -> Any:
        quantized_lut = mb.constexpr_blockwise_shift_scale(data=quantized, scale=scale, offset=offset)
        sparse_mask, nonzero = mb.constexpr_lut_to_sparse(
            indices_mask=mask.astype(private.UINT1_DTYPE), indices_nonzero_data=indices, lut=quantized_lut
        )
        return mb.constexpr_sparse_to_dense(nonzero_data=nonzero, mask=sparse_mask)

    check_weight(build, IOS18, dense, rtol=2e-3)
