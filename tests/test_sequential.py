"""Sequential calibration (``collect_activation_stats(..., sequential=config)``): each weight's
statistics from the model with the weights before it already pruned.

On a 4-layer MLP (MIL builder, fp32, iOS18, saved as a package):

* the first weight's statistics equal the ordinary ones (nothing is pruned before it);
* a later weight's Gram matrix and sums equal those computed by hand (numpy) from the
  activations of the model whose earlier weights hold the values ``prune_weights`` stores;
* q/k/v-like weights reading one activation share a wave; the waves follow the data flow;
* pruning with sequential statistics brings the output closer to the dense model's on the
  calibration data than pruning with ordinary statistics;
* ``prune_weights`` with sequential statistics: streaming bit-identical to PyMIL;
* mixed configs (a magnitude-pruned weight before reconstructed ones is overridden too),
  activation scoring (sequential Wanda), and the errors;
* ``mil-sparsity calibrate --sequential CONFIG``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb

import mil_sparsity as ms
from mil_sparsity.calibration.sequential import TopLevel, waves, _targets, check_sequential_config
from mil_sparsity.posthoc import load_model, load_program
from test_activation_scoring import pruned_weights, run

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

SHAPES = {"w0": (64, 32), "w1": (64, 64), "w2": (48, 64), "w3": (16, 48)}
NAMES = list(SHAPES)
ROWS = 32


def dense_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32) for name, shape in SHAPES.items()}


def dead_channel_weights() -> dict[str, np.ndarray]:
    """:func:`dense_weights` with half of w0's rows scaled by 1e-3, so that magnitude pruning at
    50% zeroes (nearly all of) them, and the w1 columns they feed scaled by 1e3, so that their
    channels matter in the dense model: after w0 is pruned they are dead."""
    w = dense_weights()
    w["w0"][::2] *= np.float32(1e-3)
    w["w1"][:, ::2] *= np.float32(1e3)
    return w


def mlp(w: dict[str, np.ndarray] | None = None) -> Any:
    """x -> linear(w0) -> relu -> linear(w1) -> relu -> linear(w2) -> relu -> linear(w3)."""
    w = dense_weights() if w is None else w

    @mb.program(input_specs=[mb.TensorSpec(shape=(ROWS, 32))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        h = x
        for index, name in enumerate(NAMES):
            h = mb.linear(x=h, weight=mb.const(val=w[name], name=name), name=f"h{index}")
            if index < len(NAMES) - 1:
                h = mb.relu(x=h, name=f"r{index}")
        return h

    return prog


def forward(x: np.ndarray, w: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The input of every linear, then the output (numpy)."""
    inputs, h = [], x
    for index, name in enumerate(NAMES):
        inputs.append(h)
        h = h @ w[name].T
        if index < len(NAMES) - 1:
            h = np.maximum(h, 0)
    return inputs + [h]


