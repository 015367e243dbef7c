"""The weight inventory (``ms.weights``): one list of weights for a saved model and for a
PyMIL program, with storage, saved names and readers; the selector matches saved names."""

from __future__ import annotations

from typing import Any

import coremltools as ct
import numpy as np

import mil_sparsity as ms
from mil_sparsity.model import inventory
from mil_sparsity.posthoc import load_model, load_program
from mil_sparsity.model.products import ProductRole


def by_name(weights: list[ms.Weight]) -> dict[str, ms.Weight]:
    return {weight.name: weight for weight in weights}


def test_weights_of_a_saved_mlp(sources: Any) -> None:
    package = sources.get("mlp", "iOS18")
    found = by_name(ms.weights(package))
    weight = found["op_0_weight_to_fp16"]
    assert weight.shape == (128, 64) and weight.dtype == "float16" and weight.storage == inventory.BLOB
    assert weight.saved_name == weight.name and weight.function == "main"
    (reader,) = weight.consumers
    assert (reader.op_type, reader.input_names) == ("linear", ("weight",))
    assert isinstance(reader.roles[0], ProductRole) and reader.roles[0].weight_axis == 1
    assert found["op_0_bias_to_fp16"].shape == (128,)
    assert weight.to_dict()["readers"][0]["reduction_axes"] == [1]
    # the same inventory from the PyMIL program: same weights, shapes, dtypes and readers
    program = by_name(ms.weights(load_program(load_model(package))))
    assert program.keys() == found.keys()
    for name, spec_weight in found.items():
        mil_weight = program[name]
        assert (mil_weight.shape, mil_weight.dtype, mil_weight.consumers) == (
            spec_weight.shape, spec_weight.dtype, spec_weight.consumers
        ), name
        assert mil_weight.storage == inventory.CONST


def test_weights_of_a_pruned_model_name_the_chain(sources: Any, tmp_path: Any) -> None:
    pruned = ms.prune_weights(sources.get("mlp", "iOS18"), ms.MagnitudeConfig(target_sparsity=0.5))
    path = tmp_path / "pruned.mlpackage"
    pruned.save(str(path))
    spec_found = by_name(ms.weights(path))
    end = spec_found["op_0_weight_to_fp16_sparse"]
    assert end.storage == inventory.SPARSE and end.chain == ("constexpr_sparse_to_dense",)
    assert end.shape == (128, 64) and end.consumer_types == ("linear",)
    stored = {w.name: w for w in spec_found.values() if w.consumer_types == ("constexpr_sparse_to_dense",)}
    assert {"op_0_weight_to_fp16_sparse_mask", "op_0_weight_to_fp16_sparse_nonzero_data"} <= stored.keys()
    assert all(w.feeds_constexpr and not w.compressed for w in stored.values())
    program = by_name(ms.weights(load_program(load_model(path))))
    assert program["op_0_weight_to_fp16_sparse"].storage == inventory.SPARSE


def test_selector_matches_saved_names() -> None:
    config = ms.MagnitudeConfig(target_sparsity=0.5)
    selector = ms.OpSelector(op_name_configs={"fc_weight": config, "conv_*": None})
    resolution = selector.resolve("fc.weight", "linear_0", "linear")  # a name inside ct.convert
    assert resolution.config == config and resolution.by_name
    assert selector.resolve("conv.weight", None, "conv").config is None  # glob on the saved name
    assert selector.resolve("other.weight", None, "linear").source == "global_config"


def test_inventory_reads_no_value(sources: Any, monkeypatch: Any) -> None:
    """Listing the weights of a package reads the spec only: no blob is read."""
    from mil_sparsity.format import blob as _blob

    def no_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the inventory must not read weight values")

    monkeypatch.setattr(_blob.BlobReader, "read_raw_range", no_read)
    assert len(ms.weights(sources.get("conv", "iOS16"))) > 0
    assert np.all([w.size > 0 for w in ms.weights(sources.get("conv", "iOS16"))])
