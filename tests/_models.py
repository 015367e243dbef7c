"""Shared helpers for the conversion, post hoc and parity tests.

Model builders (tiny torch modules; MIL programs with torch-like weights that need no torch),
MIL walking helpers and bitwise comparisons. The reference pruning rules are in _reference.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import coremltools as ct
from coremltools.converters.mil.mil import types

from mil_sparsity import _coremltools_private as private
from mil_sparsity.posthoc import load_program

# the reference rules live in _reference.py; re-exported for tests that import them from here
from _reference import positive_zeros, ref_block, ref_magnitude, ref_n_m, ref_threshold  # noqa: F401

SPARSE_OP = "constexpr_sparse_to_dense"

# Input names under which ops read their weights.
WEIGHT_INPUTS = {
    "conv": ("weight",),
    "conv_transpose": ("weight",),
    "linear": ("weight",),
    "lstm": ("weight_ih", "weight_hh"),
}


# --------------------------------------------------------------------------------------------
# torch models (torch is imported lazily: the parity tests don't need it)
# --------------------------------------------------------------------------------------------
def make_conv_linear_lstm(seed: int = 0) -> Any:
    """conv (small, below the default weight_threshold) -> conv, linear, LSTM; three outputs.

    Weight sizes: small.weight 16x3x3x3 = 432, conv.weight 32x16x3x3 = 4608,
    fc.weight 128x64 = 8192, lstm weight_ih / weight_hh 128x32 = 4096 each.
    """
    import torch

    class ConvLinearLSTM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small = torch.nn.Conv2d(3, 16, 3)
            self.conv = torch.nn.Conv2d(16, 32, 3)
            self.fc = torch.nn.Linear(64, 128)
            self.lstm = torch.nn.LSTM(32, 32)

        def forward(self, x: Any, y: Any, z: Any) -> Any:
            a = self.conv(torch.relu(self.small(x)))
            b = self.fc(y)
            c, _ = self.lstm(z)
            return a, b, c

    torch.manual_seed(seed)
    return ConvLinearLSTM().eval()


CONV_LINEAR_LSTM_SHAPES = [(1, 3, 10, 10), (1, 64), (5, 1, 32)]


def make_mlp(seed: int = 0, outputs: int = 32) -> Any:
    """Linear(64, 128) -> ReLU -> Linear(128, outputs)."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, outputs)
    ).eval()


def trace(model: Any, shapes: list[tuple[int, ...]]) -> Any:
    import torch

    examples = tuple(torch.randn(*shape) for shape in shapes)
    return torch.jit.trace(model, examples if len(examples) > 1 else examples[0])


def lstm_to_mil(weight: np.ndarray) -> np.ndarray:
    """torch LSTM gate order (i, f, g, o) -> MIL lstm gate order (i, f, o, g)."""
    i, f, g, o = np.split(weight, 4, axis=0)
    return np.concatenate([i, f, o, g], axis=0)


def conv_linear_lstm_weights(model: Any) -> dict[tuple[str, str, tuple[int, ...]], np.ndarray]:
    """The torch weights of :func:`make_conv_linear_lstm`, in MIL layout, keyed like
    :func:`weight_vars`: (consumer op type, input name, shape)."""

    def numpy(tensor: Any) -> np.ndarray:
        return tensor.detach().numpy().astype(np.float32)

    weights = {
        ("conv", "weight", (16, 3, 3, 3)): numpy(model.small.weight),
        ("conv", "weight", (32, 16, 3, 3)): numpy(model.conv.weight),
        ("linear", "weight", (128, 64)): numpy(model.fc.weight),
        ("lstm", "weight_ih", (128, 32)): lstm_to_mil(numpy(model.lstm.weight_ih_l0)),
        ("lstm", "weight_hh", (128, 32)): lstm_to_mil(numpy(model.lstm.weight_hh_l0)),
    }
    return weights


