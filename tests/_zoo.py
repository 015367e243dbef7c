"""A zoo of real architectures for the tests: torch models, their inputs, their conversions.

Families (``FAMILIES``): Hugging Face ``transformers`` GPT-2 (LM head), BERT (base model) and
ViT (image classifier) from small random configs (2 layers, hidden 64, no download); a
torchvision-style CNN written with ``torch.nn``; a two-layer LSTM. All have fixed input shapes.

    zoo = build("bert")                        # cached per session
    inputs = zoo.random_inputs(seed=1)         # {"input_ids": int32 array, ...}
    expected = zoo.torch_outputs(inputs)       # {"last_hidden_state": float32 array, ...}
    mlmodel = converted("bert", ct.target.iOS16, ct.precision.FLOAT32)   # cached per session
    mlmodel = zoo.convert(ct.target.iOS18, pass_pipeline=pipeline)      # not cached

``bert(layers=..., hidden=..., batch=..., sequence=...)`` builds a BERT of other sizes (not
cached; benchmarks/bench_reference.py uses BERT-base sizes).

Input and output names of the converted model are the ones in ``zoo.input_specs`` and
``zoo.output_names``; integer inputs are int32 in the converted model (torch sees int64).

transformers 5 GPT-2 and BERT do not convert as-is with coremltools 9 (torch.jit.trace and
torch.export alike): without an attention mask, masking_utils' packed-sequence check uses
``torch.diff``; with a 2D mask, its mask builder uses ``Tensor.new_ones``; coremltools has no
converter for either. BERT's default position ids slice a buffer by a traced length, which
coremltools' ``int`` conversion rejects ("only 0-dimensional arrays can be converted").
So both are wrapped to receive a prepared 4D additive attention mask (-1e4 where masked, as
transformers 4 built it; a 4D mask is passed through unchanged) and explicit position ids.
ViT converts as-is. Attention is "eager" (plain matmul/softmax).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

import coremltools as ct

FAMILIES = ("gpt2", "bert", "vit", "cnn", "lstm")
TARGETS = (ct.target.iOS15, ct.target.iOS16, ct.target.iOS17, ct.target.iOS18)
PRECISIONS = (ct.precision.FLOAT32, ct.precision.FLOAT16)

MASKED = -1.0e4  # additive attention mask value (finite in fp16, unlike finfo(float32).min)

# Small transformer dimensions shared by GPT-2, BERT and ViT.
LAYERS, HIDDEN, HEADS, INTERMEDIATE, VOCAB = 2, 64, 4, 128, 100
BATCH, SEQUENCE = 2, 16


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, fixed shape, numpy dtype (int32 or float32); integer inputs are
    drawn uniformly from ``[0, high)``."""

    name: str
    shape: tuple[int, ...]
    dtype: type
    high: int = 0


@dataclass(frozen=True)
class ZooModel:
    """A torch model in eval mode whose forward takes the inputs positionally (in
    ``input_specs`` order) and returns a tuple of tensors (named ``output_names``)."""

    family: str
    module: Any
    input_specs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    make_inputs: Callable[["ZooModel", np.random.Generator], dict[str, np.ndarray]]

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs by name: float32 standard normal, int32 uniform (BERT: a padding mask)."""
        return self.make_inputs(self, np.random.default_rng(seed))

    def torch_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The torch model's float32 outputs by name (integer inputs passed as int64)."""
        import torch

        args = [_to_torch(inputs[spec.name]) for spec in self.input_specs]
        with torch.no_grad():
            outputs = self.module(*args)
        return {name: out.detach().numpy() for name, out in zip(self.output_names, outputs)}

    @functools.cached_property
    def traced(self) -> Any:
        """``torch.jit.trace`` of the module on example inputs (what ``convert`` converts)."""
        import torch

        example = [_to_torch(value) for value in self.random_inputs(0).values()]
        return torch.jit.trace(self.module, tuple(example), strict=False)

    def convert(
        self,
        target: Any = ct.target.iOS16,
        precision: Any = ct.precision.FLOAT32,
        pass_pipeline: Optional[Any] = None,
    ) -> Any:
        """``ct.convert`` to an ML Program (never cached: see :func:`converted`)."""
        kwargs = {} if pass_pipeline is None else {"pass_pipeline": pass_pipeline}
        return ct.convert(
            self.traced,
            inputs=[ct.TensorType(name=s.name, shape=s.shape, dtype=s.dtype) for s in self.input_specs],
            outputs=[ct.TensorType(name=name) for name in self.output_names],
            convert_to="mlprogram",
            minimum_deployment_target=target,
            compute_precision=precision,
            **kwargs,
        )


