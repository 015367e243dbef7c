"""Output-level quality metrics (mil_sparsity.quality) on evaluators given as plain functions."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mil_sparsity.quality import QualityReport, compare_evaluators, evaluator, row_cosines


def _fixed(outputs_per_sample):
    it = iter(outputs_per_sample)
    return lambda sample: next(it)


def test_identical_outputs_are_perfect():
    out = {"y": np.arange(12, dtype=np.float32).reshape(3, 4) - 5}
    report = compare_evaluators(lambda s: out, lambda s: out, [{}, {}])
    q = report["y"]
    assert q.relative_l2 == 0.0 and q.max_abs_error == 0.0 and math.isinf(q.snr_db)
    assert q.cosine == pytest.approx(1.0) and q.top1_agreement == 1.0
    assert report.samples == 2


def test_metrics_match_direct_formulas_over_samples():
    rng = np.random.default_rng(1)
    refs = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(3)]
    cands = [r + 0.1 * rng.standard_normal(r.shape).astype(np.float32) for r in refs]
    report = compare_evaluators(
        _fixed([{"y": r} for r in refs]), _fixed([{"y": c} for c in cands]), [{}] * 3
    )
    ref = np.concatenate(refs).astype(np.float64)
    cand = np.concatenate(cands).astype(np.float64)
    diff = cand - ref
    q = report["y"]
    assert q.relative_l2 == pytest.approx(np.linalg.norm(diff) / np.linalg.norm(ref), rel=1e-5)
    assert q.snr_db == pytest.approx(10 * np.log10((ref**2).sum() / (diff**2).sum()), rel=1e-5)
    assert q.max_abs_error == pytest.approx(np.abs(diff).max(), rel=1e-6)
    cos = (ref * cand).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(cand, axis=1)
    assert q.cosine == pytest.approx(cos.mean(), rel=1e-5)
    assert q.top1_agreement == pytest.approx(np.mean(ref.argmax(1) == cand.argmax(1)))


def test_top1_only_for_class_like_outputs():
    out = {"score": np.ones((3, 1), np.float32), "logits": np.eye(3, dtype=np.float32)}
    flipped = {"score": -np.ones((3, 1), np.float32), "logits": np.eye(3, dtype=np.float32)[::-1]}
    report = compare_evaluators(lambda s: out, lambda s: flipped, [{}])
    assert report["score"].top1_agreement is None
    assert report["score"].cosine == pytest.approx(-1.0)
    assert report["logits"].top1_agreement == pytest.approx(1 / 3)


def test_zero_vectors():
    zeros = np.zeros((2, 3), np.float32)
    report = compare_evaluators(lambda s: {"y": zeros}, lambda s: {"y": zeros}, [{}])
    assert report["y"].cosine == 1.0 and report["y"].relative_l2 == 0.0
    ones = np.ones((2, 3), np.float32)
    report = compare_evaluators(lambda s: {"y": zeros}, lambda s: {"y": ones}, [{}])
    assert report["y"].cosine == 0.0 and math.isinf(report["y"].relative_l2)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
               elements=st.floats(-100, 100, width=32))
)
def test_row_cosines_bounded_and_self_one(a):
    cos = row_cosines(a, a)
    norms = np.linalg.norm(a.astype(np.float64), axis=1)
    assert np.all(np.abs(cos) <= 1.0 + 1e-6)
    np.testing.assert_allclose(cos[norms > 1e-3], 1.0, rtol=1e-5)
    np.testing.assert_allclose(row_cosines(a, -a)[norms > 1e-3], -1.0, rtol=1e-5)


def test_report_dict_and_table():
    out = {"y": np.ones((2, 3), np.float32)}
    report = compare_evaluators(lambda s: out, lambda s: {"y": out["y"] * 2}, [{}])
    data = report.to_dict()
    assert data["samples"] == 1 and data["outputs"][0]["name"] == "y"
    assert data["outputs"][0]["shape"] == [2, 3]
    table = report.format_table()
    assert "rel_l2" in table and "y" in table and "2x3" in table
    assert isinstance(report, QualityReport)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least one input sample"):
        compare_evaluators(lambda s: {}, lambda s: {}, [])
    with pytest.raises(ValueError, match="outputs differ"):
        compare_evaluators(lambda s: {"a": np.ones(2)}, lambda s: {"b": np.ones(2)}, [{}])
    with pytest.raises(ValueError, match="shape"):
        compare_evaluators(lambda s: {"a": np.ones(2)}, lambda s: {"a": np.ones(3)}, [{}])
    with pytest.raises(ValueError, match="backend"):
        evaluator(object(), backend="tpu")


@pytest.mark.skipif(sys.platform == "darwin", reason="the Core ML runtime exists on macOS")
def test_coreml_backend_fails_clearly_off_macos():
    with pytest.raises(RuntimeError, match="only exists on macOS"):
        evaluator(object(), backend="coreml")
