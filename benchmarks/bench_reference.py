"""The reference evaluator vs torch eager on CPU, float32, on a BERT-base-sized encoder.

Builds a random-init ``transformers`` BertModel (default: 12 layers, hidden 768, 12 heads,
intermediate 3072, batch 8, sequence 128; tests/_zoo.py's wrapper with a padding mask),
converts it with ``compute_precision=FLOAT32`` and times, in one process, alternating:
``ReferenceEvaluator(mlmodel)(inputs)`` (planned once, like a user running many inputs) and the
torch module under ``torch.inference_mode()``. One warm-up run each, then the median of
``--repeats`` runs each, each timed run after ``--settle`` seconds of sleep: a BLAS or OpenMP
library may keep its idle worker threads spinning for a while after its last call (OpenBLAS
up to 2**28 cycles), and the pause keeps one side's spinning workers out of the other side's
next run (measured on the idle machine it made no difference either way: torch 1.076 s without
it, 1.071 s with it, both next to a one-thread evaluator whose OpenBLAS threads its products).
Prints both medians and their ratio (evaluator / torch) and the
evaluator's largest deviation from torch.

The floor, in the same run: the model's matrix products (each linear and matmul, read from one
captured run) timed alone, ours through the evaluator's own matmul with its threads, torch's as
``F.linear`` / ``torch.matmul``, on the same weights. The products alone over torch's whole run
is the lowest ratio the evaluator can reach with this BLAS, every other op free. numpy's BLAS is
named with the CPU whose kernels it picked (OpenBLAS picks them at load; ``OPENBLAS_CORETYPE``
overrides its choice, and on AMD Zen 4 ``Haswell``'s AVX2 kernels run this model's products
about 7% faster than the ``SkylakeX`` AVX-512 ones it picks by itself).

Memory, each side in a fresh child process (a warmed-up allocator reuses freed heap, which hides
a run's peak): the model is loaded (the evaluator from the saved .mlpackage, torch rebuilt from
the same seed), then one run; reported is the peak RSS over the RSS before the run (VmHWM from
/proc/self/status, reset through /proc/self/clear_refs), and for the evaluator also the peak of
live numpy allocations over the start (tracemalloc), next to the weights' size and the largest
single activation. ``--profile`` adds seconds per op type, timed between consecutive
``capture`` callbacks (a run with a callback runs no step in place, so it is a little slower
than the timed runs). The machine's load average is printed with the result: other processes
slow both sides, torch's thread hand-overs more than ours.

Usage: python benchmarks/bench_reference.py [--layers 12] [--repeats 5] [--settle 0.3] [--threads N]
       [--profile] [--json]
       [--package PATH]  (reuse a conversion saved there by an earlier run with the same sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the model zoo


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_over_start(call: Callable[[], Any]) -> int:
    """Bytes the process's RSS rose above its level at the call's start, at the call's peak."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    start = status_kib("VmRSS")
    call()
    return (status_kib("VmHWM") - start) * 1024