def _to_torch(array: np.ndarray) -> Any:
    import torch

    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _default_inputs(zoo: ZooModel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    inputs = {}
    for spec in zoo.input_specs:
        if spec.dtype == np.int32:
            inputs[spec.name] = rng.integers(0, spec.high, size=spec.shape, dtype=np.int32)
        else:
            inputs[spec.name] = rng.standard_normal(spec.shape).astype(np.float32)
    return inputs


def _bert_inputs(zoo: ZooModel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids and a padding mask: row i keeps a random prefix of at least half the tokens."""
    inputs = _default_inputs(zoo, rng)
    batch, sequence = inputs["input_ids"].shape
    lengths = rng.integers(sequence // 2, sequence + 1, size=batch)
    inputs["attention_mask"] = (np.arange(sequence)[None, :] < lengths[:, None]).astype(np.int32)
    return inputs


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------
def _gpt2() -> ZooModel:
    import torch
    import transformers

    config = transformers.GPT2Config(
        n_layer=LAYERS, n_embd=HIDDEN, n_head=HEADS, n_inner=INTERMEDIATE, n_positions=64,
        vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, use_cache=False,
        attn_implementation="eager",
    )
    model = transformers.GPT2LMHeadModel(config).eval()

    class CausalLM(torch.nn.Module):
        """input_ids -> logits, with a prepared causal mask and positions."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            causal = torch.triu(torch.full((SEQUENCE, SEQUENCE), MASKED), diagonal=1)
            self.register_buffer("causal_mask", causal[None, None])
            self.register_buffer("positions", torch.arange(SEQUENCE)[None])

        def forward(self, input_ids: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=self.causal_mask, position_ids=self.positions)
            return (out.logits,)

    return ZooModel(
        "gpt2", CausalLM().eval(), (InputSpec("input_ids", (BATCH, SEQUENCE), np.int32, VOCAB),),
        ("logits",), _default_inputs,
    )


def bert(
    layers: int = LAYERS, hidden: int = HIDDEN, heads: int = HEADS, intermediate: int = INTERMEDIATE,
    batch: int = BATCH, sequence: int = SEQUENCE, vocab: int = VOCAB,
) -> ZooModel:
    """A BertModel of the given sizes (random init from the current torch seed, not cached):
    ``build("bert")`` is ``bert()`` at the small defaults; the benchmark uses BERT-base sizes."""
    import torch
    import transformers

    config = transformers.BertConfig(
        num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
        intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=max(64, sequence),
        attn_implementation="eager",
    )
    model = transformers.BertModel(config).eval()

    class Encoder(torch.nn.Module):
        """(input_ids, attention_mask 0/1) -> (last_hidden_state, pooler_output)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("positions", torch.arange(sequence)[None])
            self.register_buffer("token_types", torch.zeros(batch, sequence, dtype=torch.long))

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            additive = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * MASKED
            out = self.model(
                input_ids=input_ids, attention_mask=additive,
                token_type_ids=self.token_types, position_ids=self.positions,
            )
            return out.last_hidden_state, out.pooler_output

    return ZooModel(
        "bert", Encoder().eval(),
        (
            InputSpec("input_ids", (batch, sequence), np.int32, vocab),
            InputSpec("attention_mask", (batch, sequence), np.int32, 2),
        ),
        ("last_hidden_state", "pooler_output"), _bert_inputs,
    )


def _vit() -> ZooModel:
    import torch
    import transformers

    config = transformers.ViTConfig(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE, image_size=32, patch_size=8, num_labels=10,
        attn_implementation="eager",
    )
    model = transformers.ViTForImageClassification(config).eval()

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return (self.model(pixel_values=pixel_values).logits,)

    return ZooModel(
        "vit", Classifier().eval(), (InputSpec("pixel_values", (BATCH, 3, 32, 32), np.float32),),
        ("logits",), _default_inputs,
    )


def _cnn() -> ZooModel:
    """conv (groups, dilation, stride), batch_norm, relu/relu6/silu/hardswish, max/avg pool,
    adaptive avg pool, nearest and bilinear upsample, concat, add, flatten, linear."""
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
            self.grouped = nn.Sequential(nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=4), nn.BatchNorm2d(32), nn.SiLU())
            self.pointwise = nn.Sequential(nn.Conv2d(32, 32, 1), nn.Hardswish())
            self.max_pool = nn.MaxPool2d(2)
            self.avg_pool = nn.AvgPool2d(3, stride=2, padding=1)
            self.up_nearest = nn.Upsample(scale_factor=2, mode="nearest")
            self.up_bilinear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.merge = nn.Conv2d(64, 32, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, image: Any) -> Any:
            x = self.stem(image)                      # 16 x 16 x 16
            x = x + self.depthwise(x)
            y = self.pointwise(self.grouped(x))       # 32 x 16 x 16
            a = self.up_nearest(self.max_pool(y))     # 32 x 16 x 16
            b = self.up_bilinear(self.avg_pool(y))    # 32 x 16 x 16
            z = self.merge(torch.cat([a, b], dim=1))  # 32 x 16 x 16
            return (self.fc(torch.flatten(self.pool(z + y), 1)),)

    model = SmallCNN()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return ZooModel(
        "cnn", model.eval(), (InputSpec("image", (1, 3, 32, 32), np.float32),), ("logits",), _default_inputs
    )


def _lstm() -> ZooModel:
    """Two-layer batch-first LSTM over a (batch, time, features) input, then a linear head."""
    import torch
    from torch import nn

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
            self.head = nn.Linear(32, 8)

        def forward(self, sequence: Any) -> Any:
            states, _ = self.lstm(sequence)
            return (self.head(states),)

    return ZooModel(
        "lstm", Recurrent().eval(), (InputSpec("sequence", (BATCH, 12, 16), np.float32),),
        ("output",), _default_inputs,
    )


_BUILDERS: dict[str, Callable[[], ZooModel]] = {
    "gpt2": _gpt2, "bert": bert, "vit": _vit, "cnn": _cnn, "lstm": _lstm,
}


@functools.lru_cache(maxsize=None)
def build(family: str, seed: int = 0) -> ZooModel:
    """The family's model with torch's RNG seeded (cached: one build per session)."""
    import torch

    if family not in _BUILDERS:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
    torch.manual_seed(seed)
    return _BUILDERS[family]()


@functools.lru_cache(maxsize=None)
def converted(family: str, target: Any = ct.target.iOS16, precision: Any = ct.precision.FLOAT32) -> Any:
    """``build(family).convert(target, precision)`` with the default pipeline, cached per
    session. Callers must not modify the returned MLModel."""
    return build(family).convert(target, precision)


# --------------------------------------------------------------------------------------------
# program inspection
# --------------------------------------------------------------------------------------------
def iter_ops(block: Any) -> Iterator[Any]:
    """Every op of ``block`` and of the blocks nested in its ops (cond, while_loop)."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from iter_ops(inner)


def op_types(model: Any) -> set[str]:
    """The op types of every function of an MLModel (from its PyMIL program) or a Program."""
    program = getattr(model, "_mil_program", None) or model
    return {op.op_type for function in program.functions.values() for op in iter_ops(function)}
