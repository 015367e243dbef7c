"""The passes on real architectures: Hugging Face GPT-2, BERT and ViT (``tests/_zoo.py``).

Each model goes through ``ct.convert`` with each pass appended to the default pipeline, at
iOS16 (fp32 weights, the iOS16 sparse op) and iOS18 (fp16 weights, the uint1-mask op), and
its saved package goes through ``apply_pipeline`` post hoc, streamed and via PyMIL. Every
result is checked weight by weight against the same model converted without our pass:

* exactly the consts the rules select are packed (rank >= 2, float, more than
  ``weight_threshold`` elements; n:m needs ``shape[dim] >= m``; threshold and pack need
  enough zeros), the report says so, and every other const is left bit for bit;
* each sparse weight materializes (coremltools' own decoding) to the pruned dense array
  computed here by the slow reference rules of ``tests/_mil_helpers.py``, bit for bit, and
  has exactly as many zeros as the rule prescribes (``round(s*N)``, ``n`` per group of ``m``,
  whole blocks, ``|w| <= t``);
* the sparse op has the form of the target (iOS16: packed uint8 mask and a shape; iOS18: a
  uint1 mask of the weight's shape).

``sparse_pack`` runs on copies of the models whose 2D+ weights were half zeroed in torch.
Models are converted at iOS16 or later here; post hoc on an iOS15 conversion is issue 12,
item 1. Llama-family models are out of scope: coremltools 8.3 and 9.0 cannot convert
``LlamaForCausalLM``, ``MistralForCausalLM`` or ``Qwen2ForCausalLM`` from transformers 5 (tiny
random configs, eager attention). As is, the mask helpers fail ("PyTorch convert function for
op 'diff' not implemented"); with a prepared 4D mask and position ids (as ``_zoo`` does for
GPT-2), the rotary embedding's ``x.shape[-1] // 2`` traces to ``floor_divide`` + ``aten::Int``
on a shape, and coremltools' ``int`` converter fails ("only 0-dimensional arrays can be
converted to Python scalars").
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import mil_sparsity as ms  # noqa: E402
from mil_sparsity import _coremltools_private as private  # noqa: E402

import _zoo  # noqa: E402
from _mil_helpers import one_pass  # noqa: E402
from _models import assert_bit_equal, hash_tree  # noqa: E402
from _reference import positive_zeros, ref_block, ref_magnitude, ref_n_m, ref_threshold  # noqa: E402

FAMILIES = ("gpt2", "bert", "vit")

#: target name -> (deployment target, compute precision of the conversion)
TARGETS = {
    "iOS16": (ct.target.iOS16, ct.precision.FLOAT32),
    "iOS18": (ct.target.iOS18, ct.precision.FLOAT16),
}

#: config kind -> (pass, config); sparse_pack runs on the torch-zeroed copies
CONFIGS: dict[str, tuple[str, ms.SparsityConfig]] = {
    "threshold": (ms.PRUNE_BY_THRESHOLD, ms.ThresholdConfig(threshold=0.02, minimum_sparsity_percentile=0.3)),
    "magnitude": (ms.PRUNE_BY_MAGNITUDE, ms.MagnitudeConfig(target_sparsity=0.6)),
    "block": (ms.PRUNE_BY_MAGNITUDE, ms.BlockConfig(target_sparsity=0.5, block_size=4, dim=1)),
    "n:m": (ms.PRUNE_BY_MAGNITUDE, ms.NMConfig(n=2, m=4, dim=1)),
    "pack": (ms.SPARSE_PACK, ms.PackConfig()),
}

ZEROED_FRACTION = 0.5  # of every 2D+ torch weight, for sparse_pack


# --------------------------------------------------------------------------------------------
# models, conversions and packages (built once per session)
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def zeroed(family: str) -> _zoo.ZooModel:
    """A copy of the zoo model whose 2D+ weights have their smallest half (by |w|, per
    tensor) set to zero in torch, as training-time pruning leaves them."""
    import torch

    original = _zoo.build(family)
    module = copy.deepcopy(original.module)
    with torch.no_grad():
        for parameter in module.parameters():  # shared (tied) parameters come once
            if parameter.dim() >= 2:
                magnitude = parameter.abs().flatten()
                cut = magnitude.kthvalue(round(ZEROED_FRACTION * magnitude.numel())).values
                parameter[parameter.abs() <= cut] = 0
    return dataclasses.replace(original, module=module.eval())


def model_for(family: str, kind: str) -> _zoo.ZooModel:
    return zeroed(family) if kind == "pack" else _zoo.build(family)


@functools.lru_cache(maxsize=None)
def baseline(family: str, kind: str, target: str) -> Any:
    """The model converted with the default pipeline only (what our passes see)."""
    deployment, precision = TARGETS[target]
    if kind != "pack":
        return _zoo.converted(family, deployment, precision)
    return zeroed(family).convert(deployment, precision)


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``(family, kind, target)`` -> path of the saved baseline package (saved on first use)."""
    root = tmp_path_factory.mktemp("transformers")

    @functools.lru_cache(maxsize=None)
    def path(family: str, kind: str, target: str) -> Path:
        source = "zeroed" if kind == "pack" else "dense"
        package = root / f"{family}-{source}-{target}.mlpackage"
        baseline(family, kind, target).save(str(package))
        return package

    return path


