"""Reconstruction (SparseGPT, ADMM) inside prune_by_magnitude: ``method`` on MagnitudeConfig and
NMConfig.

* configs: the ``method`` field (validation, dict round trip, not on BlockConfig, not with
  activation scoring);
* errors before anything changes: no calibration option, statistics without a Gram matrix, a
  non-finite Gram matrix, a conv_transpose / batched matmul weight, an n:m dim off the reduction
  axis;
* exact values against the kernels called directly on the weight as ``[out, in]`` (linear,
  matmul ``y`` const ``[in, out]`` and transposed, matmul ``x`` const), exact counts, the
  report's ``method``;
* a saved fp16 package: streaming bit-identical to PyMIL; during ct.convert.

The kernels themselves: test_kernels_reconstruction.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil.mil import Builder as mb

import mil_sparsity as ms
from mil_sparsity.calibration import collect_activation_stats
from mil_sparsity.kernels.reconstruction import admm, sparsegpt
from mil_sparsity.posthoc import load_model, load_program
from _mil_helpers import all_ops, one_pass, snapshot
from test_activation_scoring import by_name, pruned_weights, run

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

MAG = ms.PRUNE_BY_MAGNITUDE
KERNELS = {"sparsegpt": sparsegpt, "admm": admm}
# const -> transposed to [out, in] for the kernel
PRODUCTS = {"lin_w": False, "mm_y_w": True, "mm_yt_w": False, "mm_x_w": False}
INPUTS = {"seq": (6, 64), "seq3": (2, 3, 24)}


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"lin_w": (48, 64), "mm_y_w": (48, 40), "mm_yt_w": (24, 40), "mm_x_w": (20, 24), "mm_b_w": (2, 24, 16)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def program(target: Any = ct.target.iOS18, w: dict[str, np.ndarray] | None = None, batched: bool = False) -> Any:
    w = weights() if w is None else w
    specs = [mb.TensorSpec(shape=shape) for shape in INPUTS.values()]

    @mb.program(input_specs=specs, opset_version=target)
    def prog(seq: Any, seq3: Any) -> Any:
        const = {name: mb.const(val=value, name=name) for name, value in w.items()}
        lin = mb.linear(x=seq, weight=const["lin_w"], name="lin")
        mm_y = mb.matmul(x=lin, y=const["mm_y_w"], name="mm_y")
        mm_yt = mb.matmul(x=mm_y, y=const["mm_yt_w"], transpose_y=True, name="mm_yt")
        mm_x = mb.matmul(x=const["mm_x_w"], y=mb.transpose(x=mm_yt, perm=[1, 0]), name="mm_x")
        outputs = [mm_x]
        if batched:
            outputs.append(mb.matmul(x=seq3, y=const["mm_b_w"], name="mm_b"))
        return tuple(outputs)

    return prog


def samples(count: int = 4, seed: int = 5) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.2, 3.0, 64, dtype=np.float32)
    return [
        {"seq": (rng.standard_normal(INPUTS["seq"]) * scale).astype(np.float32),
         "seq3": rng.standard_normal(INPUTS["seq3"]).astype(np.float32)}
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def gram_stats() -> ms.ActivationStats:
    return collect_activation_stats(program(), samples(), progress=False, gram=True)


def gram_of(stats: ms.ActivationStats, name: str) -> np.ndarray:
    entry = stats.get(name)
    assert entry is not None and entry.gram is not None
    return entry.gram


def expected(dense: np.ndarray, gram: np.ndarray, transposed: bool, method: str, **pattern: Any) -> np.ndarray:
    rows = dense.T if transposed else dense
    values = KERNELS[method](np.ascontiguousarray(rows), gram, **pattern).values
    return np.ascontiguousarray(values.T if transposed else values)


# =============================================================================================
# configs
# =============================================================================================
def test_method_field() -> None:
    assert ms.MagnitudeConfig(0.5).method == "prune" and ms.NMConfig(2, 4).method == "prune"
    for cls, args in ((ms.MagnitudeConfig, (0.5,)), (ms.NMConfig, (2, 4))):
        config = cls(*args, method="sparsegpt")
        assert ms.config_from_dict(ms.config_to_dict(config)) == config
        assert ms.config_to_dict(config)["method"] == "sparsegpt"
        with pytest.raises(ValueError, match="method"):
            cls(*args, method="obs")
        with pytest.raises(ValueError, match="scoring='activation' cannot be combined with method='admm'"):
            cls(*args, method="admm", scoring="activation")
    with pytest.raises(TypeError, match="method"):
        ms.BlockConfig(0.5, 4, method="sparsegpt")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="BlockConfig has no 'method' .* prune unstructured .* or n:m"):
        ms.config_from_dict({"kind": "block", "target_sparsity": 0.5, "block_size": 4, "method": "admm"})


# =============================================================================================
# errors before anything changes
# =============================================================================================
def test_reconstruction_without_calibration_option_raises() -> None:
    prog = program()
    before = snapshot(prog)
    with pytest.raises(ValueError, match="method='sparsegpt', which needs the pass option 'calibration'"):
        run(prog, ms.MagnitudeConfig(0.5, weight_threshold=0, method="sparsegpt"))
    assert snapshot(prog) == before


def test_statistics_without_a_gram_raise_naming_the_weight() -> None:
    stats = collect_activation_stats(program(), samples(), progress=False)
    prog = program()
    before = snapshot(prog)
    with pytest.raises(ValueError, match="const 'lin_w' .* no Gram matrix; collect them with .*gram=True"):
        run(prog, ms.NMConfig(2, 4, weight_threshold=0, method="admm"), stats)
    assert snapshot(prog) == before


def test_non_finite_gram_raises_naming_the_weight(gram_stats: ms.ActivationStats) -> None:
    stats = gram_stats.merge(ms.ActivationStats())
    entry = stats.get("mm_y_w")
    assert entry is not None and entry.gram is not None
    entry.gram[3, 5] = np.nan
    prog = program()
    before = snapshot(prog)
    with pytest.raises(ValueError, match="const 'mm_y_w' .* non-finite entries"):
        run(prog, ms.MagnitudeConfig(0.5, weight_threshold=0, method="sparsegpt"), stats)
    assert snapshot(prog) == before


def test_batched_matmul_and_off_axis_n_m_raise() -> None:
    prog = program(batched=True)
    stats = collect_activation_stats(prog, samples(), progress=False, gram=True)
    before = snapshot(prog)
    with pytest.raises(ValueError, match="'mm_b_w' .* rank-3 matmul operand"):
        run(prog, ms.MagnitudeConfig(0.5, weight_threshold=0, method="sparsegpt"), stats)
    with pytest.raises(ValueError, match="'lin_w'.*NMConfig.dim=0 .* allowed: dim=None or dim=1"):
        run(prog, ms.OpSelector(op_name_configs={"lin_w": ms.NMConfig(2, 4, dim=0, weight_threshold=0, method="admm")}), stats)
    assert snapshot(prog) == before


# =============================================================================================
# exact values, counts, report
# =============================================================================================
@pytest.mark.parametrize("method", ["sparsegpt", "admm"])
@pytest.mark.parametrize("pattern", [{"target_sparsity": 0.5}, {"target_sparsity": 0.7}, {"n": 2, "m": 4}, {"n": 4, "m": 8}])
def test_values_equal_the_kernel_on_each_weight(method: str, pattern: dict[str, Any], gram_stats: ms.ActivationStats) -> None:
    w = weights()
    if "n" in pattern:
        config: Any = ms.NMConfig(pattern["n"], pattern["m"], weight_threshold=0, method=method)
    else:
        config = ms.MagnitudeConfig(pattern["target_sparsity"], weight_threshold=0, method=method)
    prog = program(w=w)
    report = run(prog, config, gram_stats)
    pruned = pruned_weights(prog)
    assert sorted(pruned) == sorted(PRODUCTS)
    records = by_name(report)
    for name, transposed in PRODUCTS.items():
        want = expected(w[name], gram_of(gram_stats, name), transposed, method, **pattern)
        assert pruned[name].tobytes() == want.tobytes(), name
        zeros = int(np.count_nonzero(pruned[name] == 0))
        if "n" in pattern:
            rows = pruned[name].T if transposed else pruned[name]
            groups = rows.reshape(rows.shape[0], -1, pattern["m"])
            assert np.all(np.count_nonzero(groups == 0, axis=-1) == pattern["n"]), name
        else:
            assert zeros == round(pattern["target_sparsity"] * w[name].size), name
        assert not np.array_equal(pruned[name][pruned[name] != 0], w[name][pruned[name] != 0]), name  # updated
        assert records[name].method == method and records[name].scoring == "magnitude"
    assert method in report.format_table()


def test_reconstruction_is_closer_to_the_dense_outputs_than_pruning(gram_stats: ms.ActivationStats) -> None:
    w = weights()
    x = np.concatenate([sample["seq"] for sample in samples()])
    dense = x @ w["lin_w"].T
    errors = {}
    for method in ("prune", "sparsegpt", "admm"):
        prog = program(w=w)
        run(prog, ms.OpSelector(op_name_configs={"lin_w": ms.MagnitudeConfig(0.6, weight_threshold=0, method=method)}), gram_stats)
        errors[method] = float(np.linalg.norm(x @ pruned_weights(prog)["lin_w"].T - dense))
    assert errors["sparsegpt"] < 0.8 * errors["prune"] and errors["admm"] < 0.8 * errors["prune"], errors


# =============================================================================================
# saved package: streaming = PyMIL; ct.convert
# =============================================================================================
@pytest.fixture(scope="module")
def package(tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("recon") / "products.mlpackage"
    ct.convert(program(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18).save(str(path))
    return path


@pytest.mark.parametrize("config", [
    ms.MagnitudeConfig(0.5, weight_threshold=0, method="sparsegpt"),
    ms.NMConfig(2, 4, weight_threshold=0, method="admm"),
], ids=["sparsegpt-50", "admm-2:4"])
def test_streaming_equals_pymil(config: Any, package: Path, tmp_path: Path) -> None:
    stats_path = tmp_path / "stats.npz"
    collect_activation_stats(package, samples(), progress=False, gram=True).save(stats_path)
    pipeline = one_pass(MAG, config=config, calibration=str(stats_path))
    streamed, pymil = tmp_path / "streamed.mlpackage", tmp_path / "pymil.mlpackage"
    stream_report, pymil_report = ms.SparsityReport(), ms.SparsityReport()
    ms.apply_pipeline(package, pipeline, streaming=True, report=stream_report).save(str(streamed))
    ms.apply_pipeline(package, pipeline, streaming=False, report=pymil_report).save(str(pymil))
    assert [r.to_dict() for r in stream_report] == [r.to_dict() for r in pymil_report]
    assert {r.method for r in stream_report.packed} == {config.method}
    a, b = pruned_weights(load_program(load_model(streamed))), pruned_weights(load_program(load_model(pymil)))
    assert sorted(a) == sorted(b) and len(a) == len(PRODUCTS)
    for name in a:
        assert a[name].dtype == np.float16 and a[name].tobytes() == b[name].tobytes(), name


def test_during_ct_convert() -> None:
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(32, 48)
            self.fc2 = torch.nn.Linear(48, 16)

        def forward(self, x: Any) -> Any:
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    traced = torch.jit.trace(Net().eval(), torch.randn(4, 32))
    inputs = [ct.TensorType(name="x", shape=(4, 32))]

    def convert(pipeline: Any) -> Any:
        return ct.convert(traced, inputs=inputs, convert_to="mlprogram",
                          minimum_deployment_target=ct.target.iOS16, pass_pipeline=pipeline)

    dense = convert(ct.PassPipeline.DEFAULT)
    rng = np.random.default_rng(0)
    stats = collect_activation_stats(dense, [{"x": rng.standard_normal((4, 32)).astype(np.float32)} for _ in range(8)],
                                     progress=False, gram=True)
    dense_consts = {op.name: op.outputs[0].val for op in all_ops(load_program(dense)) if op.op_type == "const"}
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(MAG)
    report = ms.SparsityReport()
    pipeline.set_options(MAG, {"config": ms.NMConfig(2, 4, weight_threshold=0, method="sparsegpt"),
                               "calibration": stats, "report": report})
    pruned = pruned_weights(load_program(convert(pipeline)))
    assert len(pruned) == 2 and {r.name for r in report.packed} == set(pruned)
    for name, value in pruned.items():
        want = expected(dense_consts[name], gram_of(stats, name), False, "sparsegpt", n=2, m=4)
        assert value.tobytes() == want.tobytes(), name


# =============================================================================================
# hard statistics: dead channels, singular Gram matrices, fp16 overflow
# =============================================================================================
def handler_context(gram: np.ndarray) -> Any:
    from mil_sparsity.plan.scoring import GramLayout, ScoreContext, scale_digest

    return ScoreContext(gram=gram, gram_layout=GramLayout(), gram_digest=scale_digest(gram))


@pytest.mark.parametrize("method", ["sparsegpt", "admm"])
def test_dead_input_channels_are_pruned_first(method: str) -> None:
    """Channels that never fire (a zero Gram row) cannot change the output: their weights go."""
    dead = [0, 5, 17, 40]
    feeds = samples()
    for sample in feeds:
        sample["seq"][:, dead] = 0
    stats = collect_activation_stats(program(), feeds, progress=False, gram=True)
    assert np.all(gram_of(stats, "lin_w")[dead] == 0)
    w = weights()
    prog = program(w=w)
    run(prog, ms.OpSelector(op_name_configs={"lin_w": ms.MagnitudeConfig(0.5, weight_threshold=0, method=method)}), stats)
    pruned = pruned_weights(prog)["lin_w"]
    assert np.all(pruned[:, dead] == 0)
    assert np.count_nonzero(pruned == 0) == w["lin_w"].size // 2 and np.all(np.isfinite(pruned))


@pytest.mark.parametrize("method", ["sparsegpt", "admm"])
def test_singular_gram_is_dampened(method: str) -> None:
    """Fewer calibration rows than channels and two identical channels: X^T X is singular; the
    dampening keeps the factorisation finite and the count exact."""
    feed = samples(count=1)
    feed[0]["seq"][:, 1] = feed[0]["seq"][:, 0]
    stats = collect_activation_stats(program(), feed, progress=False, gram=True)
    gram = gram_of(stats, "lin_w")
    eigenvalues = np.linalg.eigvalsh(gram)
    assert np.count_nonzero(eigenvalues > 1e-5 * eigenvalues.max()) <= INPUTS["seq"][0] < gram.shape[0]
    w = weights()
    prog = program(w=w)
    run(prog, ms.OpSelector(op_name_configs={"lin_w": ms.NMConfig(2, 4, weight_threshold=0, method=method)}), stats)
    pruned = pruned_weights(prog)["lin_w"]
    assert np.all(np.isfinite(pruned))
    assert np.all(np.count_nonzero(pruned.reshape(48, -1, 4) == 0, axis=-1) == 2)
    x = feed[0]["seq"]
    magnitude = program(w=w)
    run(magnitude, ms.OpSelector(op_name_configs={"lin_w": ms.NMConfig(2, 4, weight_threshold=0)}), stats)
    error = np.linalg.norm(x @ (pruned - w["lin_w"]).T)
    assert error < np.linalg.norm(x @ (pruned_weights(magnitude)["lin_w"] - w["lin_w"]).T)


@pytest.mark.parametrize("method", ["sparsegpt", "admm"])
def test_fp16_update_that_overflows_is_clipped(method: str) -> None:
    """Identical channels move a pruned weight's mass onto the kept ones: 2 x 60000 does not fit
    float16; the stored values are clipped to +-65504, finite, and the count holds."""
    from mil_sparsity.plan.handlers import run_handler

    cols = 16
    gram = np.ones((cols, cols)) * 100.0
    weight = np.full((8, cols), 60000.0, dtype=np.float16)
    weight[:, ::2] = 59000.0
    sparse = run_handler(weight, ms.MagnitudeConfig(0.5, weight_threshold=0, method=method), handler_context(gram))
    values = sparse.nonzero_data
    assert values.dtype == np.float16 and np.all(np.isfinite(values))
    assert values.size == weight.size // 2
    assert float(values.max()) == float(np.finfo(np.float16).max)


# =============================================================================================
# command line
# =============================================================================================
def test_cli_method_and_calibration(package: Path, tmp_path: Path) -> None:
    from mil_sparsity.cli import main

    stats_path = tmp_path / "stats.npz"
    assert main(["calibrate", str(package), "-o", str(stats_path), "--gram", "--random-inputs", "3"]) == 0
    out = tmp_path / "out.mlpackage"
    assert main(["prune", str(package), "-o", str(out), "--n-m", "2:4", "--weight-threshold", "0",
                 "--method", "sparsegpt", "--calibration", str(stats_path)]) == 0
    config = ms.NMConfig(2, 4, weight_threshold=0, method="sparsegpt")
    expected_model = ms.apply_pipeline(package, one_pass(MAG, config=config, calibration=str(stats_path)))
    want = pruned_weights(load_program(load_model(expected_model)))
    got = pruned_weights(load_program(load_model(out)))
    assert len(got) == len(PRODUCTS) and {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in want.items()}
    other = tmp_path / "other.mlpackage"
    assert main(["prune", str(package), "-o", str(other), "--target-sparsity", "0.5", "--method", "admm"]) == 2
    assert main(["prune", str(package), "-o", str(other), "--target-sparsity", "0.5", "--block-size", "4",
                 "--method", "admm", "--calibration", str(stats_path)]) == 2
    assert main(["prune", str(package), "-o", str(other), "--threshold", "0.1", "--method", "admm",
                 "--calibration", str(stats_path)]) == 2
    plain = tmp_path / "plain.npz"
    assert main(["calibrate", str(package), "-o", str(plain), "--random-inputs", "3"]) == 0
    assert main(["prune", str(package), "-o", str(other), "--target-sparsity", "0.5", "--method", "admm",
                 "--calibration", str(plain)]) not in (0, 2)
    assert not other.exists()


def test_sweep_with_method_and_calibration(package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mil_sparsity.cli import main
    from mil_sparsity.sweep import SweepArgumentError, sweep_points

    stats = collect_activation_stats(package, samples(), progress=False, gram=True)
    found = sweep_points(["unstructured", "n:m:2:4"], [0.5], weight_threshold=0, method="admm")
    assert [point.config.method for point in found] == ["admm", "admm"]  # type: ignore[union-attr]
    result = ms.sweep(package, found, calibration=stats, samples=samples(2), progress=False)
    plain = ms.sweep(package, sweep_points(["unstructured", "n:m:2:4"], [0.5], weight_threshold=0),
                     samples=samples(2), progress=False)
    for row, baseline in zip(result.rows, plain.rows):
        assert row.sparsity == baseline.sparsity == 0.5
        assert row.output_quality is not None and baseline.output_quality is not None
        assert row.output_quality.worst_relative_l2 < baseline.output_quality.worst_relative_l2  # in-sample
    with pytest.raises(ValueError, match="needs the pass option 'calibration'"):
        ms.sweep(package, found, progress=False)
    with pytest.raises(SweepArgumentError, match="block configs have no method"):
        sweep_points(["block:4"], [0.5], method="sparsegpt")
    stats_path = tmp_path / "stats.npz"
    stats.save(stats_path)
    assert main(["sweep", str(package), "--patterns", "n:m:2:4", "--method", "sparsegpt"]) == 2
    capsys.readouterr()
    assert main(["sweep", str(package), "--patterns", "n:m:2:4", "--method", "sparsegpt", "--weight-threshold", "0",
                 "--calibration", str(stats_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["config"]["method"] for row in out["runs"]] == ["sparsegpt"]
