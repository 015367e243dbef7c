"""mil_sparsity.sweep: points from pattern names, and measurements that match what prune writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import attrs
import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types
from coremltools.converters.mil.mil.program import Program

import mil_sparsity as ms
from _cli_support import hash_tree
from mil_sparsity.inspect_model import materialize, package_size, weight_sources
from mil_sparsity import quality as quality_module
from mil_sparsity.posthoc import load_program
from mil_sparsity.quality import QualityReport, ReferenceOutputs, compare
from mil_sparsity.samples import input_specs, random_samples
from mil_sparsity.sweep import SweepArgumentError, SweepConfig, SweepPoint, sweep_points

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SPARSE_OP = "constexpr_sparse_to_dense"


def build(target: Any = ct.target.iOS18, dtype: Any = np.float16, seed: int = 0) -> Any:
    """conv 32x8x3x3 -> flatten -> linear 64x512 -> relu -> linear 48x64, weights in ``dtype``."""
    rng = np.random.default_rng(seed)
    conv_w = rng.standard_normal((32, 8, 3, 3)).astype(dtype)
    fc1_w = rng.standard_normal((64, 512)).astype(dtype)
    fc2_w = rng.standard_normal((48, 64)).astype(dtype)
    fc1_b = rng.standard_normal(64).astype(dtype)
    mil_dtype = types.fp16 if dtype == np.float16 else types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 6, 6), dtype=mil_dtype)], opset_version=target)
    def prog(x: Any) -> Any:
        y = mb.conv(x=x, weight=conv_w, name="conv1")
        y = mb.reshape(x=y, shape=[1, 32 * 16])
        y = mb.linear(x=y, weight=fc1_w, bias=fc1_b, name="fc1")
        y = mb.relu(x=y)
        return mb.linear(x=y, weight=fc2_w, name="fc2")

    precision = ct.precision.FLOAT16 if dtype == np.float16 else ct.precision.FLOAT32
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                      compute_precision=precision)


@pytest.fixture(scope="module")
def fp16_model() -> Any:
    return build()


# ----- points ---------------------------------------------------------------------------------
def test_points_in_order_once_each_with_n_m_fixed() -> None:
    points = sweep_points(["unstructured", "block:4", "n:m:3:4", "Unstructured", "block:4"], [0.5, 0.75])
    assert [(p.pattern, p.sparsity) for p in points] == [
        ("unstructured", 0.5), ("unstructured", 0.75), ("block:4", 0.5), ("block:4", 0.75),
        ("n:m:3:4", 0.75),
    ]
    assert points[0].config == ms.MagnitudeConfig(target_sparsity=0.5)
    assert points[3].config == ms.BlockConfig(target_sparsity=0.75, block_size=4)
    assert points[4].config == ms.NMConfig(n=3, m=4)
    with_dim = sweep_points(["block:2", "n:m:1:2"], [0.25], dim=0, weight_threshold=10)
    assert [p.config for p in with_dim] == [
        ms.BlockConfig(target_sparsity=0.25, block_size=2, dim=0, weight_threshold=10),
        ms.NMConfig(n=1, m=2, dim=0, weight_threshold=10),
    ]


BAD_POINTS = [
    (["block:x"], [0.5], None, "patterns", "unknown pattern 'block:x'"),
    (["n:m:3"], [0.5], None, "patterns", "unknown pattern"),
    (["block:1"], [0.5], None, "patterns block:1", "block_size must be an int >= 2"),
    (["n:m:5:4"], [0.5], None, "patterns n:m:5:4", "n must be <= NMConfig.m"),
    (["n:m:3:4"], [1.5], None, "sparsities", "must be in [0, 1]"),
    (["unstructured"], [-0.1], None, "sparsities", "must be in [0, 1]"),
    (["unstructured"], [0.5], 1, "dim", "only block:B and n:m:N:M patterns have an axis"),
]


@pytest.mark.parametrize("patterns, levels, dim, argument, message", BAD_POINTS,
                         ids=[f"{p[0][0]}-{p[3]}" for p in BAD_POINTS])
def test_bad_points_name_the_argument(
    patterns: list[str], levels: list[float], dim: Optional[int], argument: str, message: str
) -> None:
    with pytest.raises(SweepArgumentError) as raised:
        sweep_points(patterns, levels, dim=dim)
    assert isinstance(raised.value, ValueError)
    assert raised.value.argument == argument
    assert message in raised.value.detail and str(raised.value).startswith(f"{argument}: ")


def test_point_of_a_bare_config() -> None:
    assert SweepPoint.of(ms.MagnitudeConfig(target_sparsity=0.3)) == SweepPoint(
        "unstructured", 0.3, ms.MagnitudeConfig(target_sparsity=0.3))
    assert SweepPoint.of(ms.NMConfig(n=2, m=4)).pattern == "n:m:2:4"
    assert SweepPoint.of(ms.NMConfig(n=2, m=4)).sparsity == 0.5
    assert SweepPoint.of(ms.BlockConfig(target_sparsity=0.1, block_size=8)).pattern == "block:8"
    with pytest.raises(TypeError, match="ThresholdConfig"):
        SweepPoint.of(ms.ThresholdConfig())  # type: ignore[arg-type]


# ----- measurements ---------------------------------------------------------------------------
def pruned_by_prune(mlmodel: Any, config: Any) -> tuple[dict[str, np.ndarray], int, int]:
    """What ``prune`` writes for ``config``: {reader.input: dense pruned value}, weight bytes,
    and how many weights its report lists."""
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": ms.OpSelector(global_config=config)})
    report = ms.SparsityReport()
    prog = load_program(ms.apply_pipeline(mlmodel, pipeline, report=report))
    values = {}
    for op in prog.functions["main"].operations:
        if op.op_type == SPARSE_OP:
            reader = op.outputs[0].child_ops[0]
            const_name = next(name for name, var in reader.inputs.items() if var is op.outputs[0])
            values[f"{reader.name}.{const_name}"] = materialize(op)
    return values, sum(source.stored_bytes() for source in weight_sources(prog, 0)), len(report)


def dense_weights(mlmodel: Any) -> tuple[dict[str, np.ndarray], int]:
    """{reader.weight: value} of the conv and linear weights, and bytes of every float const."""
    prog = load_program(mlmodel)
    found = {}
    float_bytes = 0
    for op in prog.functions["main"].operations:
        value = op.outputs[0].val if op.op_type == "const" else None
        if isinstance(value, np.ndarray) and value.dtype in (np.float16, np.float32):
            float_bytes += value.nbytes
        if op.op_type in ("conv", "linear"):
            found[f"{op.name}.weight"] = np.asarray(op.inputs["weight"].val)
    return found, float_bytes


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
def test_rows_measure_what_prune_writes(dtype: Any) -> None:
    mlmodel = build(dtype=dtype, seed=1)
    points = sweep_points(["unstructured", "block:4", "n:m:2:4"], [0.3, 0.8])
    result = ms.sweep(mlmodel, points)
    originals, float_bytes = dense_weights(mlmodel)
    assert result.original_bytes == float_bytes
    assert [(row.pattern, row.sparsity) for row in result.rows] == [(p.pattern, p.sparsity) for p in points]
    for row in result.rows:
        pruned, stored, considered = pruned_by_prune(mlmodel, row.config)
        assert row.model_bytes == stored
        assert row.packed == len(pruned) == 3 and row.considered == considered
        assert row.size_ratio == pytest.approx(stored / result.original_bytes)
        error_sq = sum(np.sum((originals[k].astype(np.float64) - v.astype(np.float64)) ** 2)
                       for k, v in pruned.items())
        norm_sq = sum(np.sum(originals[k].astype(np.float64) ** 2) for k in pruned)
        assert row.relative_error == pytest.approx(np.sqrt(error_sq / norm_sq), rel=1e-9)
        assert len(row.layers) == 3
        assert row.worst is not None and row.worst.relative_error == max(l.relative_error for l in row.layers)
        assert row.quality is None
    by_point = {(row.pattern, row.sparsity): row for row in result.rows}
    assert by_point[("unstructured", 0.8)].model_bytes < by_point[("unstructured", 0.3)].model_bytes
    assert by_point[("unstructured", 0.3)].relative_error < by_point[("unstructured", 0.8)].relative_error


def test_default_points_path_input_and_model_untouched(fp16_model: Any, tmp_path: Path) -> None:
    path = tmp_path / "m.mlpackage"
    fp16_model.save(str(path))
    before = hash_tree(path)
    result = ms.sweep(str(path))
    assert hash_tree(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]
    assert [(row.pattern, row.sparsity) for row in result.rows] == [
        ("unstructured", 0.5), ("unstructured", 0.75), ("unstructured", 0.9)]
    assert result.model == str(path) and result.package_bytes == package_size(path)
    for row in result.rows:
        assert row.est_package_bytes == result.package_bytes - result.original_bytes + row.model_bytes
    data = json.loads(json.dumps(result.to_dict()))
    assert data["original"] == {"model_bytes": result.original_bytes, "package_bytes": result.package_bytes}
    assert [run["config"]["kind"] for run in data["runs"]] == ["magnitude"] * 3
    assert all(run["quality"] is None for run in data["runs"])
    table = result.format_table().splitlines()
    assert table[1].split()[0] == "original"
    assert [line.split()[:2] for line in table[2:5]] == [
        ["unstructured", "0.500"], ["unstructured", "0.750"], ["unstructured", "0.900"]]
    assert f"package on disk now: {result.package_bytes:,} bytes" in table[-2]


@attrs.frozen
class SparseOpCount:
    sparse_ops: int

    def to_dict(self) -> dict[str, Any]:
        return {"sparse_ops": self.sparse_ops}


def test_quality_gets_each_pruned_program(fp16_model: Any) -> None:
    seen: list[int] = []

    def quality(prog: Any) -> SparseOpCount:
        count = sum(op.op_type == SPARSE_OP for op in prog.functions["main"].operations)
        seen.append(count)
        return SparseOpCount(count)

    # weights of 2304 (conv), 32768 and 3072 elements: the second config leaves the conv dense
    configs: list[SweepConfig] = [
        ms.MagnitudeConfig(target_sparsity=0.5), ms.NMConfig(n=1, m=2, weight_threshold=2500)
    ]
    result = ms.sweep(fp16_model, configs, quality=quality)
    assert seen == [3, 2]
    assert [row.quality for row in result.rows] == [SparseOpCount(3), SparseOpCount(2)]
    assert result.rows[1].to_dict()["quality"] == {"sparse_ops": 2}


def test_opsets_older_than_ios16_raise() -> None:
    with pytest.raises(ValueError, match="targets iOS15"):
        ms.sweep(build(target=ct.target.iOS15), [ms.MagnitudeConfig(target_sparsity=0.5)])


# ----- output quality (samples=) --------------------------------------------------------------
def pruned_model(mlmodel: Any, config: Any) -> Any:
    """The MLModel ``prune`` writes for ``config`` (apply_pipeline, the library path)."""
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": ms.OpSelector(global_config=config)})
    return ms.apply_pipeline(mlmodel, pipeline)


def test_samples_give_each_row_the_quality_compare_reports(
    fp16_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = random_samples(input_specs(fp16_model), 3, seed=4)
    configs: list[SweepConfig] = [ms.MagnitudeConfig(target_sparsity=0.5), ms.NMConfig(n=3, m=4)]
    evaluated: list[Any] = []
    real_evaluator = quality_module.evaluator

    def counting(model: Any, **kwargs: Any) -> Any:
        evaluated.append(model)
        return real_evaluator(model, **kwargs)

    monkeypatch.setattr(quality_module, "evaluator", counting)
    result = ms.sweep(fp16_model, configs, samples=samples)
    # the original once, then one pruned program per point
    assert [isinstance(model, Program) for model in evaluated] == [False, True, True]
    monkeypatch.undo()
    for row, config in zip(result.rows, configs):
        expected = compare(fp16_model, pruned_model(fp16_model, config), samples)
        assert isinstance(row.quality, QualityReport) and row.output_quality is row.quality
        assert row.quality == expected
        assert row.to_dict()["quality"] == expected.to_dict()
        assert 0 < expected.worst_relative_l2 < 1
    table = result.format_table()
    assert "out rel.L2" in table and "on 3 sample(s)" in table
    line = next(line for line in table.splitlines() if line.startswith("n:m:3:4"))
    assert f"{result.rows[1].quality.worst()['relative_l2']:.4f}" in line.split()
    reused = ReferenceOutputs.evaluate(fp16_model, samples)
    again = ms.sweep(fp16_model, configs[:1], samples=reused)
    assert again.rows[0].quality == result.rows[0].quality


def test_samples_errors(fp16_model: Any) -> None:
    samples = random_samples(input_specs(fp16_model), 1)
    point = [ms.MagnitudeConfig(target_sparsity=0.5)]
    with pytest.raises(ValueError, match="samples and quality: give one"):
        ms.sweep(fp16_model, point, samples=samples, quality=lambda prog: SparseOpCount(0))
    with pytest.raises(ValueError, match="at least one input sample"):
        ms.sweep(fp16_model, point, samples=[])
    with pytest.raises(ValueError, match="input 'x'.*rank"):
        ms.sweep(fp16_model, point, samples=[{"x": np.zeros((8, 6, 6), np.float16)}])
    with pytest.raises(ValueError, match="function_name: 'nope'"):
        ms.sweep(fp16_model, point, samples=samples, function_name="nope")
    with pytest.raises(ValueError, match="backend must be one of"):
        ms.sweep(fp16_model, point, samples=samples, backend="tpu")
    if sys.platform != "darwin":
        with pytest.raises(RuntimeError, match="only exists on macOS"):
            ms.sweep(fp16_model, point, samples=samples, backend="coreml")
