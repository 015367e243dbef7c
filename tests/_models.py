"""Shared helpers for the conversion, post hoc and parity tests.

Model builders (tiny torch modules, MIL programs), MIL walking helpers, and independent numpy
reference implementations of the pruning rules, written for clarity rather than speed so they
can check the library's vectorised kernels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import coremltools as ct
from coremltools.converters.mil.mil import types

from mil_sparsity.posthoc import load_program

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
        return np.asarray(op.materialized_val_inference())
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
    dense = np.asarray(op.materialized_val_inference())
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


def positive_zeros(array: np.ndarray) -> np.ndarray:
    """``-0.0`` -> ``+0.0`` (the sparse form has no signed zeros)."""
    out = array.copy()
    out[out == 0] = 0
    return out


# --------------------------------------------------------------------------------------------
# reference pruning rules (slow and obvious on purpose)
# --------------------------------------------------------------------------------------------
def ref_threshold(weight: np.ndarray, threshold: float) -> np.ndarray:
    """Zero every element whose exact value has |w| <= threshold (compared in float64)."""
    pruned = np.abs(weight.astype(np.float64)) <= threshold
    return positive_zeros(np.where(pruned, np.zeros_like(weight), weight))


def ref_magnitude(weight: np.ndarray, target_sparsity: float) -> np.ndarray:
    """Zero the round(s*N) smallest |w|; among equal magnitudes the lower flat index first."""
    flat = weight.reshape(-1)
    k = round(target_sparsity * flat.size)
    order = np.lexsort((np.arange(flat.size), np.abs(flat.astype(np.float64))))
    out = flat.copy()
    out[order[:k]] = 0
    return positive_zeros(out.reshape(weight.shape))


def ref_n_m(weight: np.ndarray, n: int, m: int, dim: int) -> np.ndarray:
    """In every group of m consecutive elements along ``dim`` zero the n smallest |w| (ties:
    lower index first). A tail of t < m elements loses max(0, n - (m - t)) elements."""
    moved = np.moveaxis(weight, dim, -1).copy()
    rows = moved.reshape(-1, moved.shape[-1])
    length = rows.shape[1]
    for row in rows:
        for start in range(0, length, m):
            group = row[start : start + m]
            count = max(0, n - (m - group.size))
            order = np.argsort(np.abs(group.astype(np.float64)), kind="stable")
            group[order[:count]] = 0
    return positive_zeros(np.moveaxis(rows.reshape(moved.shape), -1, dim))


def ref_block(weight: np.ndarray, target_sparsity: float, block_size: int, dim: int) -> np.ndarray:
    """Zero the round(s*B) blocks (block_size consecutive elements along ``dim``) of lowest
    L2 norm, computed in float64; ties: lower block in row-major block order first."""
    moved = np.moveaxis(weight, dim, -1).copy()
    length = moved.shape[-1]
    assert length % block_size == 0, "reference handles whole blocks only"
    blocks = moved.reshape(*moved.shape[:-1], length // block_size, block_size)
    # row-major block order of the original layout: move the block axis back to ``dim``
    norms = np.sqrt(np.sum(np.square(blocks.astype(np.float64)), axis=-1))
    norms_in_order = np.moveaxis(norms, -1, dim).reshape(-1)
    count = round(target_sparsity * norms_in_order.size)
    order = np.lexsort((np.arange(norms_in_order.size), norms_in_order))
    prune = np.zeros(norms_in_order.size, dtype=bool)
    prune[order[:count]] = True
    prune = np.moveaxis(prune.reshape(np.moveaxis(norms, -1, dim).shape), dim, -1)
    blocks[prune] = 0
    return positive_zeros(np.moveaxis(blocks.reshape(moved.shape), -1, dim))


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
