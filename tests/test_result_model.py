"""The MLModel the post-hoc entry points return, next to what coremltools' own returns.

* Loaded in, loaded out: coremltools' post-hoc compression compiles and loads its result
  exactly when its input was loaded (``__proxy__`` set). So do ms.prune_weights,
  ms.pack_weights and ms.apply_pipeline; a path in (streamed or not) is not loaded, and
  neither is its result. Off macOS nothing is ever loaded, so the tests read what the
  result's MLModel was constructed with (``skip_model_load``) for an input whose
  ``__proxy__`` is set (a stand-in) or None, next to coremltools' prune_weights on the same
  input.
* ``_mil_program``: a result of the PyMIL path holds its program, as coremltools' results do,
  and that program is the one its package holds (same ops, same outputs); a streamed result
  has None.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import coremltools as ct
import coremltools.optimize.coreml as cto
from coremltools.converters.mil.mil.program import Program

import mil_sparsity as ms
from mil_sparsity import reference
from mil_sparsity.posthoc import load_program
from _mil_helpers import one_pass

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CONFIG = cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5))

#: entry point -> a call of it on a model or a path
ENTRIES: dict[str, Callable[[Any], Any]] = {
    "prune_weights": lambda model: ms.prune_weights(model, CONFIG),
    "pack_weights": lambda model: ms.pack_weights(model),
    "apply_pipeline": lambda model: ms.apply_pipeline(
        model, one_pass(ms.PRUNE_BY_MAGNITUDE, config=ms.MagnitudeConfig(target_sparsity=0.5))
    ),
}


@pytest.fixture
def constructed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MLModel constructed during the test keeps its constructor arguments (defaults
    filled in) as ``constructed_with``."""
    original = ct.models.MLModel.__init__
    signature = inspect.signature(original)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        original(self, *args, **kwargs)
        self.constructed_with = {k: v for k, v in bound.arguments.items() if k != "self"}

    monkeypatch.setattr(ct.models.MLModel, "__init__", init)


def source(path: Path, loaded: bool) -> Any:
    """The package as an MLModel that Core ML loaded (``__proxy__`` set: a stand-in off macOS)
    or did not."""
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    if loaded:
        mlmodel.__proxy__ = object()
    return mlmodel


@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "not-loaded"])
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_loaded_in_loaded_out_as_coremltools(entry: str, loaded: bool, sources: Any, constructed: None) -> None:
    path = sources.get("mlp", "iOS18")
    theirs = cto.prune_weights(source(path, loaded), CONFIG)
    ours = ENTRIES[entry](source(path, loaded))
    assert theirs.constructed_with["skip_model_load"] is (not loaded)
    assert ours.constructed_with["skip_model_load"] is (not loaded)
    for name in ("is_temp_package", "compute_units"):
        assert ours.constructed_with[name] == theirs.constructed_with[name], name
    assert isinstance(ours.constructed_with["mil_program"], Program)
    assert ours._mil_program is ours.constructed_with["mil_program"]


@pytest.mark.parametrize("streaming", [True, False], ids=["streamed", "pymil"])
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_a_path_in_is_not_loaded_out(entry: str, streaming: bool, sources: Any, constructed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    if not streaming:  # what prune_weights and pack_weights pass on to apply_pipeline
        apply_pipeline = ms.posthoc.apply_pipeline
        monkeypatch.setattr(ms.oneshot, "apply_pipeline", lambda *a, **k: apply_pipeline(*a, **k, streaming=False))
        monkeypatch.setattr(ms, "apply_pipeline", lambda *a, **k: apply_pipeline(*a, **k, streaming=False))
    result = ENTRIES[entry](sources.get("mlp", "iOS18"))
    assert result.constructed_with["skip_model_load"] is True
    assert result.constructed_with["is_temp_package"] is True
    if streaming:  # as any model loaded from disk
        assert result._mil_program is None
    else:
        assert isinstance(result._mil_program, Program)


def op_types(prog: Any) -> dict[str, list[str]]:
    return {name: [op.op_type for op in function.operations] for name, function in prog.functions.items()}


@pytest.mark.parametrize("model, target", [("mlp", "iOS18"), ("classifier", "iOS16"), ("multifunction", "iOS18"), ("mlp", "iOS15")])
def test_the_program_is_the_one_the_package_holds(model: str, target: str, sources: Any) -> None:
    result = ms.prune_weights(source(sources.get(model, target), loaded=False), CONFIG)
    prog = result._mil_program
    saved = load_program(ct.models.MLModel(result.package_path, skip_model_load=True))
    assert op_types(prog) == op_types(saved)
    assert sum(types.count("constexpr_sparse_to_dense") for types in op_types(prog).values()) >= 2
    if model == "classifier":
        return  # the reference evaluator has no classify op
    rng = np.random.default_rng(0)
    for name, function in prog.functions.items():
        inputs = {x: rng.standard_normal(var.shape).astype(np.float32) for x, var in function.inputs.items()}
        from_program = reference.run(prog, inputs, function_name=name)
        from_package = reference.run(result.package_path, inputs, function_name=name)
        assert from_program.keys() == from_package.keys()
        for output, value in from_program.items():
            np.testing.assert_array_equal(value, from_package[output], err_msg=f"{name}: {output}")