def samples(count: int = 8, seed: int = 5) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.2, 3.0, 32, dtype=np.float32)
    return [{"x": (rng.standard_normal((ROWS, 32)) * scale).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module")
def package(tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("seq") / "mlp.mlpackage"
    ct.convert(mlp(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
               compute_precision=ct.precision.FLOAT32).save(str(path))
    return path


ADMM = ms.MagnitudeConfig(0.6, weight_threshold=0, method="admm")
SPARSEGPT_24 = ms.NMConfig(2, 4, weight_threshold=0, method="sparsegpt")


@pytest.fixture(scope="module")
def ordinary(package: Path) -> ms.ActivationStats:
    return ms.collect_activation_stats(package, samples(), gram=True, progress=False)


def sequential(package: Path, config: Any) -> ms.ActivationStats:
    return ms.collect_activation_stats(package, samples(), gram=True, sequential=config, progress=False)


def stored(model: Any) -> dict[str, np.ndarray]:
    """Weight name -> the value the pruned model holds (dense ones included)."""
    prog = load_program(load_model(model) if isinstance(model, (str, Path)) else model)
    values = dense_weights()
    values.update(pruned_weights(prog))
    return values


@pytest.mark.parametrize("config", [ADMM, SPARSEGPT_24], ids=["admm-60%", "sparsegpt-2:4"])
def test_first_weight_as_ordinary_later_ones_from_the_pruned_model(
    package: Path, ordinary: ms.ActivationStats, config: Any
) -> None:
    stats = sequential(package, config)
    assert sorted(key for _, key in stats) == NAMES
    first, plain = stats.get("w0"), ordinary.get("w0")
    assert first is not None and plain is not None and first.gram is not None and plain.gram is not None
    np.testing.assert_array_equal(first.gram, plain.gram)
    np.testing.assert_array_equal(first.sum_squares, plain.sum_squares)
    # by hand: the activations of the model holding what prune_weights stores
    values = stored(ms.prune_weights(package, config, calibration=stats))
    assert all(not np.array_equal(values[name], dense_weights()[name]) for name in NAMES)
    for index, name in enumerate(NAMES[1:], start=1):
        xs = [forward(sample["x"].astype(np.float64), values)[index] for sample in samples()]
        gram = sum(x.T @ x for x in xs)
        entry, dense_entry = stats.get(name), ordinary.get(name)
        assert entry is not None and dense_entry is not None and entry.gram is not None
        assert entry.rows == len(xs) * ROWS
        np.testing.assert_allclose(entry.gram, gram, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(entry.sum_squares, np.diag(gram), rtol=1e-5, atol=1e-3)
        assert not np.allclose(entry.gram, dense_entry.gram, rtol=1e-3), name  # it did change


@pytest.mark.parametrize("rest", [ADMM, SPARSEGPT_24], ids=["admm-60%", "sparsegpt-2:4"])
def test_sequential_brings_the_output_closer_to_the_dense_one(rest: Any) -> None:
    """w0 magnitude-pruned kills channels that w1 reads: ordinary statistics (dense model) make
    w1 keep weights on them; sequential ones show them dead, so w1 prunes them first and keeps
    its budget for the live channels. Measured: the output's squared error against the dense
    model's on the calibration data (ordinary ADMM 0.310 vs sequential 0.277 relative to the
    output's energy; SparseGPT 2:4 0.844 vs 0.282)."""
    dense = dead_channel_weights()
    config = ms.OpSelector(global_config=rest, op_name_configs={"w0": ms.MagnitudeConfig(0.5, weight_threshold=0)})
    reference = [forward(s["x"], dense)[-1] for s in samples()]
    errors = {}
    for label, way in (("ordinary", None), ("sequential", config)):
        stats = ms.collect_activation_stats(mlp(dense), samples(), gram=True, sequential=way, progress=False)
        prog = mlp(dense)
        run(prog, config, stats)
        values = {**dense, **pruned_weights(prog)}
        assert int(np.sum(~values["w0"][::2].any(axis=1))) >= 24  # most of those rows are gone
        errors[label] = sum(float(np.sum((forward(s["x"], values)[-1] - r) ** 2)) for s, r in zip(samples(), reference))
    assert errors["sequential"] < 0.95 * errors["ordinary"], errors


@pytest.mark.parametrize("config", [ADMM, SPARSEGPT_24], ids=["admm-60%", "sparsegpt-2:4"])
def test_prune_weights_with_sequential_stats_streaming_equals_pymil(package: Path, config: Any, tmp_path: Path) -> None:
    stats_path = tmp_path / "stats.npz"
    sequential(package, config).save(stats_path)
    streamed_report, pymil_report = ms.SparsityReport(), ms.SparsityReport()
    streamed = ms.prune_weights(package, config, calibration=str(stats_path), report=streamed_report)
    pymil = ms.prune_weights(load_model(package), config, calibration=str(stats_path), report=pymil_report)
    assert [r.to_dict() for r in streamed_report] == [r.to_dict() for r in pymil_report]
    a, b = pruned_weights(load_program(streamed)), pruned_weights(load_program(pymil))
    assert sorted(a) == NAMES == sorted(b)
    for name in NAMES:
        assert a[name].tobytes() == b[name].tobytes(), name


def test_a_magnitude_pruned_weight_before_is_overridden_too(package: Path, ordinary: ms.ActivationStats) -> None:
    config = ms.OpSelector(global_config=ADMM, op_name_configs={"w0": ms.MagnitudeConfig(0.5, weight_threshold=0)})
    stats = sequential(package, config)
    assert sorted(key for _, key in stats) == NAMES[1:]  # w0 needs none
    values = stored(ms.prune_weights(package, config, calibration=stats))
    xs = [forward(s["x"].astype(np.float64), values)[1] for s in samples()]
    entry = stats.get("w1")
    assert entry is not None and entry.gram is not None
    np.testing.assert_allclose(entry.gram, sum(x.T @ x for x in xs), rtol=1e-5, atol=1e-3)


def test_sequential_wanda(package: Path, ordinary: ms.ActivationStats) -> None:
    config = ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation")
    stats = ms.collect_activation_stats(package, samples(), sequential=config, progress=False)
    first, plain, last = stats.get("w0"), ordinary.get("w0"), stats.get("w3")
    assert first is not None and plain is not None and last is not None and last.gram is None
    np.testing.assert_array_equal(first.sum_squares, plain.sum_squares)
    values = stored(ms.prune_weights(package, config, calibration=stats))
    xs = [forward(s["x"].astype(np.float64), values)[3] for s in samples()]
    np.testing.assert_allclose(last.sum_squares, sum(np.sum(x * x, axis=0) for x in xs), rtol=1e-5)


def attention_like() -> Any:
    """h = relu(x @ a^T); q, k, v = h @ {q, k, v}^T; o = (q * k + v) @ o^T, plus a branch
    x @ side^T that depends on no other weight."""
    rng = np.random.default_rng(1)
    w = {name: rng.standard_normal((16, 16)).astype(np.float32) for name in ("a", "q", "k", "v", "o", "side")}

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 16))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        const = {name: mb.const(val=value, name=name) for name, value in w.items()}
        h = mb.relu(x=mb.linear(x=x, weight=const["a"]))
        q, k, v = (mb.linear(x=h, weight=const[name], name=f"lin_{name}") for name in "qkv")
        o = mb.linear(x=mb.add(x=mb.mul(x=q, y=k), y=v), weight=const["o"], name="lin_o")
        side = mb.linear(x=x, weight=const["side"], name="lin_side")
        return o, side

    return prog


def test_weights_reading_one_activation_share_a_wave() -> None:
    prog = attention_like()
    function = prog.functions["main"]
    graph = TopLevel(function)
    parts = check_sequential_config(ms.MagnitudeConfig(0.5, weight_threshold=0, method="sparsegpt"), True)
    _, targets = _targets("main", function, parts, graph)
    assert [[t.name for t in wave] for wave in waves(targets, graph)] == [["a", "side"], ["q", "k", "v"], ["o"]]


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"sequential": ms.MagnitudeConfig(0.5)}, ValueError, ["no config", "reads calibration statistics", "global_config"]),
        ({"sequential": ms.ThresholdConfig(0.1)}, ValueError, ["no config", "reads calibration statistics"]),
        ({"sequential": ADMM, "gram": False}, ValueError, ["global_config", "method='admm'", "gram=True"]),
        ({"sequential": ms.PackConfig()}, ValueError, ["pack configs"]),
        ({"sequential": ADMM, "stats": ms.ActivationStats()}, ValueError, ["stats", "one call"]),
        ({"sequential": 3}, TypeError, ["config must be"]),
    ],
)
def test_errors_name_the_problem(kwargs: dict[str, Any], error: type, words: list[str]) -> None:
    kwargs = {"gram": True, **kwargs}
    with pytest.raises(error) as raised:
        ms.collect_activation_stats(mlp(), samples(2), progress=False, **kwargs)
    for word in words:
        assert word in str(raised.value)