# --------------------------------------------------------------------------------------------
# reading programs
# --------------------------------------------------------------------------------------------
def program_of(mlmodel: Any) -> Any:
    """The PyMIL program of an MLModel, read back from its spec and weight files (the same for
    both post-hoc paths and for ct.convert's result)."""
    return private.program_from_spec(mlmodel.get_spec(), mlmodel.weights_dir)


def ops_of(prog: Any) -> list[Any]:
    return [op for function in prog.functions.values() for op in _zoo.iter_ops(function)]


@functools.lru_cache(maxsize=None)
def dense_consts(family: str, kind: str, target: str) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """Baseline const name -> (value, consumer op types), for every tensor const."""
    consts = {}
    for op in ops_of(program_of(baseline(family, kind, target))):
        value = op.outputs[0].val if op.op_type == "const" else None
        if isinstance(value, np.ndarray) and value.ndim > 0:
            consts[op.name] = (value, tuple(child.op_type for child in op.outputs[0].child_ops))
    return consts


# --------------------------------------------------------------------------------------------
# the rules, computed here
# --------------------------------------------------------------------------------------------
def eligible(value: np.ndarray, consumers: tuple[str, ...], config: ms.SparsityConfig) -> bool:
    """The README's "a weight is considered" rule."""
    return (
        value.dtype in (np.float16, np.float32)
        and value.ndim >= 2
        and value.size > config.weight_threshold
        and not any(kind.startswith("constexpr_") for kind in consumers)
    )


#: op types whose weights (conv, linear) or operands (matmul) structured configs prune by default
STRUCTURED_SCOPE = frozenset({"conv", "conv_transpose", "linear", "matmul"})


def groups_along(value: np.ndarray, dim: int, size: int) -> np.ndarray:
    """(..., groups, size): runs of ``size`` consecutive elements along ``dim``, the last one
    padded with zeros."""
    moved = np.moveaxis(value, dim, -1)
    pad = -moved.shape[-1] % size
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    return padded.reshape(*moved.shape[:-1], -1, size)


def zero_count(value: np.ndarray, config: ms.SparsityConfig) -> int:
    """What the rule counts: zero elements, or for blocks the all-zero blocks."""
    if isinstance(config, ms.BlockConfig):
        return int(np.all(groups_along(value, config.dim, config.block_size) == 0, axis=-1).sum())
    return int(np.count_nonzero(value == 0))


def expected_weight(
    value: np.ndarray, consumers: tuple[str, ...], config: ms.SparsityConfig
) -> Optional[tuple[np.ndarray, int]]:
    """(pruned dense weight, its ``zero_count`` by the rule) for a considered weight, or None
    when the rule skips it. Zeros already in the weight (BERT's padding embedding row) are the
    smallest magnitudes, so they are pruned first. Block and n:m apply by default only to
    weights that every consumer reads as a conv/linear weight or matmul operand (GPT-2's tied
    embedding also feeds a gather)."""
    size = value.size
    zeros = zero_count(value, config)
    if isinstance(config, (ms.BlockConfig, ms.NMConfig)) and not set(consumers) <= STRUCTURED_SCOPE:
        return None
    if isinstance(config, ms.ThresholdConfig):
        pruned = int(np.count_nonzero(np.abs(value.astype(np.float64)) <= config.threshold))
        if pruned / size < config.minimum_sparsity_percentile:
            return None
        return ref_threshold(value, config.threshold), pruned
    if isinstance(config, ms.MagnitudeConfig):
        return ref_magnitude(value, config.target_sparsity), max(zeros, round(config.target_sparsity * size))
    if isinstance(config, ms.BlockConfig):
        blocks = groups_along(value, config.dim, config.block_size).shape
        count = round(config.target_sparsity * int(np.prod(blocks[:-1])))
        return ref_block(value, config.target_sparsity, config.block_size, config.dim), max(zeros, count)
    if isinstance(config, ms.NMConfig):
        if value.shape[config.dim] < config.m:
            return None
        assert value.shape[config.dim] % config.m == 0, "the zoo's weights hold whole n:m groups"
        per_group = np.count_nonzero(groups_along(value, config.dim, config.m) == 0, axis=-1)
        return ref_n_m(value, config.n, config.m, config.dim), int(np.maximum(per_group, config.n).sum())
    if isinstance(config, ms.PackConfig):
        sparsity = zeros / size
        assert sparsity < 0.02 or sparsity >= 0.25, f"ambiguous pack decision at sparsity {sparsity}"
        return (value, zeros) if sparsity >= 0.25 else None
    raise TypeError(config)


