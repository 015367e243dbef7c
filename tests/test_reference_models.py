"""The reference evaluator against torch on real architectures (tests/_zoo.py) and on the
models the other tests and the demo build.

Tolerance: ``|evaluator - torch| <= tol * (|torch| + max|torch|)`` elementwise, i.e.
``assert_allclose(rtol=tol, atol=tol * max|torch|)``: relative to each element and to the
output's scale (outputs near zero are judged against the output's largest value).

Worst ``max |evaluator - torch| / (|torch| + max|torch|)`` measured over 5 seeds and iOS15..iOS18
(coremltools 9.0, torch 2.13, transformers 5.24):

    family  fp32     fp16 (fp16 weights)  fp16, round_fp16_intermediates
    gpt2    1.3e-07  2.4e-04              4.0e-04
    bert    1.8e-07  4.3e-04              8.1e-04
    vit     4.2e-07  5.3e-04              1.3e-03
    cnn     9.7e-08  4.3e-04              5.6e-04
    lstm    1.3e-07  4.5e-04              4.5e-04

Bounds below: ~20x over fp32, ~4x over fp16.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import coremltools as ct  # noqa: E402

import _zoo  # noqa: E402
from _models import (  # noqa: E402
    CONV_LINEAR_LSTM_SHAPES,
    cond_linear_program,
    make_conv_linear_lstm,
    make_mlp,
    trace,
)
from mil_sparsity import reference  # noqa: E402
from sharing import share_everything  # noqa: E402  (tests/conformance, on the path by conftest)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

FP32_TOL = 1e-5
FP16_TOL = 2e-3
FP16_ROUNDED_TOL = 5e-3

ALL_TARGETS = [pytest.param(t, id=t.name) for t in _zoo.TARGETS]
FP16_TARGETS = [pytest.param(ct.target.iOS16, id="iOS16"), pytest.param(ct.target.iOS18, id="iOS18")]
SEEDS = (1, 2)


def assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], tol: float, what: str) -> None:
    assert set(actual) == set(expected), f"{what}: outputs {sorted(actual)} != {sorted(expected)}"
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape, f"{what} {name}: shape {got.shape} != {want.shape}"
        assert np.isfinite(got).all(), f"{what} {name}: non-finite values"
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=f"{what} {name}")


# --------------------------------------------------------------------------------------------
# the zoo: GPT-2, BERT, ViT, CNN, LSTM
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ALL_TARGETS)
@pytest.mark.parametrize("family", _zoo.FAMILIES)
def test_float32_conversion_matches_torch(family, target):
    zoo = _zoo.build(family)
    evaluator = reference.ReferenceEvaluator(_zoo.converted(family, target, ct.precision.FLOAT32))
    for seed in SEEDS:
        inputs = zoo.random_inputs(seed)
        assert_close(evaluator(inputs), zoo.torch_outputs(inputs), FP32_TOL, f"{family} {target.name} seed {seed}")


@pytest.mark.parametrize("family", _zoo.FAMILIES)
def test_a_threaded_run_that_shares_every_kernel_matches_torch(family, monkeypatch, shared_work):
    """The zoo's models are too small for a threaded run to share much among its threads (CI
    also runs one BLAS thread, so evaluators default to one thread): with the thresholds
    lowered, every product, softmax, norm and blockwise chain is cut into shares, and the
    outputs must still match torch."""
    share_everything(monkeypatch.setattr)
    zoo = _zoo.build(family)
    evaluator = reference.ReferenceEvaluator(_zoo.converted(family, ct.target.iOS17, ct.precision.FLOAT32), threads=2)
    for seed in SEEDS:
        inputs = zoo.random_inputs(seed)
        assert_close(evaluator(inputs), zoo.torch_outputs(inputs), FP32_TOL, f"{family} threaded seed {seed}")
    assert len(shared_work) > 10, f"{family}: only {len(shared_work)} shares handed to the pool"


@pytest.mark.parametrize("target", FP16_TARGETS)
@pytest.mark.parametrize("family", _zoo.FAMILIES)
def test_float16_conversion_matches_torch(family, target):
    zoo = _zoo.build(family)
    mlmodel = _zoo.converted(family, target, ct.precision.FLOAT16)
    plain = reference.ReferenceEvaluator(mlmodel)
    rounded = reference.ReferenceEvaluator(mlmodel, round_fp16_intermediates=True)
    for seed in SEEDS:
        inputs = zoo.random_inputs(seed)
        expected = zoo.torch_outputs(inputs)
        what = f"{family} {target.name} fp16 seed {seed}"
        assert_close(plain(inputs), expected, FP16_TOL, what)
        assert_close(rounded(inputs), expected, FP16_ROUNDED_TOL, what + " rounded")


def test_zoo_outputs_depend_on_the_inputs():
    """The premise of the comparisons above: no family's output is constant in its inputs."""
    for family in _zoo.FAMILIES:
        zoo = _zoo.build(family)
        first, second = zoo.torch_outputs(zoo.random_inputs(1)), zoo.torch_outputs(zoo.random_inputs(2))
        for name in first:
            assert not np.allclose(first[name], second[name], rtol=1e-3, atol=1e-3), (family, name)


def test_int64_token_ids_are_accepted_as_core_ml_converts_them():
    zoo = _zoo.build("bert")
    mlmodel = _zoo.converted("bert", ct.target.iOS16, ct.precision.FLOAT32)
    inputs = zoo.random_inputs(3)
    as_int64 = {name: value.astype(np.int64) for name, value in inputs.items()}
    got = reference.run(mlmodel, as_int64)
    for name, value in reference.run(mlmodel, inputs).items():
        assert np.array_equal(got[name], value), name


