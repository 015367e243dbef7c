"""Input samples for evaluating a model: from a .npz file, or drawn at random from its input spec.

A sample is a dict ``input name -> array``. Sample files (``--data FILE.npz`` on the command line)
hold arrays named after the model's inputs, either

- one array per input, with several samples stacked on a leading axis (the array's rank is the
  input's rank + 1) or a single sample (the same rank as the input), or
- ``name_0``, ``name_1``, ... one array per sample and input (shapes may differ between samples,
  e.g. sequence lengths within a flexible input shape).

Samples keep their order (stacked index, or ``_0``, ``_1``, ... numerically). For a stateful
model (``ct.StateType``) the states are no inputs: calibration runs a file's samples in that
order on one state, as one sequence (e.g. a prompt's prefill, then one decode step per token).
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from mil_sparsity.errors import InvalidInputError, UnsafePackageError
from mil_sparsity.reference.inputs import InputSpec
from mil_sparsity.format.package_guard import memory_bytes
from mil_sparsity.format.sparse_format import ARRAY_FEATURE_DTYPES

Sample = dict[str, np.ndarray]

_INDEXED = re.compile(r"^(?P<name>.+)_(?P<index>\d+)$")


def function_names(mlmodel: Any) -> tuple[str, ...]:
    """The functions of an ML Program's description, the default one first (``("main",)`` for a
    single-function model)."""
    description = mlmodel.get_spec().description
    if not description.functions:
        return ("main",)
    default = str(description.defaultFunctionName)
    names = [str(function.name) for function in description.functions]
    return tuple(sorted(names, key=lambda name: name != default))


def input_specs(mlmodel: Any, function_name: Optional[str] = None) -> tuple[InputSpec, ...]:
    """The multi-array inputs of an MLModel's description (their default shapes).

    ``function_name`` picks a function of a multifunction model (None: its default function);
    a single-function model has only ``"main"``. An unknown name raises ValueError.
    """
    description = mlmodel.get_spec().description
    names = function_names(mlmodel)
    name = names[0] if function_name is None else function_name
    if name not in names:
        raise InvalidInputError(f"function_name: {name!r} is not in the model; it has {list(names)}")
    features = description.input
    for function in description.functions:
        if function.name == name:
            features = function.input
    specs = []
    for feature in features:
        kind = feature.type.WhichOneof("Type")
        if kind != "multiArrayType":
            raise InvalidInputError(
                f"input {feature.name!r}: only multi-array inputs can be sampled, got {kind}"
            )
        array = feature.type.multiArrayType
        dtype = ARRAY_FEATURE_DTYPES.get(int(array.dataType))
        if dtype is None:
            raise InvalidInputError(f"input {feature.name!r}: unknown array data type {array.dataType}")
        shape = tuple(int(d) for d in array.shape)
        if not shape and array.HasField("shapeRange"):
            shape = tuple(int(r.lowerBound) for r in array.shapeRange.sizeRanges)
        _check_fits(feature.name, shape, dtype)
        specs.append(InputSpec(feature.name, shape, dtype))
    return tuple(specs)


def _check_fits(name: str, shape: tuple[int, ...], dtype: Any) -> None:
    """UnsafePackageError for a declared input shape no sample could be allocated for."""
    if any(size < 0 for size in shape):
        raise UnsafePackageError(f"input {name!r} declares the negative shape {shape}")
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > memory_bytes():
        raise UnsafePackageError(
            f"input {name!r} declares shape {shape} ({nbytes} bytes), more than this machine's "
            f"memory ({memory_bytes()} bytes)"
        )


def random_samples(
    specs: Sequence[InputSpec],
    count: int,
    *,
    seed: int = 0,
    int_range: tuple[int, int] = (0, 100),
) -> list[Sample]:
    """``count`` samples at each input's default shape: floats ~ N(0, 1), integers uniform in
    ``int_range`` (inclusive low, exclusive high, like ``range``), reproducible from ``seed``.

    Raises ValueError for ``count < 1``, a negative ``seed``, ``low >= high``, or a range that an
    integer input's dtype cannot hold.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInputError(f"count must be an int >= 1, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be an int >= 0, got {seed!r}")
    low, high = int_range
    if high <= low:
        raise InvalidInputError(f"int_range must have low < high, got {int_range!r}")
    for spec in specs:
        if np.issubdtype(spec.dtype, np.integer):
            info = np.iinfo(spec.dtype)
            if low < info.min or high - 1 > info.max:
                raise InvalidInputError(
                    f"int_range {low}..{high} does not fit input {spec.name!r} "
                    f"({np.dtype(spec.dtype).name}: {info.min}..{int(info.max) + 1})"
                )
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample: Sample = {}
        for spec in specs:
            if np.issubdtype(spec.dtype, np.integer):
                sample[spec.name] = rng.integers(low, high, size=spec.shape, dtype=spec.dtype)
            else:
                sample[spec.name] = rng.standard_normal(spec.shape, dtype=np.float32).astype(
                    spec.dtype
                )
        samples.append(sample)
    return samples


