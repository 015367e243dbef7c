"""Activation-scored pruning (Wanda) and ``dim=None`` (the reduction axis) in prune_by_magnitude.

* configs: the ``scoring`` field and ``dim=None``: validation, dict round trips, coremltools
  translation keeps explicit dims;
* consumer roles read by both paths (PyMIL ``_graph.consumers``, spec ``_spec_roles.readers``)
  for linear, grouped conv and conv_transpose, and matmul consts (GPT-2's ``[in, out]``,
  transposed, x operand, batched), and the reduction axis ``dim=None`` picks per op kind;
* errors before anything changes: conflicting reduction axes, missing calibration option,
  missing statistics, channel-count mismatch; skips with reasons;
* exact results against ``_reference`` (Wanda per output row, block and n:m on scores), fp32
  through PyMIL and fp16 through a saved package, streaming equal to PyMIL, and during
  ct.convert of a torch model;
* the report's ``axis`` and ``scoring`` fields, and the command line's ``--scoring``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coremltools as ct
from coremltools.converters.mil.mil import Builder as mb

import mil_sparsity as ms
from mil_sparsity import _coremltools_private as private
from mil_sparsity import _graph, _spec_roles, rules
from mil_sparsity.calibration import ChannelStats, collect_activation_stats
from mil_sparsity.posthoc import load_model, load_program
from mil_sparsity.products import NotAProduct, ProductRole
from mil_sparsity.scoring import RowLayout, grouped_conv_scale, row_prune_mask
from mil_sparsity.streaming import compress_package
from mil_sparsity.weight_roles import saved_name
from _mil_helpers import all_ops, one_pass, run_pass, snapshot
from _reference import ref_block, ref_n_m, ref_scored, ref_wanda, ref_wanda_scores

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

MAG = ms.PRUNE_BY_MAGNITUDE

# const -> (reference op, groups, transposed, reduction axis)
PRODUCTS: dict[str, tuple[str, int, bool, int]] = {
    "lin_w": ("linear", 1, False, 1),
    "conv_w": ("conv", 2, False, 1),
    "convt_w": ("conv_transpose", 2, False, 0),
    "mm_y_w": ("matmul_y", 1, False, 0),  # GPT-2 Conv1D: [in, out]
    "mm_yt_w": ("matmul_y", 1, True, 1),
    "mm_x_w": ("matmul_x", 1, False, 1),
    "mm_b_w": ("matmul_y", 1, False, 1),  # [batch, in, out]
}
CHANNELS = {"lin_w": 64, "conv_w": 8, "convt_w": 16, "mm_y_w": 48, "mm_yt_w": 40, "mm_x_w": 24, "mm_b_w": 24}
INPUTS = {"seq": (3, 64), "img": (2, 8, 6, 6), "seq3": (2, 3, 24)}


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {
        "lin_w": (48, 64), "conv_w": (16, 4, 3, 3), "convt_w": (16, 4, 3, 3), "mm_y_w": (48, 40),
        "mm_yt_w": (24, 40), "mm_x_w": (20, 24), "mm_b_w": (2, 24, 16), "add_y": (3, 64),
    }
    out = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    out["lin_w"][0, :8] = 0.25  # ties inside a row
    out["mm_y_w"][:6, 3] = -0.5
    return out


def product_program(target: Any = ct.target.iOS18, w: dict[str, np.ndarray] | None = None) -> Any:
    """Every kind of product weight, plus a const read by ``add`` (not a product)."""
    w = weights() if w is None else w
    specs = [mb.TensorSpec(shape=shape) for shape in INPUTS.values()]

    @mb.program(input_specs=specs, opset_version=target)
    def prog(seq: Any, img: Any, seq3: Any) -> Any:
        const = {name: mb.const(val=value, name=name) for name, value in w.items()}
        lin = mb.linear(x=seq, weight=const["lin_w"], name="lin")
        conv = mb.conv(x=img, weight=const["conv_w"], groups=2, pad_type="same", name="conv")
        convt = mb.conv_transpose(x=conv, weight=const["convt_w"], groups=2, name="convt")
        mm_y = mb.matmul(x=lin, y=const["mm_y_w"], name="mm_y")
        mm_yt = mb.matmul(x=mm_y, y=const["mm_yt_w"], transpose_y=True, name="mm_yt")
        mm_x = mb.matmul(x=const["mm_x_w"], y=mb.transpose(x=mm_yt, perm=[1, 0]), name="mm_x")
        mm_b = mb.matmul(x=seq3, y=const["mm_b_w"], name="mm_b")
        added = mb.add(x=seq, y=const["add_y"], name="add")
        return convt, mm_x, mm_b, added

    return prog


def synthetic_stats(names: dict[str, str] | None = None, seed: int = 1) -> ms.ActivationStats:
    """Positive per-channel statistics for every product const (``names``: const -> stored name)."""
    rng = np.random.default_rng(seed)
    stats = ms.ActivationStats()
    for const, channels in CHANNELS.items():
        name = const if names is None else names[const]
        stats.add("main", name, rng.uniform(0.05, 40.0, channels), 10)
    return stats


def scale_of(stats: ms.ActivationStats, name: str) -> np.ndarray:
    entry = stats.get(name)
    assert entry is not None
    return entry.channel_scale()


def run(prog: Any, config: Any, calibration: Any = None) -> ms.SparsityReport:
    report = ms.SparsityReport()
    graph_pass = private.pass_instance(MAG)
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption

    options = [PassOption("config", config), PassOption("report", report)]
    if calibration is not None:
        options.append(PassOption("calibration", calibration))
    graph_pass.set_options(options)
    graph_pass(prog)
    return report


def pruned_weights(prog: Any) -> dict[str, np.ndarray]:
    """Const name -> the dense value its sparse op stands for."""
    return {
        op.name[: -len("_sparse")]: private.materialized_value(op)
        for op in all_ops(prog)
        if op.op_type == "constexpr_sparse_to_dense"
    }


def by_name(report: ms.SparsityReport) -> dict[str, ms.WeightRecord]:
    return {record.name: record for record in report.records}


# =============================================================================================
# configs
# =============================================================================================
@pytest.mark.parametrize("cls, fields", [
    (ms.MagnitudeConfig, {"target_sparsity": 0.5}),
    (ms.BlockConfig, {"target_sparsity": 0.5, "block_size": 4}),
    (ms.NMConfig, {"n": 2, "m": 4}),
])
def test_scoring_field(cls: type, fields: dict[str, Any]) -> None:
    config = cls(**fields)
    assert config.scoring == "magnitude"
    scored = cls(**fields, scoring="activation")
    assert ms.config_from_dict(scored.to_dict()) == scored and scored.to_dict()["scoring"] == "activation"
    old = {key: value for key, value in config.to_dict().items() if key not in ("scoring", "dim")}
    assert ms.config_from_dict(old) == config  # dicts written before the fields existed
    for bad in ("wanda", "Activation", None, 1):
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.scoring must be one of \['magnitude', 'activation'\], got {bad!r}"):
            cls(**fields, scoring=bad)


def test_dim_none_is_the_default_and_positional_order_is_kept() -> None:
    assert ms.BlockConfig(0.5, 4).dim is None and ms.NMConfig(2, 4).dim is None
    assert ms.BlockConfig(0.5, 4, 0, 100) == ms.BlockConfig(target_sparsity=0.5, block_size=4, dim=0, weight_threshold=100)
    assert ms.MagnitudeConfig(0.5, 100).weight_threshold == 100
    with pytest.raises(TypeError, match="NMConfig.dim must be an int"):
        ms.NMConfig(2, 4, dim=1.0)


def test_coremltools_translation_keeps_explicit_dims() -> None:
    import coremltools.optimize.coreml as cto
    from mil_sparsity.selector import as_selector

    block = as_selector(cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, block_size=2)))
    n_m = as_selector(cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(n_m_ratio=(2, 4))))
    assert block.global_config == ms.BlockConfig(0.5, 2, dim=0)
    assert n_m.global_config == ms.NMConfig(2, 4, dim=1)


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
# dim=None: the reduction axis per op kind
# =============================================================================================
def test_dim_none_uses_the_reduction_axis_per_op() -> None:
    w = weights()
    prog = product_program(w=w)
    report = run(prog, ms.OpSelector(global_config=ms.NMConfig(2, 4, weight_threshold=0),
                                     op_name_configs={"add_y": None}))
    pruned = pruned_weights(prog)
    assert set(pruned) == set(PRODUCTS)
    for name, (_, _, _, axis) in PRODUCTS.items():
        np.testing.assert_array_equal(pruned[name], ref_n_m(w[name], 2, 4, axis), err_msg=name)
        record = by_name(report)[name]
        assert (record.axis, record.scoring) == (axis, "magnitude"), name


def test_gpt2_style_matmul_const_groups_along_the_input_dim() -> None:
    """A [in, out] matmul const: 2:4 groups run along dim 0 (in), where the sum runs."""
    w = weights()
    prog = product_program(w=w)
    run(prog, ms.OpSelector(op_name_configs={"mm_y_w": ms.NMConfig(2, 4, weight_threshold=0)}))
    value = pruned_weights(prog)["mm_y_w"]
    groups = value.reshape(12, 4, 40)  # 4 consecutive input rows per column
    assert np.all(np.count_nonzero(groups, axis=1) <= 2)
    explicit = product_program(w=w)
    run(explicit, ms.OpSelector(op_name_configs={"mm_y_w": ms.NMConfig(2, 4, dim=0, weight_threshold=0)}))
    np.testing.assert_array_equal(pruned_weights(explicit)["mm_y_w"], value)


def test_block_dim_none_and_explicit_dim() -> None:
    w = weights()
    prog = product_program(w=w)
    report = run(prog, ms.OpSelector(op_name_configs={
        "convt_w": ms.BlockConfig(0.5, 2, weight_threshold=0),
        "lin_w": ms.BlockConfig(0.5, 4, dim=-2, weight_threshold=0),
    }))
    pruned = pruned_weights(prog)
    np.testing.assert_array_equal(pruned["convt_w"], ref_block(w["convt_w"], 0.5, 2, 0))
    np.testing.assert_array_equal(pruned["lin_w"], ref_block(w["lin_w"], 0.5, 4, 0))
    assert by_name(report)["convt_w"].axis == 0 and by_name(report)["lin_w"].axis == 0


def shared_program(second: str) -> Any:
    w = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 64))], opset_version=ct.target.iOS18)
    def prog(x: Any) -> Any:
        weight = mb.const(val=w, name="shared_w")
        a = mb.linear(x=x, weight=weight, name="lin")
        if second == "matmul":
            b = mb.matmul(x=x, y=weight, name="mm")
        elif second == "matmul_t":
            b = mb.matmul(x=x, y=weight, transpose_y=True, name="mm")
        else:
            b = mb.add(x=x, y=mb.const(val=w[:2], name="small"), name="other")
        return mb.add(x=a, y=b)

    return prog


@pytest.mark.parametrize("config", [ms.NMConfig(2, 4), ms.BlockConfig(0.5, 4),
                                    ms.MagnitudeConfig(0.5, scoring="activation")], ids=lambda c: c.kind)
def test_const_read_along_different_axes_raises_before_any_change(config: Any) -> None:
    prog = shared_program("matmul")
    before = snapshot(prog)
    stats = ms.ActivationStats()
    stats.add("main", "shared_w", np.ones(64), 1)
    with pytest.raises(ValueError, match=r"'shared_w'.*different reduction axes.*'lin' \(linear\.weight.*'mm' \(matmul\.y"):
        run(prog, config, calibration=stats)
    assert snapshot(prog) == before


def test_const_read_along_the_same_axis_by_two_ops_is_fine() -> None:
    prog = shared_program("matmul_t")  # matmul(x, W^T) sums over W's axis 1, like linear
    report = run(prog, ms.NMConfig(2, 4))
    assert by_name(report)["shared_w"].packed and by_name(report)["shared_w"].axis == 1


def test_dim_none_without_a_product_consumer_is_skipped_with_a_reason() -> None:
    prog = product_program()
    report = run(prog, ms.OpSelector(op_name_configs={"add_y": ms.NMConfig(2, 4, weight_threshold=0)}))
    record = by_name(report)["add_y"]
    assert not record.packed
    assert "dim=None is the reduction axis" in record.reason and "add is not a linear" in record.reason
    report = run(prog, ms.OpSelector(op_name_configs={"add_y": ms.NMConfig(2, 4, dim=1, weight_threshold=0)}))
    assert by_name(report)["add_y"].packed


# =============================================================================================
# activation scoring: errors and skips
# =============================================================================================
def test_activation_without_calibration_option_raises() -> None:
    prog = product_program()
    before = snapshot(prog)
    with pytest.raises(ValueError, match=r"op_name_configs\['lin_w'\] has scoring='activation', which needs the pass option 'calibration'"):
        run(prog, ms.OpSelector(op_name_configs={"lin_w": ms.MagnitudeConfig(0.5, scoring="activation")}))
    assert snapshot(prog) == before


def test_missing_statistics_raise_before_any_weight_is_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    prog = product_program()
    before = snapshot(prog)
    stats = synthetic_stats()
    del stats.entries[("main", "mm_b_w")]  # the last product const of the program
    calls: list[Any] = []
    real = rules.run_handler
    monkeypatch.setattr(rules, "run_handler", lambda *args: calls.append(args) or real(*args))
    with pytest.raises(ValueError, match=r"const 'mm_b_w' \(function 'main'\) is selected with scoring='activation' \(global_config\) but the calibration statistics have no entry"):
        run(prog, ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation"), stats)
    assert calls == [] and snapshot(prog) == before


@pytest.mark.parametrize("name, wrong", [("lin_w", 63), ("conv_w", 4)])
def test_channel_count_mismatch_raises(name: str, wrong: int) -> None:
    prog = product_program()
    stats = synthetic_stats()
    stats.entries[("main", name)] = ChannelStats(np.ones(wrong), 1)
    expected = CHANNELS[name]
    with pytest.raises(ValueError, match=rf"const '{name}'.*statistics have {wrong} channels, expected {expected}"):
        run(prog, ms.OpSelector(op_name_configs={name: ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation")}), stats)


def test_activation_on_a_non_product_weight_is_skipped_with_a_reason() -> None:
    prog = product_program()
    report = run(prog, ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation"), synthetic_stats())
    record = by_name(report)["add_y"]
    assert not record.packed and record.scoring is None
    assert "scoring='activation' needs a weight read as a linear/conv/conv_transpose/matmul operand" in record.reason
    assert "give it its own magnitude config through the selector" in record.reason


def test_calibration_option_takes_a_path_and_rejects_other_types(tmp_path: Path) -> None:
    stats = synthetic_stats()
    stats.save(tmp_path / "stats.npz")
    a, b = product_program(), product_program()
    config = ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation")
    run(a, config, str(tmp_path / "stats.npz"))
    run(b, config, stats)
    assert {k: v.tobytes() for k, v in pruned_weights(a).items()} == {k: v.tobytes() for k, v in pruned_weights(b).items()}
    graph_pass = private.pass_instance(MAG)
    with pytest.raises(TypeError, match="option calibration must be an ActivationStats"):
        graph_pass.calibration = 3
    with pytest.raises(ValueError, match="calibration"):
        graph_pass.calibration = str(tmp_path / "missing.npz")


# =============================================================================================
# activation scoring: exact results
# =============================================================================================
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_wanda_is_exact_per_output_row(sparsity: float) -> None:
    w = weights()
    w["lin_w"][3, 5] = np.nan  # NaN scores are pruned last
    prog = product_program(w=w)
    stats = synthetic_stats()
    report = run(prog, ms.OpSelector(global_config=ms.MagnitudeConfig(sparsity, weight_threshold=0, scoring="activation"),
                                     op_name_configs={"add_y": None}), stats)
    pruned = pruned_weights(prog) if sparsity > 0 else {}
    for name, (op, groups, transposed, axis) in PRODUCTS.items():
        expected = ref_wanda(w[name], scale_of(stats, name), sparsity, op, groups, transposed)
        got = pruned.get(name, w[name])
        np.testing.assert_array_equal(got, expected, err_msg=name)
        record = by_name(report)[name]
        if record.packed:
            assert (record.scoring, record.axis) == ("activation", axis)


def test_wanda_differs_from_magnitude() -> None:
    """The scale changes what is pruned (the test above would pass for any per-row rule
    otherwise only by accident)."""
    w = weights()
    prog = product_program(w=w)
    run(prog, ms.OpSelector(op_name_configs={"lin_w": ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation")}), synthetic_stats())
    flat = product_program(w=w)
    run(flat, ms.OpSelector(op_name_configs={"lin_w": ms.MagnitudeConfig(0.5, weight_threshold=0)}))
    assert not np.array_equal(pruned_weights(prog)["lin_w"], pruned_weights(flat)["lin_w"])


@pytest.mark.parametrize("kind", ["n_m", "block"])
def test_block_and_n_m_rank_activation_scores(kind: str) -> None:
    w = weights()
    prog = product_program(w=w)
    stats = synthetic_stats()
    config = (ms.NMConfig(2, 4, weight_threshold=0, scoring="activation") if kind == "n_m"
              else ms.BlockConfig(0.5, 2, weight_threshold=0, scoring="activation"))
    run(prog, ms.OpSelector(global_config=config, op_name_configs={"add_y": None}), stats)
    pruned = pruned_weights(prog)
    for name, (op, groups, transposed, axis) in PRODUCTS.items():
        scores = ref_wanda_scores(w[name], scale_of(stats, name), op, groups, transposed)
        rule = (lambda s: ref_n_m(s, 2, 4, axis)) if kind == "n_m" else (lambda s: ref_block(s, 0.5, 2, axis))
        np.testing.assert_array_equal(pruned[name], ref_scored(w[name], scores, rule), err_msg=name)


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
    from mil_sparsity import posthoc

    pipeline = one_pass(MAG, config=STREAM_CONFIGS["magnitude"], calibration=synthetic_stats())
    assert posthoc._streamable(pipeline)
    with pytest.raises(ValueError, match="needs the pass option 'calibration'"):
        compress_package(package, tmp_path / "out.mlpackage", STREAM_CONFIGS["magnitude"])
    assert not (tmp_path / "out.mlpackage").exists()
    with pytest.raises(ValueError, match="calibration statistics have no entry"):
        compress_package(package, tmp_path / "out.mlpackage", pipeline)
    assert not (tmp_path / "out.mlpackage").exists()


# =============================================================================================
# the report
# =============================================================================================
def test_report_fields_and_table() -> None:
    prog = product_program()
    report = run(prog, ms.OpSelector(op_name_configs={
        "lin_w": ms.MagnitudeConfig(0.5, weight_threshold=0, scoring="activation"),
        "mm_y_w": ms.NMConfig(2, 4, weight_threshold=0),
        "conv_w": ms.MagnitudeConfig(0.5, weight_threshold=0),
    }), synthetic_stats())
    rows = by_name(report)
    assert (rows["lin_w"].scoring, rows["lin_w"].axis) == ("activation", 1)
    assert (rows["mm_y_w"].scoring, rows["mm_y_w"].axis) == ("magnitude", 0)
    assert (rows["conv_w"].scoring, rows["conv_w"].axis) == ("magnitude", None)
    assert (rows["add_y"].scoring, rows["add_y"].axis) == (None, None)
    data = rows["lin_w"].to_dict()
    assert data["scoring"] == "activation" and data["axis"] == 1
    table = report.format_table().splitlines()
    assert table[0].split()[7:9] == ["scoring", "axis"]
    lin = next(line for line in table if line.startswith("prune_by_magnitude  lin_w "))
    assert lin.split()[7:9] == ["activation", "1"]


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
    # (conv.weight_to_fp16); the statistics and the saved models hold conv_weight_to_fp16
    assert len(pruned) == 2 and {saved_name(r.name) for r in report.packed} == set(pruned)
    assert any(saved_name(r.name) != r.name for r in report.packed)
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
    assert main(["prune", str(package), "-o", str(out), "--n-m", "2:4", "--scoring", "activation"]) != 0
    assert not out.exists()


# =============================================================================================
# the scoring helpers alone (pure numpy)
# =============================================================================================
def loop_row_mask(scores: np.ndarray, row_axes: tuple[int, ...], sparsity: float) -> np.ndarray:
    """Per row (elements sharing the indices on ``row_axes``), the round(s * n) lowest scores,
    ties by row-major position, NaN last: a loop over np.ndindex."""
    rows: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for index in np.ndindex(*scores.shape):
        rows.setdefault(tuple(index[a] for a in row_axes), []).append(index)
    mask = np.zeros(scores.shape, dtype=bool)
    for members in rows.values():
        values = np.array([scores[i] for i in members])
        for position in np.argsort(values, kind="stable")[: round(sparsity * len(members))]:
            mask[members[position]] = True
    return mask


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_row_prune_mask_matches_a_loop(data: Any) -> None:
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True))
    sparsity = data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.6, 1.0]))
    levels = data.draw(st.sampled_from([2, 4, 1000]))  # few levels: many ties
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    scores = rng.integers(0, levels, shape).astype(np.float32)
    if scores.size > 1 and data.draw(st.booleans()):
        scores.reshape(-1)[rng.integers(0, scores.size)] = np.nan
    mask = row_prune_mask(scores, RowLayout(shape, tuple(axes)), sparsity)
    np.testing.assert_array_equal(mask, loop_row_mask(scores, tuple(axes), sparsity))


@settings(max_examples=30, deadline=None)
@given(groups=st.integers(1, 4), out_per_group=st.integers(1, 3), in_per_group=st.integers(1, 3), kernel=st.integers(0, 2))
def test_grouped_conv_scale_gives_each_output_its_groups_channels(groups: int, out_per_group: int, in_per_group: int, kernel: int) -> None:
    shape = (groups * out_per_group, in_per_group) + (3,) * kernel
    scale = np.arange(groups * in_per_group, dtype=np.float32) + 1
    laid_out = np.broadcast_to(grouped_conv_scale(scale, shape, groups), shape)
    for index in np.ndindex(*shape):
        channel = (index[0] // out_per_group) * in_per_group + index[1]
        assert laid_out[index] == scale[channel]