# --------------------------------------------------------------------------------------------
# MIL programs and saved models
# --------------------------------------------------------------------------------------------
def torch_like_init(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in float32: the range torch initialises Linear, Conv
    and LSTM parameters in, so these models have the value statistics of the torch ones."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def prezeroed(weight: np.ndarray, fraction: float = 0.6) -> np.ndarray:
    """A copy with the ``fraction`` smallest magnitudes zeroed (a weight pruned in training):
    every element with |w| <= the k-th smallest magnitude, k = int(fraction * size)."""
    k = int(fraction * weight.size)
    cut = np.partition(np.abs(weight).reshape(-1), k - 1)[k - 1]
    return np.where(np.abs(weight) <= cut, np.float32(0), weight).astype(weight.dtype)


def _convert(prog: Any, target: Any, **kwargs: Any) -> Any:
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, **kwargs)


def _layer_stack_program(
    target: Any, input_shape: tuple[int, ...], weight_shapes: list[tuple[int, ...]], op_type: str,
    seed: int, prezero: tuple[int, ...],
) -> Any:
    """x -> op -> relu -> op -> ... -> op (no relu after the last), ``op`` a linear or a valid
    conv with weights of ``weight_shapes`` and torch-like values. Layer i's consts are named
    ``op_{2i}_weight`` / ``op_{2i}_bias`` as a traced ``torch.nn.Sequential`` names them (the
    fp16 conversion appends ``_to_fp16``); the layers in ``prezero`` hold 60% zeros."""
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(seed)
    layers = []
    for index, shape in enumerate(weight_shapes):
        fan_in = int(np.prod(shape[1:]))
        weight = torch_like_init(rng, shape, fan_in)
        layers.append((prezeroed(weight) if index in prezero else weight, torch_like_init(rng, shape[:1], fan_in)))
    extra = {"pad_type": "valid"} if op_type == "conv" else {}

    @mb.program(input_specs=[mb.TensorSpec(shape=input_shape)], opset_version=target)
    def prog(x: Any) -> Any:
        for index, (weight, bias) in enumerate(layers):
            if index:
                x = mb.relu(x=x, name=f"relu_{index}")
            x = getattr(mb, op_type)(
                x=x,
                weight=mb.const(val=weight, name=f"op_{2 * index}_weight"),
                bias=mb.const(val=bias, name=f"op_{2 * index}_bias"),
                name=f"{op_type}_{index}",
                **extra,
            )
        return x

    return prog


def mlp_program(
    target: Any, seed: int = 0, sizes: tuple[int, ...] = (64, 128, 32), prezero: tuple[int, ...] = (0,)
) -> Any:
    """x(1, sizes[0]) -> linear -> relu -> ... -> linear (see :func:`_layer_stack_program`)."""
    shapes = [(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    return _layer_stack_program(target, (1, sizes[0]), shapes, "linear", seed, prezero)


def mlp_model(target: Any, seed: int = 0, sizes: tuple[int, ...] = (64, 128, 32), prezero: tuple[int, ...] = (0,), **kwargs: Any) -> Any:
    """:func:`mlp_program` converted to an ML Program (``kwargs`` go to ``ct.convert``)."""
    return _convert(mlp_program(target, seed, sizes, prezero), target, **kwargs)


def conv_model(target: Any, seed: int = 0) -> Any:
    """x(1, 8, 8, 8) -> conv 8->32 3x3 (2304 weights, 60% zeros) -> relu -> conv 32->32 3x3
    (9216) -> relu -> conv 32->4 1x1 (128: below the default weight_threshold)."""
    shapes = [(32, 8, 3, 3), (32, 32, 3, 3), (4, 32, 1, 1)]
    return _convert(_layer_stack_program(target, (1, 8, 8, 8), shapes, "conv", seed, (0,)), target)


def lstm_model(target: Any, seed: int = 0) -> Any:
    """z(5, 1, 32) -> LSTM 32->32 (weight_ih with 60% zeros, weight_hh: 128x32 each) -> linear
    32->128 (128x32)."""
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(seed)
    hidden = 32
    weight_ih = prezeroed(torch_like_init(rng, (4 * hidden, 32), hidden))
    weight_hh = torch_like_init(rng, (4 * hidden, hidden), hidden)
    bias = torch_like_init(rng, (4 * hidden,), hidden) + torch_like_init(rng, (4 * hidden,), hidden)
    fc_weight = torch_like_init(rng, (128, hidden), hidden)
    fc_bias = torch_like_init(rng, (128,), hidden)
    zeros = np.zeros((1, hidden), dtype=np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(5, 1, 32))], opset_version=target)
    def prog(z: Any) -> Any:
        out, _, _ = mb.lstm(
            x=z,
            initial_h=zeros,
            initial_c=zeros,
            weight_ih=mb.const(val=weight_ih, name="lstm_weight_ih"),
            weight_hh=mb.const(val=weight_hh, name="lstm_weight_hh"),
            bias=mb.const(val=bias, name="lstm_bias"),
            direction="forward",
            output_sequence=True,
            recurrent_activation="sigmoid",
            cell_activation="tanh",
            activation="tanh",
            name="lstm",
        )
        return mb.linear(
            x=out, weight=mb.const(val=fc_weight, name="fc_weight"), bias=mb.const(val=fc_bias, name="fc_bias"), name="fc"
        )

    return _convert(prog, target)


