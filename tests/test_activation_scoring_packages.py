"""Activation scoring on saved packages and during conversion (see test_activation_scoring.py
for the rules on in-memory programs).

* consumer roles read from the spec (``_spec_roles``) equal those read by PyMIL, flags stored
  as const references or inline values;
* fp16 weights of a saved package against ``_reference``; streaming equal to PyMIL (reports and
  bit-identical weights) on the product program and on the shared source packages (nested
  blocks, multifunction, blobs shared by two functions);
* during ct.convert of a torch model with statistics of its dense conversion;
* ``mil-sparsity prune --scoring activation --calibration``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coremltools as ct

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private
from mil_sparsity.model import pymil as _graph
from mil_sparsity.model import spec as _spec_roles
from mil_sparsity.calibration import collect_activation_stats
from mil_sparsity.posthoc import load_model, load_program
from mil_sparsity.model.products import NotAProduct, ProductRole
from mil_sparsity.streaming import compress_package
from mil_sparsity.format.sparse_format import saved_name
from _mil_helpers import all_ops, one_pass
from _models import iter_ops
from _reference import ref_wanda
from test_activation_scoring import (
    INPUTS,
    MAG,
    PRODUCTS,
    product_program,
    pruned_weights,
    scale_of,
    synthetic_stats,
)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]


# =============================================================================================
# consumer roles, both paths
# =============================================================================================
def roles_pymil(prog: Any) -> dict[str, tuple[Any, ...]]:
    out = {}
    for op in all_ops(prog):
        if op.op_type == "const" and op.outputs[0].child_ops:
            out[op.name] = tuple(role for c in _graph.consumers(op.outputs[0]) for role in c.roles)
    return out


def roles_spec(spec: Any) -> dict[str, tuple[Any, ...]]:
    function = spec.mlProgram.functions["main"]
    blocks = [function.block_specializations[function.opset]]
    readers = _spec_roles.readers(function, blocks)
    out = {}
    for op in blocks[0].operations:
        if op.type == "const" and op.outputs[0].name in readers:
            out[_spec_roles.op_name(op)] = tuple(role for c in readers[op.outputs[0].name] for role in c.roles)
    return out


@pytest.fixture(scope="module")
def package(tmp_path_factory: Any) -> Path:
    """The product program saved for iOS18 in fp16 (consts renamed ``<name>_to_fp16``)."""
    path = tmp_path_factory.mktemp("scoring") / "products.mlpackage"
    ct.convert(product_program(ct.target.iOS18), convert_to="mlprogram",
               minimum_deployment_target=ct.target.iOS18).save(str(path))
    return path


def test_roles_are_the_same_on_both_paths(package: Path) -> None:
    pymil = roles_pymil(load_program(load_model(package)))
    spec = roles_spec(load_model(package).get_spec())
    weights_only = {name: roles for name, roles in pymil.items() if name.removesuffix("_to_fp16") in PRODUCTS or name.startswith("add_y")}
    assert len(weights_only) == len(PRODUCTS) + 1
    for name, roles in weights_only.items():
        assert spec[name] == roles, name
        base = name.removesuffix("_to_fp16")
        if base in PRODUCTS:
            [role] = roles
            assert isinstance(role, ProductRole) and role.weight_axis == PRODUCTS[base][3], (name, role)
        else:
            assert all(isinstance(role, NotAProduct) for role in roles)
    # every flag / group / rank argument read: all consts that ops read agree too
    assert {k: v for k, v in spec.items() if k in pymil} == {k: pymil[k] for k in spec if k in pymil}


def test_spec_roles_read_inline_flag_values(package: Path) -> None:
    """Flags stored as inline values instead of const references read the same."""
    spec = load_model(package).get_spec()
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    producers = {out.name: op for op in block.operations for out in op.outputs}
    for op in block.operations:
        for key in ("transpose_x", "transpose_y", "groups"):
            if key in op.inputs:
                binding = op.inputs[key].arguments[0]
                value = producers[binding.name].attributes["val"]
                binding.ClearField("name")
                binding.value.CopyFrom(value)
    inlined, referenced = roles_spec(spec), roles_spec(load_model(package).get_spec())
    assert inlined == {name: roles for name, roles in referenced.items() if name in inlined}
    assert sum(isinstance(role, ProductRole) for roles in inlined.values() for role in roles) == len(PRODUCTS)



# =============================================================================================
# saved packages: fp16, streaming equal to PyMIL
# =============================================================================================
SAMPLES = 3


def samples(seed: int = 5) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in INPUTS.items()} for _ in range(SAMPLES)]


@pytest.fixture(scope="module")
def package_stats(package: Path, tmp_path_factory: Any) -> Path:
    path = tmp_path_factory.mktemp("stats") / "stats.npz"
    collect_activation_stats(package, samples(), progress=False).save(path)
    return path


STREAM_CONFIGS = {
    "magnitude": ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation"),
    "n_m": ms.NMConfig(2, 4, weight_threshold=0, scoring="activation"),
    "block": ms.BlockConfig(0.5, 2, weight_threshold=0, scoring="activation"),
    "selector": ms.OpSelector(
        global_config=ms.MagnitudeConfig(0.4, weight_threshold=0, scoring="activation"),
        op_type_configs={"add": ms.MagnitudeConfig(0.5, weight_threshold=0)},
        op_name_configs={"mm_y_w_to_fp16": ms.NMConfig(1, 4, weight_threshold=0)},
    ),
}


@pytest.mark.parametrize("config_id", list(STREAM_CONFIGS))
def test_streaming_equals_pymil(config_id: str, package: Path, package_stats: Path, tmp_path: Path) -> None:
    pipeline = one_pass(MAG, config=STREAM_CONFIGS[config_id], calibration=str(package_stats))
    streamed, pymil = tmp_path / "streamed.mlpackage", tmp_path / "pymil.mlpackage"
    stream_report, pymil_report = ms.SparsityReport(), ms.SparsityReport()
    ms.apply_pipeline(package, pipeline, streaming=True, report=stream_report).save(str(streamed))
    ms.apply_pipeline(package, pipeline, streaming=False, report=pymil_report).save(str(pymil))
    assert [r.to_dict() for r in stream_report] == [r.to_dict() for r in pymil_report]
    a, b = pruned_weights(load_program(load_model(streamed))), pruned_weights(load_program(load_model(pymil)))
    assert sorted(a) == sorted(b) and len(a) >= len(PRODUCTS)
    for name in a:
        assert a[name].dtype == np.float16 and a[name].tobytes() == b[name].tobytes(), name


def test_fp16_package_matches_the_reference(package: Path, package_stats: Path) -> None:
    stats = ms.ActivationStats.load(package_stats)
    dense = {op.name: op.outputs[0].val for op in all_ops(load_program(load_model(package))) if op.op_type == "const"}
    pipeline = one_pass(MAG, config=STREAM_CONFIGS["magnitude"], calibration=stats)
    pruned = pruned_weights(load_program(load_model(ms.apply_pipeline(package, pipeline))))
    for base, (op, groups, transposed, _) in PRODUCTS.items():
        name = f"{base}_to_fp16"
        expected = ref_wanda(dense[name], scale_of(stats, name), 0.5, op, groups, transposed)
        assert pruned[name].tobytes() == expected.tobytes(), name


def test_streaming_with_calibration_is_automatic_and_checks_the_option(package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mil_sparsity.plan.pipeline import make_plan

    pipeline = one_pass(MAG, config=STREAM_CONFIGS["magnitude"], calibration=synthetic_stats())
    assert make_plan(pipeline, ct.target.iOS18.value).streams
    with pytest.raises(ValueError, match="needs the pass option 'calibration'"):
        compress_package(package, tmp_path / "out.mlpackage", STREAM_CONFIGS["magnitude"])
    assert not (tmp_path / "out.mlpackage").exists()
    with pytest.raises(ValueError, match="calibration statistics have no entry"):
        compress_package(package, tmp_path / "out.mlpackage", pipeline)
    assert not (tmp_path / "out.mlpackage").exists()



# =============================================================================================
# during ct.convert
# =============================================================================================
def test_during_ct_convert_with_statistics_of_the_dense_conversion() -> None:
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 16, 3, padding=1, groups=2)
            self.linear = torch.nn.Linear(16, 32)

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.conv(x)).mean(dim=(2, 3))
            return self.linear(y)

    torch.manual_seed(0)
    net = Net().eval()
    example = torch.randn(1, 8, 6, 6)
    traced = torch.jit.trace(net, example)
    inputs = [ct.TensorType(name="x", shape=(1, 8, 6, 6))]

    def convert(pipeline: Any) -> Any:
        return ct.convert(traced, inputs=inputs, convert_to="mlprogram",
                          minimum_deployment_target=ct.target.iOS16, pass_pipeline=pipeline)

    dense = convert(ct.PassPipeline.DEFAULT)
    rng = np.random.default_rng(0)
    stats = collect_activation_stats(
        dense, [{"x": (rng.standard_normal((1, 8, 6, 6)) * np.linspace(0.1, 3, 8)[None, :, None, None]).astype(np.float32)} for _ in range(4)],
        progress=False,
    )
    dense_consts = {op.name: op.outputs[0].val for op in all_ops(load_program(dense)) if op.op_type == "const"}
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(MAG)
    report = ms.SparsityReport()
    pipeline.set_options(MAG, {"config": ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation"),
                               "calibration": stats, "report": report})
    pruned = pruned_weights(load_program(convert(pipeline)))
    expected_ops = {"conv": ("conv", 2), "linear": ("linear", 1)}
    # inside ct.convert the pass sees the names before the backend sanitizes them
    # (conv.weight_to_fp16); the statistics, the saved models and the report rows hold
    # conv_weight_to_fp16, so the lookup went through the saved spelling
    assert len(pruned) == 2 and {r.name for r in report.packed} == set(pruned)
    assert all(saved_name(r.name) == r.name for r in report.packed)
    assert any("." in name for name, _ in net.named_parameters())
    for record in report.packed:
        name = saved_name(record.name)
        op, groups = expected_ops[record.consumer_types[0]]
        reference = ref_wanda(dense_consts[name], scale_of(stats, name), 0.5, op, groups)
        assert pruned[name].tobytes() == reference.tobytes(), name
        assert record.scoring == "activation"


# =============================================================================================
# command line
# =============================================================================================
def test_cli_scoring_and_calibration(package: Path, package_stats: Path, tmp_path: Path) -> None:
    from mil_sparsity.cli import main

    out = tmp_path / "out.mlpackage"
    code = main(["prune", str(package), "-o", str(out), "--target-sparsity", "0.5", "--weight-threshold", "0",
                 "--scoring", "activation", "--calibration", str(package_stats), "--json"])
    assert code == 0
    pipeline = one_pass(MAG, config=ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation"), calibration=str(package_stats))
    expected = pruned_weights(load_program(load_model(ms.apply_pipeline(package, pipeline))))
    got = pruned_weights(load_program(load_model(out)))
    assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in expected.items()}
    shutil.rmtree(out)
    assert main(["prune", str(package), "-o", str(out), "--n-m", "2:4", "--scoring", "activation"]) == 2
    assert main(["prune", str(package), "-o", str(out), "--threshold", "0.1", "--scoring", "activation",
                 "--calibration", str(package_stats)]) == 2
    (tmp_path / "not_stats.npz").write_bytes(b"not a zip")
    assert main(["prune", str(package), "-o", str(out), "--n-m", "2:4", "--scoring", "activation",
                 "--calibration", str(tmp_path / "not_stats.npz")]) not in (0, 2)
    assert not out.exists()
    # a config file's activation-scored configs take --calibration too (streaming here)
    config = tmp_path / "selector.json"
    config.write_text(ms.OpSelector(global_config=ms.NMConfig(2, 4, weight_threshold=0, scoring="activation")).to_json())
    code = main(["prune", str(package), "-o", str(out), "--config", str(config), "--calibration", str(package_stats), "--streaming"])
    assert code == 0
    pipeline = one_pass(MAG, config=ms.NMConfig(2, 4, weight_threshold=0, scoring="activation"), calibration=str(package_stats))
    expected = pruned_weights(load_program(load_model(ms.apply_pipeline(package, pipeline, streaming=False))))
    got = pruned_weights(load_program(load_model(out)))
    assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in expected.items()}



# =============================================================================================
# streaming = PyMIL on the shared source packages (nested blocks, multifunction, shared blobs)
# =============================================================================================
def stats_for_package(src: Path, seed: int, same_in_every_function: bool = False) -> ms.ActivationStats:
    """Positive statistics for every product const of every function, sized from its role."""
    stats = ms.ActivationStats()
    prog = load_program(load_model(src))
    for function_name, function in prog.functions.items():
        rng = np.random.default_rng(seed if same_in_every_function else seed + len(stats))
        for block in _graph.iter_blocks(function):
            for op in _graph.weight_consts(block):
                roles = [r for c in _graph.consumers(op.outputs[0]) for r in c.roles if isinstance(r, ProductRole)]
                if not roles or op.outputs[0].rank < 2:
                    continue
                shape, role = op.outputs[0].shape, roles[0]
                grouped = role.op_type == "conv" and role.groups > 1
                channels = role.groups * shape[1] if grouped else shape[role.weight_axis]
                stats.add(function_name, op.name, rng.uniform(0.05, 40.0, channels), 3)
    assert len(stats) > 0
    return stats


@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
@pytest.mark.parametrize("model", ["conv", "mlp", "lstm", "classifier", "cond", "multifunction", "shared"])
def test_streaming_equals_pymil_on_the_source_packages(model: str, target: str, sources: Any, tmp_path: Path) -> None:
    from test_streaming import assert_equivalent, sparse_op_count

    src = sources.get(model, target)
    stats = stats_for_package(src, seed=11)
    config = ms.OpSelector(global_config=ms.MagnitudeConfig(0.5, scoring="activation"),
                           op_type_configs={"linear": ms.NMConfig(2, 4, scoring="activation")})
    pipeline = one_pass(MAG, config=config, calibration=stats)
    streamed, pymil = tmp_path / "streamed.mlpackage", tmp_path / "pymil.mlpackage"
    stream_report, pymil_report = ms.SparsityReport(), ms.SparsityReport()
    compress_package(src, streamed, pipeline, report=stream_report)
    ms.apply_pipeline(src, pipeline, streaming=False, report=pymil_report).save(str(pymil))
    assert sparse_op_count(pymil) > 0
    assert_equivalent(streamed, pymil)
    streamed_rows = {(r.function, r.name): r.to_dict() for r in stream_report}
    pymil_rows = {(r.function, r.name): r.to_dict() for r in pymil_report}
    assert streamed_rows == {key: row for key, row in pymil_rows.items() if key in streamed_rows}
    assert all(int(np.prod(row["shape"])) < 10 for key, row in pymil_rows.items() if key not in streamed_rows)
    assert {r.scoring for r in stream_report.packed} == {"activation"}


def test_shared_blob_with_different_statistics_is_pruned_per_function(sources: Any, tmp_path: Path) -> None:
    """f1 and f2 share every blob; with different statistics each gets its own pruned weights,
    with equal statistics they share one packed blob, as with magnitude scoring."""
    from test_streaming import assert_equivalent, blob_value, proto_ops, spec_of

    def packed_offsets(path: Path, function: str) -> list[int]:
        ops = proto_ops(spec_of(path).mlProgram.functions[function])
        return [blob_value(op, "nonzero_data").blobFileValue.offset for op in ops if op.type == "constexpr_sparse_to_dense"]

    src = sources.get("shared", "iOS18")
    results = {}
    shared = {}
    for same in (True, False):
        pipeline = one_pass(MAG, config=ms.MagnitudeConfig(0.5, scoring="activation"),
                            calibration=stats_for_package(src, seed=5, same_in_every_function=same))
        streamed, pymil = tmp_path / f"streamed{same}.mlpackage", tmp_path / f"pymil{same}.mlpackage"
        compress_package(src, streamed, pipeline)
        ms.apply_pipeline(src, pipeline, streaming=False).save(str(pymil))
        assert_equivalent(streamed, pymil)
        shared[same] = packed_offsets(streamed, "f1") == packed_offsets(streamed, "f2")
        prog = load_program(load_model(streamed))
        results[same] = {
            name: {op.name: private.materialized_value(op).tobytes() for op in iter_ops(prog.functions[name])
                   if op.op_type == "constexpr_sparse_to_dense"}
            for name in ("f1", "f2")
        }
    same, different = results[True], results[False]
    assert same["f1"] and same["f1"].keys() == different["f1"].keys() == different["f2"].keys()
    assert same["f1"] == same["f2"]
    assert any(different["f1"][k] != different["f2"][k] for k in different["f1"])
    assert shared == {True: True, False: False}