def test_saved_package_path_and_reloaded_model_evaluate_like_the_converted_one(tmp_path):
    zoo = _zoo.build("vit")
    mlmodel = _zoo.converted("vit", ct.target.iOS17, ct.precision.FLOAT16)
    path = tmp_path / "vit.mlpackage"
    mlmodel.save(str(path))
    inputs = zoo.random_inputs(4)
    in_memory = reference.run(mlmodel, inputs)
    from_path = reference.run(str(path), inputs)
    from_pathlike = reference.run(path, inputs)
    reloaded = reference.run(ct.models.MLModel(str(path), skip_model_load=True), inputs)
    for name, value in in_memory.items():
        assert np.array_equal(from_path[name], value), name
        assert np.array_equal(from_pathlike[name], value), name
        assert np.array_equal(reloaded[name], value), name
    assert_close(from_path, zoo.torch_outputs(inputs), FP16_TOL, "vit from package")


# --------------------------------------------------------------------------------------------
# the models of tests/_models.py and mil_sparsity/demo.py
# --------------------------------------------------------------------------------------------
def spec_names(mlmodel: Any) -> tuple[list[str], list[str]]:
    description = mlmodel.get_spec().description
    return [f.name for f in description.input], [f.name for f in description.output]


@pytest.mark.parametrize("target", ALL_TARGETS)
@pytest.mark.parametrize(
    "precision, tol",
    [pytest.param(ct.precision.FLOAT32, FP32_TOL, id="fp32"), pytest.param(ct.precision.FLOAT16, FP16_TOL, id="fp16")],
)
def test_conv_linear_lstm_model_matches_torch(target, precision, tol):
    model = make_conv_linear_lstm(seed=0)
    mlmodel = ct.convert(
        trace(model, CONV_LINEAR_LSTM_SHAPES),
        inputs=[ct.TensorType(shape=shape) for shape in CONV_LINEAR_LSTM_SHAPES],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=precision,
    )
    input_names, output_names = spec_names(mlmodel)
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in CONV_LINEAR_LSTM_SHAPES]
    with torch.no_grad():
        outputs = model(*(torch.from_numpy(a) for a in arrays))
    expected = {name: out.numpy() for name, out in zip(output_names, outputs)}
    got = reference.run(mlmodel, dict(zip(input_names, arrays)))
    assert_close(got, expected, tol, f"conv_linear_lstm {target.name}")


def test_mlp_model_matches_torch():
    model = make_mlp(seed=1)
    mlmodel = ct.convert(
        trace(model, [(3, 64)]),
        inputs=[ct.TensorType(shape=(3, 64))],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT32,
    )
    (input_name,), (output_name,) = spec_names(mlmodel)
    x = np.random.default_rng(6).standard_normal((3, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert_close(reference.run(mlmodel, {input_name: x}), {output_name: expected}, FP32_TOL, "mlp")


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_cond_program_takes_the_branch_its_flag_selects(target):
    rng = np.random.default_rng(7)
    w_true, w_false = (rng.standard_normal((8, 4)).astype(np.float32) for _ in range(2))
    w_out = rng.standard_normal((3, 8)).astype(np.float32)
    prog = cond_linear_program(target, w_true, w_false, w_out)
    (output,) = prog.functions["main"].outputs
    x = rng.standard_normal((1, 4)).astype(np.float32)
    for flag, weight in ((np.array([1], np.int32), w_true), (np.array([-2], np.int32), w_false)):
        got = reference.run(prog, {"x": x, "flag": flag})
        expected = (x @ weight.T) @ w_out.T
        assert_close(got, {output.name: expected}, FP32_TOL, f"cond flag {flag[0]}")


@pytest.mark.parametrize("target", [pytest.param(t, id=t.name) for t in _zoo.TARGETS[1:]])
def test_demo_model_matches_torch_functional(target):
    from mil_sparsity import demo

    mlmodel = demo.build_model(target)
    program = mlmodel._mil_program
    # the weights by shape (op names change in coremltools' passes): conv1 64x16x3x3,
    # fc1 256x2304, fc2 10x256
    weights = {
        tuple(op.weight.shape): np.asarray(op.weight.val, dtype=np.float32)
        for op in _zoo.iter_ops(program.functions["main"])
        if op.op_type in ("conv", "linear")
    }
    assert set(weights) == {(64, 16, 3, 3), (256, 2304), (10, 256)}
    (input_name,), (output_name,) = spec_names(mlmodel)
    x = np.random.default_rng(8).standard_normal((1, 16, 8, 8)).astype(np.float32)
    functional = torch.nn.functional
    with torch.no_grad():
        y = functional.relu(functional.conv2d(torch.from_numpy(x), torch.from_numpy(weights[(64, 16, 3, 3)])))
        y = functional.relu(functional.linear(y.reshape(1, -1), torch.from_numpy(weights[(256, 2304)])))
        expected = functional.linear(y, torch.from_numpy(weights[(10, 256)])).numpy()
    # the demo converts at the default fp16 precision: its weights are fp16 (upcast exactly
    # above), its input is cast to fp16
    assert_close(reference.run(mlmodel, {input_name: x}), {output_name: expected}, FP16_TOL, "demo")