def neuralnetwork_mlp() -> Any:
    """:func:`mlp_program` converted to a neuralnetwork model (not an ML Program)."""
    return ct.convert(mlp_program(None), convert_to="neuralnetwork")


def iter_ops(block: Any) -> Iterator[Any]:
    """Every op of ``block`` and of the blocks nested in its ops."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from iter_ops(inner)


def sparse_ops(function: Any) -> list[Any]:
    return [op for op in iter_ops(function) if op.op_type == SPARSE_OP]


def weight_vars(function: Any) -> dict[tuple[str, str, tuple[int, ...]], Any]:
    """(consumer op type, input name, shape) -> the Var the op reads as that weight."""
    found: dict[tuple[str, str, tuple[int, ...]], Any] = {}
    for op in iter_ops(function):
        for input_name in WEIGHT_INPUTS.get(op.op_type, ()):
            var = op.inputs.get(input_name)
            if var is None:
                continue
            key = (op.op_type, input_name, tuple(int(d) for d in var.shape))
            assert key not in found, f"two weights with key {key}"
            found[key] = var
    return found


def dense_value(var: Any) -> np.ndarray:
    """The value a weight Var stands for: a const's value or a sparse op's materialized value."""
    op = var.op
    if op.op_type == SPARSE_OP:
        return np.asarray(private.materialized_value(op))
    assert op.op_type == "const", f"weight produced by {op.op_type}"
    return np.asarray(op.outputs[0].val)


def check_sparse_form(op: Any, ios18: bool) -> None:
    """The op is in the iOS18 form (uint1 mask of the weight's shape) or the iOS16 form
    (uint8 packed mask + uint32 shape), and the mask agrees with nonzero_data."""
    assert op.op_type == SPARSE_OP
    shape = tuple(int(d) for d in op.outputs[0].shape)
    nonzero = op.nonzero_data.val
    mask_var = op.mask
    if ios18:
        assert set(op.inputs) == {"nonzero_data", "mask"}, set(op.inputs)
        assert mask_var.dtype == types.uint1, types.builtin_to_string(mask_var.dtype)
        assert tuple(mask_var.shape) == shape
        bits = np.asarray(mask_var.val).astype(np.uint8).reshape(-1)
        set_bits = int(np.count_nonzero(bits))
    else:
        assert set(op.inputs) == {"nonzero_data", "mask", "shape"}, set(op.inputs)
        assert mask_var.dtype == types.uint8, types.builtin_to_string(mask_var.dtype)
        assert op.shape.dtype == types.uint32, types.builtin_to_string(op.shape.dtype)
        assert tuple(int(d) for d in op.shape.val) == shape
        size = int(np.prod(shape))
        assert mask_var.val.size == (size + 7) // 8
        bits = np.unpackbits(np.asarray(mask_var.val, dtype=np.uint8), bitorder="little")
        assert not bits[size:].any(), "padding bits of the mask must be zero"
        set_bits = int(np.count_nonzero(bits[:size]))
    assert nonzero.ndim == 1
    assert nonzero.size == set_bits
    assert np.count_nonzero(nonzero) == nonzero.size, "nonzero_data must not hold zeros"
    dense = np.asarray(private.materialized_value(op))
    assert dense.shape == shape
    assert dense.dtype == nonzero.dtype


def save_and_load(mlmodel: Any, path: Path) -> Any:
    """Save, reload without compiling, and return the reloaded model's PyMIL program."""
    mlmodel.save(str(path))
    return load_program(ct.models.MLModel(str(path), skip_model_load=True))


def hash_tree(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (a file or a directory)."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    digests: dict[str, str] = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = Path(root) / name
            digests[str(full.relative_to(path))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return digests


# --------------------------------------------------------------------------------------------
# bitwise comparison
# --------------------------------------------------------------------------------------------
_UINT = {np.dtype(np.float16): np.uint16, np.dtype(np.float32): np.uint32}


def bits(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array.view(_UINT[array.dtype])


def assert_bit_equal(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    differ = bits(actual) != bits(expected)
    assert not differ.any(), (
        f"{what}: {int(differ.sum())} of {actual.size} elements differ, first at "
        f"{np.argwhere(differ)[0].tolist()}: {actual[differ][0]!r} != {expected[differ][0]!r}"
    )


# --------------------------------------------------------------------------------------------
# tie-free weights for the parity tests
# --------------------------------------------------------------------------------------------
def distinct_magnitudes(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Random signs and pairwise distinct magnitudes, neighbours at least 4 ulps apart.

    fp16: every fourth fp16 value from 2**-10 up (one per slot, shuffled; below 2**8 for up
    to 4608 elements); fp32: distinct multiples of 2**-12 below ~4. So no two elements tie in
    magnitude, and an interpolation between two neighbouring magnitudes rounded to fp16 (what
    np.percentile does for fp16) still lies strictly between them.
    """
    size = int(np.prod(shape))
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        start = int(np.float16(2.0**-10).view(np.uint16))
        slots = 4 * rng.permutation(size).astype(np.int64)
        magnitudes = (start + slots).astype(np.uint16).view(np.float16)
        assert np.isfinite(magnitudes).all() and float(magnitudes.max()) < 2.0**8
    elif dtype == np.float32:
        grid = rng.choice(4 * size, size=size, replace=False) + 32
        magnitudes = (grid / 4096.0).astype(np.float32)
    else:
        raise TypeError(dtype)
    signs = rng.choice(np.array([-1, 1], dtype=dtype), size=size)
    weight = (magnitudes * signs).astype(dtype).reshape(shape)
    assert np.unique(np.abs(weight)).size == size
    return weight


def separated_blocks(
    rng: np.random.Generator, shape: tuple[int, ...], block_size: int, dim: int, dtype: Any
) -> np.ndarray:
    """Random weights whose blocks (block_size consecutive elements along ``dim``) have L2
    norms at least 1% apart, so rounding the norms to fp16 keeps their order: block pruning is
    then tie-free whatever precision a pruner computes norms in."""
    moved_shape = list(shape)
    moved_shape.append(moved_shape.pop(dim))
    length = moved_shape[-1]
    assert length % block_size == 0
    block_count = int(np.prod(moved_shape)) // block_size
    norms = 0.05 * 1.01 ** rng.permutation(block_count)
    directions = rng.standard_normal((block_count, block_size))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    blocks = directions * norms[:, None]
    weight = np.moveaxis(blocks.reshape(moved_shape), -1, dim).astype(dtype)
    assert weight.shape == tuple(shape)
    # the premise: block norms in float64 and in the weight's own dtype sort the same way
    moved = np.moveaxis(weight, dim, -1).reshape(-1, block_size)
    exact = np.sqrt(np.sum(np.square(moved.astype(np.float64)), axis=1))
    low = np.sqrt(np.sum(moved * moved, axis=1))
    assert np.array_equal(np.argsort(exact), np.argsort(low.astype(np.float64), kind="stable"))
    assert np.unique(low).size == block_count
    return weight


def cond_linear_program(target: Any, w_true: np.ndarray, w_false: np.ndarray, w_out: np.ndarray) -> Any:
    """linear inside both branches of a cond picked by an int flag, then one linear after it."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, w_true.shape[1])), mb.TensorSpec(shape=(1,), dtype=types.int32)],
        opset_version=target,
    )
    def prog(x, flag):
        pred = mb.greater(x=mb.squeeze(x=flag), y=np.int32(0))
        y = mb.cond(
            pred=pred,
            _true_fn=lambda: mb.linear(x=x, weight=w_true),
            _false_fn=lambda: mb.linear(x=x, weight=w_false),
        )
        return mb.linear(x=y, weight=w_out)

    return prog
