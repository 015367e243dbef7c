"""Saved source packages for the tests, built once per session from torch-free MIL models.

``Sources.get(model, target)`` saves a package on first use and returns its path; the tests
never modify it (they copy it first). The ``sources`` fixture in conftest.py holds one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import coremltools as ct

from _models import cond_linear_program, conv_model, lstm_model, mlp_model


def cond_program(target: Any) -> Any:
    """Weights inside both branches of a cond, and one after it."""
    rng = np.random.default_rng(0)
    w_true = rng.uniform(-0.1, 0.1, (64, 64)).astype(np.float32)
    w_true[np.abs(w_true) < np.quantile(np.abs(w_true), 0.6)] = 0
    w_false = rng.uniform(-0.1, 0.1, (64, 64)).astype(np.float32)
    w_out = rng.uniform(-0.1, 0.1, (48, 64)).astype(np.float32)
    prog = cond_linear_program(target, w_true, w_false, w_out)
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target)


def save_two_functions(first: Path, second: Path, out: Path, default: str = "f2") -> None:
    from coremltools.models.utils import MultiFunctionDescriptor, save_multifunction

    descriptor = MultiFunctionDescriptor()
    descriptor.add_function(str(first), src_function_name="main", target_function_name="f1")
    descriptor.add_function(str(second), src_function_name="main", target_function_name="f2")
    descriptor.default_function_name = default
    save_multifunction(descriptor, str(out))


class Sources:
    """Source packages, converted once per session and never modified by the tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple[str, str], Path] = {}

    def get(self, model: str, target: str) -> Path:
        key = (model, target)
        if key not in self.cache:
            path = self.root / f"{model}-{target}.mlpackage"
            self._build(model, getattr(ct.target, target), path)
            self.cache[key] = path
        return self.cache[key]

    def _build(self, model: str, target: Any, path: Path) -> None:
        if model == "conv":
            conv_model(target).save(str(path))
        elif model == "mlp":
            mlp_model(target).save(str(path))
        elif model == "lstm":
            lstm_model(target).save(str(path))
        elif model == "classifier":
            mlp_model(
                target, sizes=(64, 128, 64, 3), classifier_config=ct.ClassifierConfig(["a", "b", "c"])
            ).save(str(path))
        elif model == "cond":
            cond_program(target).save(str(path))
        elif model == "multifunction":  # two different functions
            parts = []
            for seed in (1, 2):
                part = self.root / f"part{seed}-{path.name}"
                mlp_model(target, seed=seed).save(str(part))
                parts.append(part)
            save_two_functions(parts[0], parts[1], path)
        elif model == "shared":  # one source model twice: every blob shared by f1 and f2
            part = self.root / f"part-{path.name}"
            mlp_model(target).save(str(part))
            save_two_functions(part, part, path)
        elif model.startswith(("palettize", "int")):
            compressed_model(model, target).save(str(path))
        else:
            raise KeyError(model)


def compressed_model(kind: str, target: Any) -> Any:
    """The MLP with its first linear weight palettized / quantized; the second (pre-zeroed)
    weight stays an ordinary const."""
    import coremltools.optimize.coreml as cto

    mlmodel = mlp_model(target, prezero=(0, 1))
    keep = {"op_2_weight_to_fp16": None}
    if kind.startswith("palettize"):
        nbits = int(kind.removeprefix("palettize"))
        config = cto.OptimizationConfig(
            global_config=cto.OpPalettizerConfig(mode="uniform", nbits=nbits), op_name_configs=keep
        )
        return cto.palettize_weights(mlmodel, config)
    if kind == "int8":
        quantizer = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
    else:  # int4 blobs (iOS18)
        assert kind == "int4"
        quantizer = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32
        )
    config = cto.OptimizationConfig(global_config=quantizer, op_name_configs=keep)
    return cto.linear_quantize_weights(mlmodel, config)