def saved_name(name: str) -> str:
    """The name an op gets in the saved model: coremltools' backend pipeline, which runs after
    every pass of ``ct.convert``'s pipeline, replaces each character outside [a-zA-Z0-9_] with
    "_" (torch parameter names come with dots)."""
    return re.sub("[^a-zA-Z0-9_]", "_", name)


def check(
    prog: Any, report: ms.SparsityReport, family: str, kind: str, target: str, *, in_convert: bool
) -> None:
    """Every weight of ``prog`` against the baseline conversion and the reference rules.
    ``in_convert``: the report comes from inside ct.convert (names before sanitizing)."""
    pass_name, config = CONFIGS[kind]
    dense = dense_consts(family, kind, target)
    expected = {}
    skipped = set()
    for name, (value, consumers) in dense.items():
        if eligible(value, consumers, config):
            outcome = expected_weight(value, consumers, config)
            if outcome is None:
                skipped.add(name)
            else:
                expected[name] = outcome
    assert expected, "the config packs nothing on this model: the test would be empty"

    ops = ops_of(prog)
    sparse = {op.name: op for op in ops if op.op_type == "constexpr_sparse_to_dense"}
    assert set(sparse) == {f"{name}_sparse" for name in expected}

    for name, (pruned, zeros) in expected.items():
        op = sparse[f"{name}_sparse"]
        actual = private.materialized_value(op)
        what = f"{family}/{kind}/{target}: {name}"
        assert_bit_equal(actual, positive_zeros(pruned), what)
        assert zero_count(actual, config) == zeros, what
        assert tuple(child.op_type for child in op.outputs[0].child_ops) == dense[name][1], what
        mask = op.mask.val
        if target == "iOS16":
            assert mask.dtype == np.uint8 and mask.size == -(-pruned.size // 8), what
            assert tuple(op.shape.val) == pruned.shape, what
        else:
            assert mask.shape == pruned.shape and "shape" not in op.inputs, what

    # every other const is still there, bit for bit
    remaining = {op.name: op.outputs[0].val for op in ops if op.op_type == "const"}
    for name, (value, _) in dense.items():
        if name not in expected:
            kept = np.asarray(remaining[name])
            assert (kept.dtype, kept.shape, kept.tobytes()) == (value.dtype, value.shape, value.tobytes()), name

    rename = saved_name if in_convert else str
    records = {rename(record.name): record for record in report if record.pass_name == pass_name}
    assert len(records) == len([record for record in report if record.pass_name == pass_name])
    assert {name for name, record in records.items() if record.packed} == set(expected)
    for name in skipped:
        assert not records[name].packed and records[name].reason, name


def default_pipeline_with(kind: str, report: ms.SparsityReport) -> Any:
    """ct.convert's default pipeline, then the pass of ``kind``."""
    pass_name, config = CONFIGS[kind]
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(pass_name)
    pipeline.set_options(pass_name, {"config": config, "report": report})
    return pipeline


CASES = [
    pytest.param(family, kind, target, id=f"{family}-{kind}-{target}")
    for family in FAMILIES
    for kind in CONFIGS
    for target in TARGETS
]


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "kind", "target"), CASES)
def test_convert_with_pass(family: str, kind: str, target: str) -> None:
    """ct.convert with the pass appended to the default pipeline."""
    report = ms.SparsityReport()
    deployment, precision = TARGETS[target]
    pipeline = default_pipeline_with(kind, report)
    mlmodel = model_for(family, kind).convert(deployment, precision, pass_pipeline=pipeline)
    check(program_of(mlmodel), report, family, kind, target, in_convert=True)


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "pymil"])
@pytest.mark.parametrize(("family", "kind", "target"), CASES)
def test_post_hoc_on_saved_package(packages: Any, family: str, kind: str, target: str, streaming: bool) -> None:
    """apply_pipeline on the saved package, both paths; the input package keeps its bytes."""
    path = packages(family, kind, target)
    before = hash_tree(path)
    report = ms.SparsityReport()
    pass_name, config = CONFIGS[kind]
    pipeline = one_pass(pass_name, config=config, report=report)
    result = ms.apply_pipeline(str(path), pipeline, streaming=streaming)
    check(program_of(result), report, family, kind, target, in_convert=False)
    assert result.get_spec().specificationVersion == baseline(family, kind, target).get_spec().specificationVersion
    assert hash_tree(path) == before  # same bytes (coremltools rewrites Manifest.json when it opens a package)


def test_convert_report_names_the_weights_as_the_saved_model_does() -> None:
    report = ms.SparsityReport()
    deployment, precision = TARGETS["iOS18"]
    pipeline = default_pipeline_with("magnitude", report)
    mlmodel = _zoo.build("bert").convert(deployment, precision, pass_pipeline=pipeline)
    names = {op.name for op in ops_of(program_of(mlmodel))}
    assert report.packed and all(f"{record.name}_sparse" in names for record in report.packed)
