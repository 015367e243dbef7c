"""The options ``compare``, ``sweep`` and ``calibrate`` share: input samples (``--data`` or
``--random-inputs`` with ``--seed`` and ``--int-range``), the function (``--function``) and the
evaluation backend (``--backend``).

Samples come from :mod:`mil_sparsity.samples` (the .npz layouts and random draws from the
model's input spec are defined there); backends from :mod:`mil_sparsity.quality`. Option
conflicts, out-of-range values and a backend this platform lacks are usage errors (exit 2); a
missing or unreadable data file, or arrays that do not match the model, are input errors
(exit 1).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from mil_sparsity.cli._common import CLIError, UsageError, non_negative_int, one_line, positive_int
from mil_sparsity.quality import BACKENDS, Evaluator, check_backend, evaluator
from mil_sparsity.samples import Sample, function_names, input_specs, load_samples, random_samples

DEFAULT_INT_RANGE = (0, 100)
Inputs = Mapping[str, np.ndarray]  # one sample, as read or as kept by ReferenceOutputs
_INT_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")


def int_range(text: str) -> tuple[int, int]:
    match = _INT_RANGE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected LOW..HIGH with integers LOW < HIGH, e.g. 0..100; got {text!r}"
        )
    low, high = int(match[1]), int(match[2])
    if low >= high:
        raise argparse.ArgumentTypeError(f"expected LOW < HIGH, got {text!r}")
    return low, high


def add_sample_options(
    parser: argparse.ArgumentParser, *, required: bool, backend: bool = True
) -> None:
    """--data / --random-inputs (one of them, or neither unless ``required``), --seed,
    --int-range, --function and (with ``backend``) --backend."""
    samples = parser.add_mutually_exclusive_group(required=required)
    samples.add_argument(
        "--data",
        metavar="FILE.npz",
        help="input samples: arrays named after the model's inputs, several samples stacked "
        "on a leading axis (or one sample at the input's rank), or name_0, name_1, ... one "
        "array per sample",
    )
    samples.add_argument(
        "--random-inputs",
        type=positive_int,
        metavar="N",
        help="N random samples at each input's default shape: floats ~ N(0, 1), integers "
        "uniform over --int-range",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        metavar="S",
        help="with --random-inputs: the random seed (default 0)",
    )
    parser.add_argument(
        "--int-range",
        type=int_range,
        metavar="LOW..HIGH",
        help="with --random-inputs: integer inputs are drawn from LOW (inclusive) to HIGH "
        "(exclusive), like range() (default 0..100; write --int-range=-5..5 for a negative LOW)",
    )
    parser.add_argument(
        "--function",
        metavar="NAME",
        help="the function to evaluate in a multifunction package (default: its default "
        "function; 'main' otherwise)",
    )
    if backend:
        parser.add_argument(
            "--backend",
            choices=BACKENDS,
            default="reference",
            help="reference: mil_sparsity's numpy evaluator, float32, any platform (default); "
            "coreml: MLModel.predict with the Core ML runtime (macOS only)",
        )


def has_samples(args: argparse.Namespace) -> bool:
    return args.data is not None or args.random_inputs is not None


def check_sample_options(args: argparse.Namespace, command: str) -> None:
    """Option checks before any model is read: usage errors (exit 2)."""
    for option, value in (("--seed", args.seed), ("--int-range", args.int_range)):
        if value is not None and args.random_inputs is None:
            raise UsageError(f"{command}: {option} goes with --random-inputs")
    if not has_samples(args):
        for option in ("--function", "--backend"):
            value = getattr(args, option[2:], None)
            if value is not None and value != "reference":
                raise UsageError(f"{command}: {option} goes with --data or --random-inputs")
    backend = getattr(args, "backend", "reference")
    try:
        check_backend(backend)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"{command}: --backend {backend}: {one_line(error)}") from None


def function_of(mlmodel: Any, path: str, args: argparse.Namespace, command: str) -> str:
    """``--function``, checked against the model's functions, or the model's default."""
    names = function_names(mlmodel)
    if args.function is None:
        return names[0]
    if args.function not in names:
        raise UsageError(
            f"{command}: --function {args.function}: {path} has no such function; it has "
            + ", ".join(names)
        )
    return str(args.function)


def read_samples(args: argparse.Namespace, mlmodel: Any, path: str, function: str) -> list[Sample]:
    """The samples of --data (checked against the model's inputs) or --random-inputs."""
    try:
        specs = input_specs(mlmodel, function)
    except ValueError as error:
        raise CLIError(f"{path}: {one_line(error)}") from None
    if args.data is not None:
        if not os.path.isfile(args.data):
            raise CLIError(f"data file not found: {args.data}")
        try:
            return load_samples(args.data, specs)
        except ValueError as error:
            raise CLIError(f"--data {one_line(error)}") from None
    int_range_ = DEFAULT_INT_RANGE if args.int_range is None else args.int_range
    try:
        return random_samples(
            specs, args.random_inputs, seed=args.seed or 0, int_range=int_range_
        )
    except ValueError as error:  # an --int-range the input's dtype cannot hold
        raise UsageError(f"--random-inputs: {one_line(error)}") from None


def describe_samples(args: argparse.Namespace, samples: Sequence[Inputs]) -> dict[str, Any]:
    """Where the samples came from, for --json."""
    if args.data is not None:
        return {"data": args.data, "samples": len(samples)}
    low, high = DEFAULT_INT_RANGE if args.int_range is None else args.int_range
    return {"random_inputs": len(samples), "seed": args.seed or 0, "int_range": [low, high]}


def samples_line(args: argparse.Namespace, samples: Sequence[Inputs]) -> str:
    """Where the samples came from, for the text output (the integer range only when the
    model has integer inputs)."""
    if args.data is not None:
        return f"{len(samples)} sample(s) from {args.data}"
    low, high = DEFAULT_INT_RANGE if args.int_range is None else args.int_range
    integers = any(np.issubdtype(value.dtype, np.integer) for value in samples[0].values())
    ints = f", integers uniform in [{low}, {high})" if integers else ""
    return f"{len(samples)} random sample(s) (seed {args.seed or 0}{ints})"


def make_evaluator(mlmodel: Any, path: str, backend: str, function: str) -> Evaluator:
    """The model's evaluator on ``backend``; its errors (unsupported ops at load, bad inputs at
    run time) become one-line CLIErrors naming the model."""
    try:
        run = evaluator(mlmodel if backend == "reference" else path, backend=backend,
                        function_name=function)
    except (NotImplementedError, ValueError, TypeError) as error:
        raise CLIError(f"{path}: {one_line(error)}") from None

    def checked(sample: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        try:
            return run(sample)
        except (ValueError, TypeError) as error:
            raise CLIError(f"{path}: {one_line(error)}") from None

    return checked
