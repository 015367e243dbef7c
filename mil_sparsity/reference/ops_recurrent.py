"""Recurrent kernels: lstm (gates in MIL's [input, forget, output, cell] order, optional
peepholes, forward / reverse / bidirectional) and rnn.

The input projection of every time step is one matmul over the whole sequence; the loop runs
over time steps only (each step is one [batch, H] x [H, 4H] matmul), never over elements.
Every product goes through :func:`.ops_nn.matmul`, so a large one is shared among a threaded
run's threads (whose BLAS runs on one thread).
Output sequences: ``forward`` and ``bidirectional`` (both halves) are aligned with the input's
time order; ``reverse`` lists the hidden states in the order they are computed (the first is
the state after the input's last step), as coremltools' op tests expect of the runtime (the
torch frontend never emits ``reverse``: it reverses the input around a forward layer).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from mil_sparsity.reference._registry import Args, array, flag, floating, kernel, optional_array, text
from mil_sparsity.reference.ops_nn import matmul


def _hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.float32(0.2) * x + np.float32(0.5), 0.0, 1.0))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "hard_sigmoid": _hard_sigmoid,
    "scaled_tanh": np.tanh,
}


def _lstm_direction(
    x: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias: Optional[np.ndarray],
    peephole: Optional[np.ndarray],
    reverse: bool,
    activations: tuple[Callable[[np.ndarray], np.ndarray], ...],
    clip: Optional[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction over x [s, b, I]: hidden states [s, b, H] (input time order), h, c."""
    recurrent, cell, output = activations
    steps, batch, _ = x.shape
    hidden = weight_hh.shape[1]
    projected = matmul(x.reshape(steps * batch, -1), weight_ih.T).reshape(steps, batch, -1)
    if bias is not None:
        projected += bias
    weight_hh_t = weight_hh.T
    states = np.empty((steps, batch, hidden), dtype=np.float32)
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        gates = projected[t] + matmul(h, weight_hh_t)
        pre_i, pre_f, pre_o, pre_z = (gates[:, k * hidden : (k + 1) * hidden] for k in range(4))
        if peephole is not None:
            pre_i = pre_i + peephole[:hidden] * c
            pre_f = pre_f + peephole[hidden : 2 * hidden] * c
        c = recurrent(pre_f) * c + recurrent(pre_i) * cell(pre_z)
        if clip is not None:
            c = np.clip(c, -clip, clip)
        if peephole is not None:
            pre_o = pre_o + peephole[2 * hidden :] * c
        h = recurrent(pre_o) * output(c)
        states[t] = h
    return states, h, c


@kernel("lstm")
def _lstm(args: Args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = array(args, "x")
    direction = text(args, "direction", "forward")
    activations = tuple(
        ACTIVATIONS[text(args, name, default)]
        for name, default in (("recurrent_activation", "sigmoid"), ("cell_activation", "tanh"), ("activation", "tanh"))
    )
    clip = floating(args, "clip") if args.get("clip") is not None else None
    h0, c0 = array(args, "initial_h"), array(args, "initial_c")
    hidden = array(args, "weight_hh").shape[1]
    forward = _lstm_direction(
        x, h0[:, :hidden], c0[:, :hidden], array(args, "weight_ih"), array(args, "weight_hh"),
        optional_array(args, "bias"), optional_array(args, "peephole"),
        direction == "reverse", activations, clip,
    )
    if direction == "bidirectional":
        backward = _lstm_direction(
            x, h0[:, hidden:], c0[:, hidden:], array(args, "weight_ih_back"), array(args, "weight_hh_back"),
            optional_array(args, "bias_back"), optional_array(args, "peephole_back"), True, activations, clip,
        )
        states = np.concatenate([forward[0], backward[0]], axis=-1)
        h = np.concatenate([forward[1], backward[1]], axis=-1)
        c = np.concatenate([forward[2], backward[2]], axis=-1)
    else:
        states, h, c = forward
        if direction == "reverse":
            states = states[::-1]
    if not flag(args, "output_sequence"):
        states = h[None]
    return states, h, c


@kernel("rnn")
def _rnn(args: Args) -> tuple[np.ndarray, np.ndarray]:
    """h_t = activation(W_ih x_t + W_hh h_{t-1} + bias)."""
    x = array(args, "x")
    weight_ih, weight_hh = array(args, "weight_ih"), array(args, "weight_hh")
    activation = ACTIVATIONS[text(args, "activation", "tanh")]
    steps, batch, _ = x.shape
    projected = matmul(x.reshape(steps * batch, -1), weight_ih.T).reshape(steps, batch, -1)
    bias = optional_array(args, "bias")
    if bias is not None:
        projected += bias
    h = array(args, "initial_h")
    states = np.empty((steps, batch, weight_hh.shape[0]), dtype=np.float32)
    reverse = text(args, "direction", "forward") == "reverse"
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        h = activation(projected[t] + matmul(h, weight_hh.T))
        states[t] = h
    if reverse:  # in computation order
        states = states[::-1]
    if not flag(args, "output_sequence"):
        states = h[None]
    return states, h


@kernel("gru")
def _gru(args: Args) -> tuple[np.ndarray, np.ndarray]:
    """Gates in MIL's [reset, output (new), update] order: r, z = recurrent_activation(...),
    o = activation(W_io x + b_io + r * (W_ho h)), h = (1 - z) o + z h."""
    x = array(args, "x")
    weight_ih, weight_hh = array(args, "weight_ih"), array(args, "weight_hh")
    recurrent = ACTIVATIONS[text(args, "recurrent_activation", "sigmoid")]
    activation = ACTIVATIONS[text(args, "activation", "tanh")]
    steps, batch, _ = x.shape
    hidden = weight_hh.shape[1]
    projected = matmul(x.reshape(steps * batch, -1), weight_ih.T).reshape(steps, batch, -1)
    bias = optional_array(args, "bias")
    if bias is not None:
        projected += bias
    h = array(args, "initial_h")
    states = np.empty((steps, batch, hidden), dtype=np.float32)
    reverse = text(args, "direction", "forward") == "reverse"
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        recurrent_part = matmul(h, weight_hh.T)
        step = projected[t]
        reset = recurrent(step[:, :hidden] + recurrent_part[:, :hidden])
        update = recurrent(step[:, 2 * hidden :] + recurrent_part[:, 2 * hidden :])
        new = activation(step[:, hidden : 2 * hidden] + reset * recurrent_part[:, hidden : 2 * hidden])
        h = (1.0 - update) * new + update * h
        states[t] = h
    if reverse:  # in computation order
        states = states[::-1]
    if not flag(args, "output_sequence"):
        states = h[None]
    return states, h
