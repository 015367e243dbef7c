"""Activation-scored pruning (Wanda) and ``dim=None`` (the reduction axis) in prune_by_magnitude.

* configs: the ``scoring`` field and ``dim=None``: validation, dict round trips, coremltools
  translation keeps explicit dims;
* consumer roles (linear, grouped conv and conv_transpose, matmul consts: GPT-2's ``[in, out]``,
  transposed, x operand, batched) and the reduction axis ``dim=None`` picks per op kind;
* errors before anything changes: conflicting reduction axes, missing calibration option,
  missing statistics, channel-count mismatch; skips with reasons;
* exact results against ``_reference`` (Wanda per output row, block and n:m on scores);
* the report's ``axis`` and ``scoring`` fields; the scoring helpers alone.

Saved packages, streaming, ct.convert and the command line: test_activation_scoring_packages.py.
"""

from __future__ import annotations

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
from mil_sparsity.plan import rules
from mil_sparsity.calibration import ChannelStats
from mil_sparsity.plan.scoring import RowLayout, grouped_conv_scale, row_prune_mask
from _mil_helpers import all_ops, snapshot
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
