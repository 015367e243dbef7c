"""Shared by the tests/test_cli_*.py modules: small packages built and saved once per session,
and helpers that read what the ``mil-sparsity`` command line left behind.

``packages`` is built once per test session (cached by the session's base temp directory) and
only read by the tests; ``input_hashes`` proves it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from mil_sparsity import cli

REPO = Path(__file__).resolve().parent.parent
ERROR_PREFIX = "mil-sparsity: error:"
# printed by coremltools itself while it is imported (before any mil_sparsity code runs) on
# machines without its native libraries, with an untested torch or an unsupported scikit-learn
# (which the examples extra brings): not ours to silence in `python -m mil_sparsity.cli`
IMPORT_NOISE = re.compile(
    r"^(Failed to load _\w+: .*|Torch version .* has not been tested with coremltools.*"
    r"|scikit-learn version .* is not supported\. .*)$"
)
SPARSE_OP = "constexpr_sparse_to_dense"


# ----- building the packages ------------------------------------------------------------------
def build_mlp(target: Any, seed: int = 0, zero_fraction: float = 0.0) -> Any:
    """conv 32x8x3x3 -> flatten -> slice -> linear 128x64 -> relu -> linear 64x128, fp16.

    With ``zero_fraction``, that fraction of every rank >= 2 weight is exactly zero (as after
    training-time pruning).
    """
    rng = np.random.default_rng(seed)

    def weight(shape: tuple[int, ...]) -> np.ndarray:
        value = rng.standard_normal(shape).astype(np.float16)
        if zero_fraction:
            value[rng.random(shape) < zero_fraction] = 0
        return value

    conv_w, fc1_w, fc2_w = weight((32, 8, 3, 3)), weight((128, 64)), weight((64, 128))
    fc1_b = rng.standard_normal(128).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 6, 6), dtype=types.fp16)], opset_version=target)
    def prog(x: Any) -> Any:
        y = mb.conv(x=x, weight=conv_w, name="conv1")
        y = mb.reshape(x=y, shape=[1, 32 * 16])
        y = mb.slice_by_size(x=y, begin=[0, 0], size=[1, 64])
        y = mb.linear(x=y, weight=fc1_w, bias=fc1_b, name="fc1")
        y = mb.relu(x=y)
        return mb.linear(x=y, weight=fc2_w, name="fc2")

    return ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16,
    )


def build_neuralnetwork() -> Any:
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    builder = NeuralNetworkBuilder([("x", datatypes.Array(64))], [("y", datatypes.Array(128))])
    builder.add_inner_product(
        "fc", W=np.ones((128, 64)), b=None, input_channels=64, output_channels=128,
        has_bias=False, input_name="x", output_name="y",
    )
    return ct.models.MLModel(builder.spec, skip_model_load=True)


@attrs.frozen
class Packages:
    root: Path
    ios18: Path
    ios16: Path
    ios15: Path
    trained: Path  # iOS18, 80% exact zeros in every rank >= 2 weight
    palettized: Path
    joint: Path
    multi: Path
    neuralnetwork: Path
    corrupt: Path  # model.mlmodel replaced by garbage
    truncated: Path  # weight.bin cut short

    def inputs(self) -> list[Path]:
        return [self.ios18, self.ios16, self.ios15, self.trained, self.palettized, self.joint,
                self.multi, self.neuralnetwork, self.corrupt, self.truncated]


_BUILT: dict[Path, "Packages"] = {}  # session base temp -> the packages built in it


def _build_packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    from coremltools.optimize.coreml import (
        OpMagnitudePrunerConfig,
        OpPalettizerConfig,
        OptimizationConfig,
        palettize_weights,
        prune_weights,
    )

    root = tmp_path_factory.mktemp("models")
    paths = Packages(
        root=root,
        ios18=root / "mlp_ios18.mlpackage",
        ios16=root / "mlp_ios16.mlpackage",
        ios15=root / "mlp_ios15.mlpackage",
        trained=root / "trained.mlpackage",
        palettized=root / "palettized.mlpackage",
        joint=root / "joint.mlpackage",
        multi=root / "multi.mlpackage",
        neuralnetwork=root / "nn.mlmodel",
        corrupt=root / "corrupt.mlpackage",
        truncated=root / "truncated.mlpackage",
    )
    dense18 = build_mlp(ct.target.iOS18)
    dense18.save(str(paths.ios18))
    build_mlp(ct.target.iOS16, seed=1).save(str(paths.ios16))
    build_mlp(ct.target.iOS15, seed=2).save(str(paths.ios15))
    build_mlp(ct.target.iOS18, seed=3, zero_fraction=0.8).save(str(paths.trained))
    palettize = OptimizationConfig(
        global_config=OpPalettizerConfig(nbits=4, mode="uniform", weight_threshold=1024)
    )
    palettize_weights(dense18, palettize).save(str(paths.palettized))
    pruned = prune_weights(
        dense18,
        OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=1024)),
    )
    palettize_weights(pruned, palettize, joint_compression=True).save(str(paths.joint))
    descriptor = ct.utils.MultiFunctionDescriptor()
    descriptor.add_function(str(paths.ios18), src_function_name="main", target_function_name="dense")
    descriptor.add_function(str(paths.palettized), src_function_name="main", target_function_name="palettized")
    descriptor.default_function_name = "dense"
    ct.utils.save_multifunction(descriptor, str(paths.multi))
    build_neuralnetwork().save(str(paths.neuralnetwork))
    shutil.copytree(paths.ios18, paths.corrupt)
    (paths.corrupt / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\x00garbage\xff" * 20)
    shutil.copytree(paths.ios18, paths.truncated)
    with open(paths.truncated / "Data/com.apple.CoreML/weights/weight.bin", "r+b") as handle:
        handle.truncate(1000)
    return paths


def hash_tree(path: Path) -> dict[str, str]:
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    session = tmp_path_factory.getbasetemp()
    if session not in _BUILT:
        _BUILT[session] = _build_packages(tmp_path_factory)
    return _BUILT[session]


@pytest.fixture(scope="module")
def input_hashes(packages: Packages) -> dict[Path, dict[str, str]]:
    return {path: hash_tree(path) for path in packages.inputs()}


def assert_inputs_unchanged(packages: Packages, hashes: dict[Path, dict[str, str]]) -> None:
    for path in packages.inputs():
        assert hash_tree(path) == hashes[path], f"{path} was modified"


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".tmp-" in name)


def error_line(stderr: str) -> str:
    """The one error line; fails on a traceback or any other output."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not IMPORT_NOISE.match(line)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(ERROR_PREFIX), stderr
    return lines[0]


Main = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]) -> Main:
    """``mil-sparsity ARGV`` in process: (exit code, stdout, stderr)."""

    def call(*argv: Any) -> tuple[int, str, str]:
        code = cli.main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return call