def test_samples_that_do_not_fit_are_named() -> None:
    bad = samples(2) + [{"x": np.zeros((ROWS, 31), np.float32)}]
    with pytest.raises(ValueError, match=r"samples\[2\]: .*x"):
        ms.collect_activation_stats(mlp(), bad, gram=True, sequential=ADMM, progress=False)
    with pytest.raises(ValueError, match="at least one"):
        ms.collect_activation_stats(mlp(), [], gram=True, sequential=ADMM, progress=False)


def test_a_stateful_model_is_refused() -> None:
    @mb.program(
        input_specs=[mb.StateTensorSpec((2, 4), dtype=ct.converters.mil.mil.types.fp16), mb.TensorSpec((2, 4), dtype=ct.converters.mil.mil.types.fp16)],
        opset_version=ct.target.iOS18,
    )
    def prog(state: Any, x: Any) -> Any:
        weight = mb.const(val=np.ones((4, 4), np.float16), name="w")
        y = mb.linear(x=x, weight=weight)
        mb.coreml_update_state(state=state, value=y)
        return y

    with pytest.raises(ValueError, match="states .* sequential=None"):
        ms.collect_activation_stats(prog, [{"x": np.ones((2, 4), np.float32)}], gram=True, sequential=ADMM, progress=False)


def test_cli_calibrate_sequential(package: Path, tmp_path: Path) -> None:
    from mil_sparsity.cli import main

    data = tmp_path / "x.npz"
    np.savez(data, x=np.stack([s["x"] for s in samples()]))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(ms.OpSelector(global_config=ADMM).to_dict()))
    out = tmp_path / "stats.npz"
    assert main(["calibrate", str(package), "-o", str(out), "--data", str(data), "--gram",
                 "--sequential", str(config), "--json"]) == 0
    expected = sequential(package, ADMM)
    got = ms.ActivationStats.load(out)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got.entries[key].gram, expected.entries[key].gram)
    pruned = tmp_path / "pruned.mlpackage"
    assert main(["prune", str(package), "-o", str(pruned), "--config", str(config), "--calibration", str(out)]) == 0
