"""The passes inside ct.convert: a traced torch model with conv, linear and LSTM weights.

Every check reads the saved and reloaded package's MIL program (no Core ML runtime here).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import coremltools as ct  # noqa: E402

import mil_sparsity as ms  # noqa: E402
from _models import (  # noqa: E402
    CONV_LINEAR_LSTM_SHAPES,
    SPARSE_OP,
    assert_bit_equal,
    check_sparse_form,
    conv_linear_lstm_weights,
    dense_value,
    make_conv_linear_lstm,
    ref_block,
    ref_magnitude,
    ref_n_m,
    ref_threshold,
    save_and_load,
    trace,
    weight_vars,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

TARGETS = [
    pytest.param(ct.target.iOS16, id="iOS16"),
    pytest.param(ct.target.iOS17, id="iOS17"),
    pytest.param(ct.target.iOS18, id="iOS18"),
]

CONV_KEY = ("conv", "weight", (32, 16, 3, 3))
SMALL_CONV_KEY = ("conv", "weight", (16, 3, 3, 3))
LINEAR_KEY = ("linear", "weight", (128, 64))
LSTM_KEYS = [("lstm", "weight_ih", (128, 32)), ("lstm", "weight_hh", (128, 32))]


@pytest.fixture(scope="module")
def net() -> tuple[Any, dict]:
    model = make_conv_linear_lstm(seed=0)
    return trace(model, CONV_LINEAR_LSTM_SHAPES), conv_linear_lstm_weights(model)


def convert(
    traced: Any,
    target: Any,
    tmp_path: Any,
    pass_name: str,
    options: Optional[dict] = None,
    precision: Any = None,
) -> Any:
    """ct.convert with ``pass_name`` appended to the default pipeline; the reloaded main function."""
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(pass_name)
    if options:
        pipeline.set_options(pass_name, options)
    kwargs = {} if precision is None else {"compute_precision": precision}
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(shape=shape) for shape in CONV_LINEAR_LSTM_SHAPES],
        pass_pipeline=pipeline,
        minimum_deployment_target=target,
        convert_to="mlprogram",
        **kwargs,
    )
    prog = save_and_load(mlmodel, tmp_path / "model.mlpackage")
    return prog.functions["main"]


def stored_dtype(key: tuple, target: Any, precision: Any = None) -> np.dtype:
    """The dtype coremltools stores a weight in: fp16 by default, except LSTM weights below
    iOS17 (the iOS15 lstm op has no fp16 variant, so coremltools keeps it in fp32)."""
    if precision == ct.precision.FLOAT32:
        return np.dtype(np.float32)
    if key[0] == "lstm" and target < ct.target.iOS17:
        return np.dtype(np.float32)
    return np.dtype(np.float16)


def sparse_op_of(var: Any, target: Any) -> Any:
    op = var.op
    assert op.op_type == SPARSE_OP, f"weight {var.name} is a {op.op_type}, not {SPARSE_OP}"
    check_sparse_form(op, ios18=target >= ct.target.iOS18)
    return op


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_magnitude_prunes_every_big_weight_exactly(net, target, tmp_path):
    traced, torch_weights = net
    report = ms.SparsityReport()
    config = ms.MagnitudeConfig(target_sparsity=0.6)
    main = convert(traced, target, tmp_path, ms.PRUNE_BY_MAGNITUDE, {"config": config, "report": report})
    weights = weight_vars(main)
    assert set(weights) == set(torch_weights)

    for key, torch_weight in torch_weights.items():
        dtype = stored_dtype(key, target)
        cast = torch_weight.astype(dtype)
        assert np.count_nonzero(cast) == cast.size  # no natural zeros: counts below are exact
        if cast.size <= config.weight_threshold:
            assert weights[key].op.op_type == "const", key
            assert_bit_equal(dense_value(weights[key]), cast, str(key))
            continue
        op = sparse_op_of(weights[key], target)
        assert np.dtype(op.nonzero_data.val.dtype) == dtype, key
        dense = dense_value(weights[key])
        assert_bit_equal(dense, ref_magnitude(cast, 0.6), str(key))
        zeros = dense == 0
        assert int(zeros.sum()) == round(0.6 * cast.size), key
        assert_bit_equal(dense[~zeros], cast[~zeros], f"{key} kept values")
        assert np.abs(cast[zeros]).max() <= np.abs(cast[~zeros]).min(), key

    # the report given as a pass option is filled
    assert len(report) > 0
    packed = {(r.name, r.shape) for r in report.packed}
    assert sorted(shape for _, shape in packed) == sorted(
        [(128, 32), (128, 32), (128, 64), (32, 16, 3, 3)]
    )
    for record in report.packed:
        assert record.pass_name == ms.PRUNE_BY_MAGNITUDE
        assert record.function == "main"
        assert record.config == {"kind": "magnitude", "target_sparsity": 0.6, "weight_threshold": 2048, "scoring": "magnitude", "method": "prune"}
        size = int(np.prod(record.shape))
        assert record.sparsity == pytest.approx(round(0.6 * size) / size)
        assert record.packed_bytes is not None and record.packed_bytes < record.dense_bytes
    small = [r for r in report.records if r.shape == (16, 3, 3, 3)]
    assert len(small) == 1 and not small[0].packed
    assert "weight_threshold" in small[0].reason
    data = report.to_dict()
    assert len(data["records"]) == len(report)
    assert data["totals"]["packed"] == 4
    assert data["totals"]["weights"] == len(report)
    assert data["totals"]["bytes_after"] < data["totals"]["dense_bytes"]
    assert {tuple(r["shape"]) for r in data["records"] if r["decision"] == "packed"} == {
        shape for _, shape in packed
    }
    json.dumps(data)


@pytest.mark.parametrize("target", TARGETS)
def test_float32_precision_keeps_fp32_values(net, target, tmp_path):
    traced, torch_weights = net
    main = convert(
        traced,
        target,
        tmp_path,
        ms.PRUNE_BY_MAGNITUDE,
        {"config": ms.MagnitudeConfig(target_sparsity=0.5)},
        precision=ct.precision.FLOAT32,
    )
    weights = weight_vars(main)
    for key, torch_weight in torch_weights.items():
        if key == SMALL_CONV_KEY:
            assert weights[key].op.op_type == "const"
            continue
        op = sparse_op_of(weights[key], target)
        assert op.nonzero_data.val.dtype == np.float32, key
        assert_bit_equal(dense_value(weights[key]), ref_magnitude(torch_weight, 0.5), str(key))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n, m", [(2, 4), (3, 8)])
def test_n_m_on_conv_and_linear_weights(net, target, n, m, tmp_path):
    traced, torch_weights = net
    report = ms.SparsityReport()
    config = ms.NMConfig(n=n, m=m, dim=1)
    main = convert(traced, target, tmp_path, ms.PRUNE_BY_MAGNITUDE, {"config": config, "report": report})
    weights = weight_vars(main)

    for key in (CONV_KEY, LINEAR_KEY):
        cast = torch_weights[key].astype(stored_dtype(key, target))
        sparse_op_of(weights[key], target)
        dense = dense_value(weights[key])
        assert_bit_equal(dense, ref_n_m(cast, n, m, dim=1), str(key))
        # along dim 1, every group of m consecutive elements has exactly n zeros
        groups = np.moveaxis(dense, 1, -1).reshape(-1, m)
        assert ((groups == 0).sum(axis=1) == n).all(), key
        kept = dense != 0
        assert_bit_equal(dense[kept], cast[kept], f"{key} kept values")

    # n:m applies by default to conv/linear weights only: the LSTM weights stay dense
    for key in LSTM_KEYS:
        assert weights[key].op.op_type == "const", key
        cast = torch_weights[key].astype(stored_dtype(key, target))
        assert_bit_equal(dense_value(weights[key]), cast, str(key))
    lstm_records = [r for r in report.records if r.consumer_types == ("lstm",) and len(r.shape) == 2 and r.shape[0] == 128]
    assert len(lstm_records) == 2
    assert all(not r.packed and "n_m" in r.reason for r in lstm_records)
    assert len(report.packed) == 2


@pytest.mark.parametrize("target", TARGETS)
def test_threshold_respects_minimum_sparsity(net, target, tmp_path):
    traced, torch_weights = net
    report = ms.SparsityReport()
    config = ms.ThresholdConfig(threshold=0.05, minimum_sparsity_percentile=0.35)
    main = convert(traced, target, tmp_path, ms.PRUNE_BY_THRESHOLD, {"config": config, "report": report})
    weights = weight_vars(main)
    decisions = {}
    for key, torch_weight in torch_weights.items():
        cast = torch_weight.astype(stored_dtype(key, target))
        if cast.size <= config.weight_threshold:
            decisions[key] = "small"
            assert weights[key].op.op_type == "const", key
            continue
        fraction = float(np.mean(np.abs(cast.astype(np.float64)) <= 0.05))
        if fraction >= 0.35:
            decisions[key] = "packed"
            sparse_op_of(weights[key], target)
            assert_bit_equal(dense_value(weights[key]), ref_threshold(cast, 0.05), str(key))
        else:
            decisions[key] = "dense"
            assert weights[key].op.op_type == "const", key
            assert_bit_equal(dense_value(weights[key]), cast, str(key))
    # both branches are exercised by this model (uniform init bounds 1/12, 1/8 and 1/sqrt(32))
    assert decisions[CONV_KEY] == decisions[LINEAR_KEY] == "packed"
    assert all(decisions[key] == "dense" for key in LSTM_KEYS)
    assert len(report.packed) == 2
    dense_records = [r for r in report.records if "minimum_sparsity_percentile" in r.reason]
    assert len(dense_records) == 2


@pytest.mark.parametrize("target", TARGETS)
def test_block_on_conv_and_linear_weights(net, target, tmp_path):
    traced, torch_weights = net
    config = ms.BlockConfig(target_sparsity=0.5, block_size=4, dim=0)
    main = convert(traced, target, tmp_path, ms.PRUNE_BY_MAGNITUDE, {"config": config})
    weights = weight_vars(main)
    for key in (CONV_KEY, LINEAR_KEY):
        cast = torch_weights[key].astype(stored_dtype(key, target))
        sparse_op_of(weights[key], target)
        dense = dense_value(weights[key])
        assert_bit_equal(dense, ref_block(cast, 0.5, 4, dim=0), str(key))
        blocks = (dense == 0).reshape(cast.shape[0] // 4, 4, -1)
        assert (blocks.all(axis=1) | ~blocks.any(axis=1)).all(), "blocks are zeroed whole"
        assert int(blocks.all(axis=1).sum()) == round(0.5 * blocks.shape[0] * blocks.shape[2])


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pass_name, options",
    [
        (ms.PRUNE_BY_THRESHOLD, None),
        (ms.PRUNE_BY_MAGNITUDE, {"config": ms.MagnitudeConfig(target_sparsity=0.5)}),
        (ms.SPARSE_PACK, None),
    ],
)
def test_below_ios16_raises(net, pass_name, options, tmp_path):
    traced, _ = net
    with pytest.raises(ValueError, match="minimum_deployment_target"):
        convert(traced, ct.target.iOS15, tmp_path, pass_name, options)


def test_magnitude_without_config_raises(net, tmp_path):
    traced, _ = net
    with pytest.raises(ValueError, match="config"):
        convert(traced, ct.target.iOS18, tmp_path, ms.PRUNE_BY_MAGNITUDE)
