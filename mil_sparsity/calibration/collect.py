"""Collect activation statistics by running the reference evaluator on calibration samples.

For every op that multiplies a weight with an activation (linear, conv, conv_transpose, matmul
with one constant operand; see :mod:`mil_sparsity.model.products`), the evaluator's ``capture`` hook
receives the activation; its per-channel sum of squares along the axis that meets the weight's
reduction axis is added to the statistics of that weight, and the activation is dropped. Memory
holds one activation at a time plus the statistics (one float64 per input channel per weight).

Which weight an operand is comes from the weight inventory of the function being run
(:func:`mil_sparsity.model.inventory.function_weights`, read once): a const, or the end of a
``constexpr_*`` chain (already sparse, palettized or quantized), recorded under the name of the
dense const it stands for (``ProgramWeight.source_name``: the chain's first op's name without
the suffixes its compression added, :func:`mil_sparsity.format.sparse_format.dense_name`;
``w_sparse`` -> ``w``, ``w_palettized_lut_to_sparse`` -> ``w``), so statistics of a compressed
model apply to the dense one.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import attrs
import numpy as np

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.calibration.stats import ActivationStats, channel_gram, channel_sum_squares
from mil_sparsity.model.inventory import function_weights
from mil_sparsity.model.products import PRODUCT_OPS, WEIGHT_OPERANDS, ProductRole
from mil_sparsity.progress import progress_bar

#: the product ops whose Gram matrix is collected (conv: of its im2col patches, per group)
_GRAM_OPS = frozenset({"linear", "matmul", "conv"})


@attrs.frozen
class ProductSite:
    """One op reading one weight as a product operand."""

    weight_name: str
    role: ProductRole


def source_names(function_name: str, function: Any) -> dict[int, str]:
    """The weights of one function of a PyMIL program: the identity of the op that holds each
    (a const or a chain end; :func:`mil_sparsity.model.inventory.function_weights`) -> the name
    of the dense const it stands for."""
    return {id(found.op): found.source_name for found in function_weights(function_name, function)}


def product_sites(op: Any, sources: Mapping[int, str]) -> tuple[ProductSite, ...]:
    """The weights ``op`` multiplies with an activation, each with its product role; a weight
    operand counts when the op producing it is in ``sources`` (:func:`source_names`)."""
    params = WEIGHT_OPERANDS.get(op.op_type)
    if params is None:
        return ()
    from mil_sparsity.model.pymil import input_role  # lazy: model.pymil -> model.inventory -> calibration

    sites = []
    for param in params:
        var = op.inputs.get(param)
        name = sources.get(id(var.op)) if var is not None and var.op is not None else None
        if name is None:
            continue
        role = input_role(op, param, var)
        if isinstance(role, ProductRole):
            sites.append(ProductSite(name, role))
    return tuple(sites)


class Sites:
    """The product sites of each op the evaluator runs, found once per op; the weights' names
    come from the inventory of the function being run (``sources``)."""

    def __init__(self, sources: Mapping[int, str]) -> None:
        self._sources = sources
        self._sites: dict[int, tuple[ProductSite, ...]] = {}

    def __call__(self, op: Any) -> tuple[ProductSite, ...]:
        sites = self._sites.get(id(op))
        if sites is None:
            sites = self._sites[id(op)] = product_sites(op, self._sources) if op.op_type in PRODUCT_OPS else ()
        return sites


def conv_gram(
    x: np.ndarray,
    kernel_shape: tuple[int, ...],
    strides: list[int],
    dilations: list[int],
    pads: list[tuple[int, int]],
    groups: int,
) -> np.ndarray:
    """X^T X of the im2col patches of a conv input ``x`` [N, C_in, *spatial], one per group:
    float64 ``[groups, K, K]``, K = C_in/groups x prod(kernel_shape), ordered channel-major
    then kernel taps row-major (the order of ``weight.reshape(O, -1)`` of a
    ``[O, C_in/groups, *kernel]`` weight). Each output position is one row; padding
    contributes zeros. Computed in float32 (the activation's precision), returned as float64.
    Windows are a strided view of the padded input (``sliding_window_view``); the patches of one
    group are gathered once."""
    from mil_sparsity.reference.ops_conv import windows  # lazy, as the evaluator is

    x = np.asarray(x, dtype=np.float32)
    n, channels = x.shape[:2]
    spatial = len(kernel_shape)
    if channels % groups:
        raise InvalidInputError(f"conv input has {channels} channels, not a multiple of groups={groups}")
    per_group = channels // groups
    view = windows(x, kernel_shape, strides, dilations, pads)  # [N, C, *out, *k]
    grouped = view.reshape((n, groups, per_group) + view.shape[2:])
    # [N, G, C/G, *out, *k] -> [G, N, *out, C/G, *k] -> patches [G, N*P, C/G*K]
    order = (1, 0) + tuple(range(3, 3 + spatial)) + (2,) + tuple(range(3 + spatial, 3 + 2 * spatial))
    taps = int(np.prod(kernel_shape, dtype=np.int64))
    patches = np.ascontiguousarray(np.transpose(grouped, order)).reshape(groups, -1, per_group * taps)
    result: np.ndarray = np.matmul(np.swapaxes(patches, 1, 2), patches).astype(np.float64)
    return result


def conv_gram_of(args: Mapping[str, Any]) -> np.ndarray:
    """:func:`conv_gram` of a conv op's evaluated arguments, read as the reference conv reads
    them (strides, dilations, pad_type / pad, groups)."""
    from mil_sparsity.reference._registry import array
    from mil_sparsity.reference.ops_conv import conv_geometry

    x, weight = array(args, "x"), array(args, "weight")
    strides, dilations, pads, groups = conv_geometry(args)
    return conv_gram(x, tuple(weight.shape[2:]), strides, dilations, pads, groups)


def site_statistics(
    site: ProductSite, args: Mapping[str, Any], gram: bool
) -> tuple[np.ndarray, int, Optional[np.ndarray]]:
    """What one execution of a product op adds to the statistics of the weight at ``site``,
    from the op's evaluated arguments: the activation's per-channel sum of squares, its rows
    and, with ``gram`` for the ops in :data:`_GRAM_OPS`, its X^T X (a conv's: of its im2col
    patches, :func:`conv_gram_of`); the arguments of :meth:`ActivationStats.add`."""
    activation = args[site.role.activation_param]
    sums, rows = channel_sum_squares(activation, site.role.activation_axis)
    matrix = None
    if gram and site.role.op_type in _GRAM_OPS:
        if site.role.op_type == "conv":
            matrix = conv_gram_of(args)
        else:
            matrix = channel_gram(activation, site.role.activation_axis)
    return sums, rows, matrix


#: one calibration sample (an input dict), or one sequence of them sharing a fresh state
SampleOrSequence = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]


def collect_activation_stats(
    model: Any,
    samples: Iterable[SampleOrSequence],
    *,
    function_name: str = "main",
    stats: Optional[ActivationStats] = None,
    progress: Optional[bool] = None,
    gram: bool = False,
    sequential: Any = None,
) -> ActivationStats:
    """Run ``model`` on every sample and return the statistics of each product weight.

    ``model``: what :func:`mil_sparsity.reference.run` accepts. ``samples``: input dicts (any
    iterable; consumed once). A stateful model (``ct.StateType``, e.g. an LLM's KV cache) runs
    them in order on one state, made fresh (zeros) for this call: the samples are one
    sequence, e.g. a prompt's prefill then one decode step per token. An item that is a list
    or tuple of input dicts is a sequence of its own, run in order on a fresh state of its own
    (several prompts in one call); the top-level dicts keep sharing the call's state. For a
    stateless model a sequence is just its samples. ``stats``: add to these statistics instead of new ones.
    ``progress``: a tqdm bar (default: when stderr is a TTY). ``gram``: also accumulate X^T X
    (:data:`~mil_sparsity.calibration.stats.GRAM`) for the weights of linear ops and constant
    matmul operands (the rows of the activation against its contraction axis) and of conv ops
    (:func:`conv_gram`: their im2col patches, ``[groups, K, K]``); conv_transpose weights get
    the channel statistics only. Only what is asked is computed.

    ``sequential``: the config that will prune the model (anything
    :func:`mil_sparsity.prune_weights` takes, with SparseGPT / ADMM or activation-scored
    configs): each weight that config reads statistics for gets them from the model in which
    the weights its input depends on already hold the values that config stores
    (:mod:`mil_sparsity.calibration.sequential`); give the result to ``prune_weights`` with
    the same config. Not with ``stats`` or a stateful model; ``samples`` is read into a list.
    """
    if not isinstance(gram, bool):
        raise InvalidTypeError(f"gram must be a bool, got {type(gram).__name__} {gram!r}")
    if sequential is not None:
        if stats is not None:
            raise InvalidInputError(
                "stats: sequential statistics depend on the pruned values computed from them, so "
                "they cannot be added to other statistics; collect them in one call"
            )
        from mil_sparsity.calibration.sequential import sequential_stats  # lazy: it imports the plan

        return sequential_stats(
            model, samples, sequential, function_name=function_name, gram=gram, progress=progress
        )
    from mil_sparsity.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model, function_name=function_name)
    result = ActivationStats() if stats is None else stats
    sites_of = Sites(source_names(function_name, evaluator.program.functions[function_name]))

    def capture(op: Any, args: Mapping[str, Any], outputs: tuple[Any, ...]) -> None:
        for site in sites_of(op):
            result.add(function_name, site.weight_name, *site_statistics(site, args, gram))

    count = 0
    shared = evaluator.make_state()  # empty for a stateless model: its runs stay stateless
    for index, item in enumerate(progress_bar(samples, desc="calibrate", enabled=progress)):
        if isinstance(item, (list, tuple)):
            sequence_state = evaluator.make_state()
            for sample in item:
                evaluator.run(sample, capture, state=sequence_state)
                count += 1
        elif isinstance(item, Mapping):
            evaluator.run(item, capture, state=shared)
            count += 1
        else:
            raise InvalidTypeError(
                f"samples[{index}]: expected an input dict or a list of them (one sequence), "
                f"got {type(item).__name__}"
            )
    if count == 0:
        raise InvalidInputError("samples: need at least one calibration sample, got none")
    return result
