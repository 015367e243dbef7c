"""coremltools' own ``TestPruneWeights``, run whole against ``ms.prune_weights``.

The class comes from the installed wheel
(``coremltools/test/optimize/coreml/test_post_training_quantization.py``) and runs unchanged,
with three things swapped in for the length of each test:

* ``ct.optimize.coreml.prune_weights`` is ours (:func:`mil_sparsity.prune_weights`), so every
  call the class makes, directly or through its module's ``prune_weights`` helper, prunes with
  mil_sparsity. Its checks read the result's ``_mil_program``, as code written against
  coremltools does.
* Off macOS, there is no Core ML runtime: ``MLModel.predict`` is answered by our numpy
  evaluator (:mod:`mil_sparsity.reference`), which runs the package the model object stands
  for, as saved (its spec and weight file, not the in-memory program), and the macOS version
  the class asks before predicting reads 15.0, so its output checks run instead of returning
  early. On macOS nothing but ``prune_weights`` is swapped: results are loaded models (loaded
  in, loaded out) and Core ML predicts.
* coremltools' torch test module, which the class imports its classifier model from, imports
  torchvision, and with transformers installed peft, for tests this class never runs. Where one
  is not installed (PyPI's torchvision does not even load beside the CPU torch build), a
  placeholder module stands in for that one import (its names raise if ever called) and is
  removed from ``sys.modules`` right after it.

``test_convert_sparse_source_model_*`` and ``test_default_prune_pipeline_ios18`` never call
``prune_weights``: they check coremltools' own ``DEFAULT_PRUNING`` conversion pipeline, and run
here because the class runs whole. Every other test must have called our prune_weights, and
off macOS every test with output checks must have reached predict: a swap that stops taking
effect in a later coremltools fails here instead of passing unseen.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, Iterator

import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

import coremltools as ct  # noqa: E402
import coremltools.optimize as cto  # noqa: E402

import mil_sparsity as ms  # noqa: E402
from mil_sparsity import reference  # noqa: E402

SUITE = "coremltools.test.optimize.coreml.test_post_training_quantization"

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # coremltools renaming the models' outputs
    pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean"),  # torch.jit.trace
]


#: modules coremltools' torch test module imports for other tests -> the names it imports
IMPORTED_FOR_OTHER_TESTS = {"torchvision": (), "peft": ("LoraConfig", "get_peft_model")}


def _placeholder(name: str, attributes: tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(name, f"placeholder of {name} (not installed) for {SUITE}")

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ModuleNotFoundError(f"{name} is not installed (placeholder)")

    for attribute in attributes:
        setattr(module, attribute, unavailable)
    return module


def _import_suite() -> Any:
    """coremltools' test module (its asserts rewritten by pytest, for readable failures)."""
    pytest.register_assert_rewrite(SUITE)
    placeholders = {
        name: _placeholder(name, attributes)
        for name, attributes in IMPORTED_FOR_OTHER_TESTS.items()
        if importlib.util.find_spec(name) is None
    }
    sys.modules.update(placeholders)
    try:
        return importlib.import_module(SUITE)
    finally:
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


suite = _import_suite()

#: collected here as it is in the wheel: every test, every parameter
TestPruneWeights = suite.TestPruneWeights

ON_MACOS = sys.platform == "darwin"


#: the tests that check coremltools' own DEFAULT_PRUNING conversion; every other test must
#: have called our prune_weights (so a swap that stopped taking effect cannot pass unseen)
NOT_PRUNING = ("test_convert_sparse_source_model_default", "test_convert_sparse_source_model_custom", "test_default_prune_pipeline_ios18")
#: the tests whose output checks predict (off macOS, each must have asked our evaluator)
PREDICTING = ("test_weight_pruning_threshold_based", "test_weight_pruning_percentile_based", "test_default_prune_pipeline_ios18")


@pytest.fixture(autouse=True)
def ours(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Our prune_weights in coremltools' place (the list collects its results); off macOS,
    our evaluator as the runtime."""
    results: list[Any] = []
    predictions: list[str] = []

    def reference_predict(self: Any, data: Any, state: Any = None) -> dict[str, Any]:
        """``MLModel.predict`` off macOS: our evaluator on the package this model stands for."""
        if state is not None:
            raise NotImplementedError("the reference evaluator has no state")
        source = self.package_path if self.is_package else self
        predictions.append(str(source))
        return reference.run(source, data, function_name=self.function_name or "main")

    def prune_weights(mlmodel: Any, config: Any, joint_compression: bool = False) -> Any:
        if joint_compression:
            raise NotImplementedError("joint_compression: mil_sparsity prunes float weights only")
        result = ms.prune_weights(mlmodel, config)
        results.append(result)
        return result

    monkeypatch.setattr(cto.coreml, "prune_weights", prune_weights)
    if not ON_MACOS:
        monkeypatch.setattr(ct.models.MLModel, "predict", reference_predict)
        monkeypatch.setattr(ct.models.utils, "_macos_version", lambda: (15, 0))
        monkeypatch.setattr(suite, "_macos_version", lambda: (15, 0))
    yield results
    if request.node.originalname not in NOT_PRUNING:
        assert results, "the test never called prune_weights"
    if not ON_MACOS and request.node.originalname in PREDICTING:
        assert predictions, "the test's output checks never reached predict"