def seconds(call: Callable[[], Any], settle: float = 0.0) -> float:
    time.sleep(settle)  # the other side's idle threads park
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def profile(evaluator: Any, inputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Seconds per op type: the time from one op's capture callback to the next."""
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    shapes: dict[str, str] = {}
    last = [time.perf_counter()]

    def capture(op: Any, input_values: Any, output_values: Any) -> None:
        now = time.perf_counter()
        totals[op.op_type] += now - last[0]
        counts[op.op_type] += 1
        if op.op_type not in shapes:
            shapes[op.op_type] = ", ".join(
                f"{name}{list(np.shape(value))}"
                for name, value in input_values.items()
                if isinstance(value, np.ndarray) and value.ndim > 0
            )
        last[0] = time.perf_counter()

    evaluator(inputs, capture)
    total = sum(totals.values())
    rows = [
        {"op_type": op_type, "count": counts[op_type], "seconds": round(s, 4), "share": round(s / total, 3),
         "example_inputs": shapes[op_type]}
        for op_type, s in sorted(totals.items(), key=lambda item: -item[1])
    ]
    return rows


def products(evaluator: Any, inputs: dict[str, np.ndarray]) -> list[tuple[Any, ...]]:
    """The run's matrix products in order: ("linear", x shape, weight, bias) for each linear
    (the model's own weight and bias arrays) and ("matmul", x shape, y shape, transpose_x,
    transpose_y) for each matmul, read from one captured run."""
    found: list[tuple[Any, ...]] = []

    def capture(op: Any, input_values: Any, output_values: Any) -> None:
        if op.op_type == "linear":
            found.append(("linear", np.shape(input_values["x"]), input_values["weight"], input_values.get("bias")))
        elif op.op_type == "matmul":
            found.append((
                "matmul", np.shape(input_values["x"]), np.shape(input_values["y"]),
                bool(input_values.get("transpose_x", False)), bool(input_values.get("transpose_y", False)),
            ))

    evaluator(inputs, capture)
    return found


def products_alone(evaluator: Any, inputs: dict[str, np.ndarray], repeats: int, settle: float) -> dict[str, float]:
    """Seconds the run's matrix products take with nothing else around them, median of
    ``repeats``: on our side each through the evaluator's own matmul with its threads, on
    torch's each as ``torch.nn.functional.linear`` / ``torch.matmul``; the same weights, and
    random activations of the run's shapes (a product's time does not depend on the values).
    Everything else in a run costs at least nothing, so the products' time over torch's whole
    run is the lowest ratio the evaluator could reach with this BLAS."""
    import torch

    from mil_sparsity.reference import threads
    from mil_sparsity.reference.ops_nn import matmul

    found = products(evaluator, inputs)
    generator = np.random.default_rng(0)
    arrays: dict[tuple[int, ...], np.ndarray] = {}

    def activation(shape: tuple[int, ...]) -> np.ndarray:
        if shape not in arrays:
            arrays[shape] = generator.standard_normal(shape, dtype=np.float32)
        return arrays[shape]

    ours: list[Callable[[], Any]] = []
    theirs: list[Callable[[], Any]] = []
    for kind, *rest in found:
        if kind == "linear":
            shape, weight, bias = rest
            x = activation(shape)
            ours.append(lambda x=x, w=weight, b=bias: matmul(x, w.T, bias=b))
            tx, tw = torch.from_numpy(x), torch.from_numpy(np.asarray(weight))
            tb = None if bias is None else torch.from_numpy(np.asarray(bias))
            theirs.append(lambda x=tx, w=tw, b=tb: torch.nn.functional.linear(x, w, b))
        else:
            x_shape, y_shape, transpose_x, transpose_y = rest
            x, y = activation(x_shape), activation(y_shape)
            ours.append(lambda x=x, y=y, a=transpose_x, b=transpose_y: matmul(x, y, a, b))
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            if transpose_x:
                tx = tx.transpose(-1, -2)
            if transpose_y:
                ty = ty.transpose(-1, -2)
            theirs.append(lambda x=tx, y=ty: torch.matmul(x, y))

    def ours_all() -> None:
        with threads.running(evaluator.threads):
            for product in ours:
                product()

    def theirs_all() -> None:
        with torch.inference_mode():
            for product in theirs:
                product()

    ours_all(), theirs_all()  # warm-up
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(seconds(ours_all, settle))
        theirs_s.append(seconds(theirs_all, settle))
    return {
        "count": len(found),
        "evaluator_seconds": round(statistics.median(ours_s), 4),
        "torch_seconds": round(statistics.median(theirs_s), 4),
    }


def build_zoo(args: argparse.Namespace) -> Any:
    """The BERT of the requested sizes, random init from seed 0 (the same weights every time)."""
    import torch

    import _zoo

    torch.manual_seed(0)
    return _zoo.bert(
        layers=args.layers, hidden=args.hidden, heads=args.heads, intermediate=args.intermediate,
        batch=args.batch, sequence=args.sequence, vocab=args.vocab,
    )


def child(args: argparse.Namespace, side: str, package: str) -> dict[str, int]:
    """Run ``--child side`` in a fresh interpreter; its JSON line."""
    command = [sys.executable, os.path.abspath(__file__), "--child", side, "--package", package]
    for name in ("layers", "hidden", "heads", "intermediate", "batch", "sequence", "vocab"):
        command += [f"--{name}", str(getattr(args, name))]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def child_main(args: argparse.Namespace) -> dict[str, int]:
    """Load one side's model, then measure one run's peak memory over the start."""
    zoo = build_zoo(args)
    inputs = zoo.random_inputs(1)
    result = {}
    if args.child == "evaluator":
        import tracemalloc

        import coremltools as ct

        from mil_sparsity.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(ct.models.MLModel(args.package, skip_model_load=True))
        del zoo  # the torch weights are not the evaluator's
        result["peak_rss_over_start"] = peak_rss_over_start(lambda: evaluator(inputs))
        tracemalloc.start()
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        evaluator(inputs)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result["peak_traced_over_start"] = peak - start
    else:
        result["peak_rss_over_start"] = peak_rss_over_start(lambda: zoo.torch_outputs(inputs))
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import coremltools as ct

    import _zoo
    from mil_sparsity.reference import ReferenceEvaluator, blas

    zoo = build_zoo(args)
    load_before = os.getloadavg()
    start = time.perf_counter()
    if args.package and os.path.exists(args.package):
        mlmodel = ct.models.MLModel(args.package, skip_model_load=True)
    else:
        mlmodel = zoo.convert(ct.target.iOS16, ct.precision.FLOAT32)
        if args.package:
            mlmodel.save(args.package)
    convert_s = time.perf_counter() - start
    evaluator = ReferenceEvaluator(mlmodel, threads=args.threads)
    inputs = zoo.random_inputs(1)
    torch_args = [torch.from_numpy(inputs[spec.name].astype(np.int64)) for spec in zoo.input_specs]

    def ours() -> Any:
        return evaluator(inputs)

    def theirs() -> Any:
        with torch.inference_mode():
            return zoo.module(*torch_args)

    got, expected = ours(), zoo.torch_outputs(inputs)  # warm-up, and a correctness check
    theirs()
    deviation = {
        name: float(np.abs(got[name] - want).max() / np.abs(want).max()) for name, want in expected.items()
    }
    ours_s, torch_s = [], []
    for _ in range(args.repeats):
        ours_s.append(seconds(ours, args.settle))
        torch_s.append(seconds(theirs, args.settle))
    alone = products_alone(evaluator, inputs, args.repeats, args.settle)
    load_after = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        package = args.package or os.path.join(workdir, "bert.mlpackage")
        if not os.path.exists(package):
            mlmodel.save(package)
        ours_memory = child(args, "evaluator", package)
        torch_memory = child(args, "torch", package)

    function = evaluator.program.functions["main"]  # a loaded package has no _mil_program
    weight_bytes = sum(
        np.asarray(op.outputs[0].val).nbytes for op in _zoo.iter_ops(function) if op.op_type == "const"
    )
    largest_activation = max(
        int(np.prod(var.shape)) * 4
        for op in _zoo.iter_ops(function)
        if op.op_type != "const"
        for var in op.outputs
        if var.shape is not None and all(isinstance(d, int) for d in var.shape)
    )
    result: dict[str, Any] = {
        "model": {
            "layers": args.layers, "hidden": args.hidden, "heads": args.heads,
            "intermediate": args.intermediate, "batch": args.batch, "sequence": args.sequence,
            "vocab": args.vocab,
        },
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "numpy": np.__version__},
        "convert_seconds": round(convert_s, 1),
        "evaluator_seconds": round(statistics.median(ours_s), 4),
        "torch_seconds": round(statistics.median(torch_s), 4),
        "ratio": round(statistics.median(ours_s) / statistics.median(torch_s), 2),
        "evaluator_threads": evaluator.threads,
        "blas": blas.describe(),
        "products_alone": alone,
        "floor_ratio": round(alone["evaluator_seconds"] / statistics.median(torch_s), 2),
        "settle_seconds": args.settle,
        "load_average_before_and_after": [round(v, 2) for v in load_before + load_after],
        "evaluator_runs": [round(s, 4) for s in ours_s],
        "torch_runs": [round(s, 4) for s in torch_s],
        "max_deviation_relative_to_output_scale": deviation,
        "evaluator_peak_rss_over_start_mb": round(ours_memory["peak_rss_over_start"] / 2**20, 1),
        "evaluator_peak_numpy_over_start_mb": round(ours_memory["peak_traced_over_start"] / 2**20, 1),
        "torch_peak_rss_over_start_mb": round(torch_memory["peak_rss_over_start"] / 2**20, 1),
        "weights_mb": round(weight_bytes / 2**20, 1),
        "largest_activation_mb": round(largest_activation / 2**20, 1),
    }
    if args.profile:
        result["profile"] = profile(evaluator, inputs)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="the evaluator's threads (default: the BLAS's count)")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds of sleep before each timed run")
    parser.add_argument("--profile", action="store_true", help="seconds per op type")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--package", help="where to keep the converted model between runs")
    parser.add_argument("--child", choices=("evaluator", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(args)))
        return 0
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    model = result["model"]
    print(
        f"BERT {model['layers']} layers, hidden {model['hidden']}, {model['heads']} heads, "
        f"intermediate {model['intermediate']}, batch {model['batch']}, sequence {model['sequence']} "
        f"(float32; {result['machine']['cpus']} CPUs, torch threads {result['machine']['torch_threads']}, "
        f"evaluator threads {result['evaluator_threads']}; {result['settle_seconds']} s pause before each timed run)"
    )
    print(f"  numpy's BLAS: {result['blas']}")
    print(f"  reference evaluator  {result['evaluator_seconds']:.3f} s  (median of {args.repeats})")
    print(f"  torch eager CPU      {result['torch_seconds']:.3f} s")
    print(f"  ratio                {result['ratio']:.2f}x  (load average 1/5/15 min before, after: "
          f"{result['load_average_before_and_after']})")
    alone = result["products_alone"]
    print(f"  the {alone['count']} matrix products alone: evaluator {alone['evaluator_seconds']:.3f} s, torch "
          f"{alone['torch_seconds']:.3f} s; lowest ratio reachable with every other op free: "
          f"{result['floor_ratio']:.2f}x")
    print(
        f"  peak RSS over start of a run: evaluator {result['evaluator_peak_rss_over_start_mb']} MB "
        f"(live numpy arrays {result['evaluator_peak_numpy_over_start_mb']} MB), torch "
        f"{result['torch_peak_rss_over_start_mb']} MB; weights {result['weights_mb']} MB, largest "
        f"activation {result['largest_activation_mb']} MB"
    )
    print(f"  max |evaluator - torch| / max |torch|: {result['max_deviation_relative_to_output_scale']}")
    for row in result.get("profile", []):
        print(f"    {row['op_type']:<16} x{row['count']:<4} {row['seconds']:8.4f} s  {row['share']:6.1%}  "
              f"{row['example_inputs']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
