"""The reference evaluator and calibration statistics collection hold one activation at a time
(plus the statistics), not every activation of the program (issue 13, item 3).

A deep MLP whose activations are large and whose weights are small: the sum of all its
activations is ~100x one activation. tracemalloc (numpy reports its buffers to it) measures the
peak of what a run allocates; it must stay within a few activations.
"""

from __future__ import annotations

import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil.mil import Builder as mb

import mil_sparsity as ms
from mil_sparsity.reference import ReferenceEvaluator

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

ROWS, WIDTH, LAYERS = 4096, 64, 48
ACTIVATION_BYTES = ROWS * WIDTH * 4  # one fp32 activation: 1 MB
ALL_ACTIVATIONS_BYTES = 2 * LAYERS * ACTIVATION_BYTES  # a linear and a relu output per layer
# one activation being read, one being written, an op's temporaries: a few activations at most
PEAK_BUDGET_BYTES = 6 * ACTIVATION_BYTES


def deep_mlp() -> Any:
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) for _ in range(LAYERS)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(ROWS, WIDTH))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        for index, weight in enumerate(weights):
            x = mb.relu(x=mb.linear(x=x, weight=mb.const(val=weight, name=f"w{index}"), name=f"fc{index}"))
        return x

    return prog


def peak_allocation(run: Callable[[], Any]) -> int:
    """Peak bytes allocated (and traced) while ``run`` runs, above what was allocated before."""
    run()  # warm up: lazy imports and caches are not what is measured
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = run()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - before


@pytest.fixture(scope="module")
def program() -> Any:
    return deep_mlp()


def sample() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((ROWS, WIDTH)).astype(np.float32)}


def test_premise_activations_dwarf_one() -> None:
    assert ALL_ACTIVATIONS_BYTES > 15 * PEAK_BUDGET_BYTES


def test_reference_evaluator_holds_one_activation_at_a_time(program: Any) -> None:
    evaluator = ReferenceEvaluator(program)
    inputs = sample()
    outputs = evaluator.run(inputs)
    assert next(iter(outputs.values())).shape == (ROWS, WIDTH), "the run must compute the activations"
    peak = peak_allocation(lambda: evaluator.run(inputs))
    assert ACTIVATION_BYTES <= peak <= PEAK_BUDGET_BYTES, (peak, ALL_ACTIVATIONS_BYTES)


def test_calibration_holds_one_activation_at_a_time_plus_the_statistics(program: Any) -> None:
    samples = [sample() for _ in range(2)]
    stats = ms.collect_activation_stats(program, samples, progress=False)
    assert len(stats) == LAYERS, "every linear weight gets statistics"
    peak = peak_allocation(lambda: ms.collect_activation_stats(program, samples, progress=False))
    assert ACTIVATION_BYTES <= peak <= PEAK_BUDGET_BYTES, (peak, ALL_ACTIVATIONS_BYTES)


def test_the_measurement_sees_retained_activations(program: Any) -> None:
    """Control: a capture that keeps every output makes the same run exceed the budget."""
    evaluator = ReferenceEvaluator(program)
    inputs = sample()

    def keeping_everything() -> list[Any]:
        kept: list[Any] = []
        evaluator.run(inputs, lambda op, args, outputs: kept.extend(outputs))
        return kept

    assert peak_allocation(keeping_everything) > ALL_ACTIVATIONS_BYTES // 2