def load_samples(path: str | os.PathLike[str], specs: Sequence[InputSpec]) -> list[Sample]:
    """Samples from a .npz file (layouts in the module docstring), checked against ``specs``."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InvalidInputError(
            f"data: cannot read {os.fspath(path)!r} as a .npz file: {error}"
        ) from error
    return samples_from_arrays(arrays, specs, where=os.fspath(path))


def samples_from_arrays(
    arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], *, where: str = "data"
) -> list[Sample]:
    """Split named arrays into samples (layouts in the module docstring).

    Every array must belong to an input (an unknown name is an error, not ignored) and every
    input needs an array in every sample; ranks are checked against the inputs' ranks (shapes
    within a flexible spec are the evaluator's check).
    """
    names = [spec.name for spec in specs]
    if all(name in arrays for name in names):
        _reject_unknown([key for key in arrays if key not in names], names, where)
        return list(_stacked_samples(arrays, specs, where))
    indexed: dict[int, Sample] = {}
    unknown = []
    for key, value in arrays.items():
        match = _INDEXED.match(key)
        if match and match["name"] in names:
            indexed.setdefault(int(match["index"]), {})[match["name"]] = value
        else:
            unknown.append(key)
    if not indexed:
        raise InvalidInputError(
            f"{where}: holds {sorted(arrays)}, but the model's inputs are {names} "
            f"(name arrays after the inputs, or name_0, name_1, ... per sample)"
        )
    _reject_unknown(unknown, names, where)
    samples = []
    ranks = {spec.name: spec.rank for spec in specs}
    for index in sorted(indexed):
        missing = sorted(set(names) - set(indexed[index]))
        if missing:
            raise InvalidInputError(f"{where}: sample {index} has no array for input(s) {missing}")
        for name, value in indexed[index].items():
            if value.ndim != ranks[name]:
                raise InvalidInputError(
                    f"{where}: {name}_{index} has shape {value.shape}, but the model's input "
                    f"{name!r} has rank {ranks[name]}"
                )
        samples.append(indexed[index])
    return samples


def _reject_unknown(unknown: Sequence[str], names: Sequence[str], where: str) -> None:
    if unknown:
        raise InvalidInputError(
            f"{where}: array(s) {sorted(unknown)} name no input of the model; the model's inputs "
            f"are {list(names)} (name arrays after the inputs, or name_0, name_1, ... per sample)"
        )


def _stacked_samples(
    arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], where: str
) -> Iterator[Sample]:
    counts = set()
    for spec in specs:
        value = arrays[spec.name]
        if value.ndim == spec.rank + 1:
            counts.add(value.shape[0])
        elif value.ndim == spec.rank:
            counts.add(0)
        else:
            raise InvalidInputError(
                f"{where}: input {spec.name!r} has shape {value.shape}, but the model's input has "
                f"rank {spec.rank} (give rank {spec.rank}, or rank {spec.rank + 1} with samples "
                f"stacked on the leading axis)"
            )
    if len(counts) != 1:
        raise InvalidInputError(
            f"{where}: inputs disagree on the number of stacked samples: "
            + ", ".join(f"{s.name} {arrays[s.name].shape}" for s in specs)
        )
    count = counts.pop()
    if count == 0:
        yield {spec.name: arrays[spec.name] for spec in specs}
        return
    for index in range(count):
        yield {spec.name: arrays[spec.name][index] for spec in specs}
