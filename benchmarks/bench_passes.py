"""Side-by-side benchmark: mil_sparsity passes vs coremltools' compression::prune_weights.

Run ``python benchmarks/bench_passes.py`` (``--json`` for machine-readable output).

* A synthetic ML Program is built in code: ``--layers`` linear layers of ``--size``x``--size``
  fp16 weights (default 4 x 4096x4096 = 67M parameters; ``--params`` picks the layer count for
  a parameter budget).
* For each mode and opset, ours and theirs run alternately ``--repeats`` times, each on a fresh
  program holding the same weights; the table shows medians and ratios (ours / theirs).
* Peak extra memory (tracemalloc, separate runs from the timing runs) of one application.
* The numpy floor: one compare, packbits and a gather over the same weights, timed in the same
  loop as each mode (ours, theirs, floor alternately), so load changes hit all three alike.
* iOS16: coremltools' iOS16 ``constexpr_sparse_to_dense`` counts mask bits in a Python loop
  whenever the op is built. Its cost, measured alone on the same masks, is reported as a share.
* End to end (``--e2e-params``, 0 to skip): post-hoc ``apply_pipeline`` on a saved .mlpackage
  vs ``coremltools.optimize.coreml.prune_weights`` on the same file, each in a fresh
  subprocess; wall seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

MODES = ["threshold", "magnitude", "block", "n:m", "pack"]


def make_weights(layers: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((size, size), dtype=np.float32).astype(np.float16) for _ in range(layers)]


def prezeroed(weights: list[np.ndarray], fraction: float = 0.75, seed: int = 1) -> list[np.ndarray]:
    """Copies with ``fraction`` of the elements set to zero (as training-time pruning leaves)."""
    rng = np.random.default_rng(seed)
    out = []
    for weight in weights:
        copy = weight.copy()
        copy.ravel()[rng.random(copy.size) < fraction] = 0
        out.append(copy)
    return out


def build_program(weights: list[np.ndarray], target: Any) -> Any:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    size = weights[0].shape[1]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, size), dtype=types.fp16)], opset_version=target)
    def prog(x: Any) -> Any:
        for index, weight in enumerate(weights):
            x = mb.linear(x=x, weight=weight, name=f"layer{index}")
        return x

    return prog


def our_pass(mode: str) -> Any:
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    import mil_sparsity as ms

    name, config = {
        "threshold": (ms.PRUNE_BY_THRESHOLD, ms.ThresholdConfig(threshold=0.5, minimum_sparsity_percentile=0.0)),
        "magnitude": (ms.PRUNE_BY_MAGNITUDE, ms.MagnitudeConfig(target_sparsity=0.75)),
        "block": (ms.PRUNE_BY_MAGNITUDE, ms.BlockConfig(target_sparsity=0.75, block_size=4)),
        "n:m": (ms.PRUNE_BY_MAGNITUDE, ms.NMConfig(n=3, m=4)),
        "pack": (ms.SPARSE_PACK, ms.PackConfig()),
    }[mode]
    graph_pass = PASS_REGISTRY[name]
    graph_pass.config = config
    return graph_pass


def their_pass(mode: str) -> Any:
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    op_config = {
        "threshold": cto.OpThresholdPrunerConfig(threshold=0.5, minimum_sparsity_percentile=0.0),
        "magnitude": cto.OpMagnitudePrunerConfig(target_sparsity=0.75),
        "block": cto.OpMagnitudePrunerConfig(target_sparsity=0.75, block_size=4),
        "n:m": cto.OpMagnitudePrunerConfig(n_m_ratio=(3, 4)),
        # coremltools has no pack-only pass: a threshold pruner that zeroes nothing new
        "pack": cto.OpThresholdPrunerConfig(threshold=1e-12, minimum_sparsity_percentile=0.0),
    }[mode]
    graph_pass = PASS_REGISTRY["compression::prune_weights"]
    graph_pass.config = cto.OptimizationConfig(global_config=op_config)
    return graph_pass


def timed(make_pass: Callable[[], Any], weights: list[np.ndarray], target: Any) -> float:
    prog = build_program(weights, target)
    graph_pass = make_pass()
    gc.collect()
    start = time.perf_counter()
    graph_pass.apply(prog)
    elapsed = time.perf_counter() - start
    del prog
    return elapsed


def peak_extra_bytes(make_pass: Callable[[], Any], weights: list[np.ndarray], target: Any) -> int:
    prog = build_program(weights, target)
    graph_pass = make_pass()
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    graph_pass.apply(prog)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del prog
    return peak - baseline


def floor_kernel(weights: list[np.ndarray]) -> float:
    """One compare, packbits and a gather per weight: the least any packing pass can do."""
    start = time.perf_counter()
    for weight in weights:
        mask = np.abs(weight) > 0.5
        np.packbits(mask.reshape(-1), bitorder="little")
        np.compress(mask.reshape(-1), weight.reshape(-1))
    return time.perf_counter() - start


def ios16_op_build_seconds(weights: list[np.ndarray], mode: str) -> float:
    """Time coremltools spends building the iOS16 sparse ops alone, for the masks ``mode`` makes."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    import mil_sparsity as ms
    from mil_sparsity.plan import handlers
    from mil_sparsity.kernels import pack_mask_bits

    config = {
        "threshold": ms.ThresholdConfig(threshold=0.5, minimum_sparsity_percentile=0.0),
        "magnitude": ms.MagnitudeConfig(target_sparsity=0.75),
        "block": ms.BlockConfig(target_sparsity=0.75, block_size=4),
        "n:m": ms.NMConfig(n=3, m=4),
        "pack": ms.PackConfig(),
    }[mode]
    sparse = [handlers.run_handler(w, config) for w in weights]
    size = weights[0].shape[1]
    elapsed = 0.0

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, size), dtype=types.fp16)], opset_version=ct.target.iOS16)
    def prog(x: Any) -> Any:
        nonlocal elapsed
        for item in sparse:
            bits = pack_mask_bits(item.mask)
            start = time.perf_counter()
            mb.constexpr_sparse_to_dense(
                nonzero_data=item.nonzero_data, mask=bits, shape=np.asarray(item.shape, dtype=np.uint32)
            )
            elapsed += time.perf_counter() - start
        return x

    return elapsed


# ---- end to end, each side in a fresh subprocess ------------------------------------------

def save_package(params: int, size: int, path: str) -> None:
    """A saved iOS18 .mlpackage of fp16 linear layers, about ``params`` parameters.

    Built in a subprocess, so this process stays small for the measurements after it.
    """
    code = (
        "import os, sys; os.environ['TQDM_DISABLE'] = '1'; sys.path.insert(0, sys.argv[1]);"
        "import coremltools as ct, bench_passes as b;"
        "layers = max(1, round(int(sys.argv[2]) / (int(sys.argv[3]) ** 2)));"
        "prog = b.build_program(b.make_weights(layers, int(sys.argv[3]), seed=2), ct.target.iOS18);"
        "ct.convert(prog, convert_to='mlprogram', minimum_deployment_target=ct.target.iOS18).save(sys.argv[4])"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, "-c", code, here, str(params), str(size), path], check=True, capture_output=True)


def run_child(src: str, dst: str, mode: str, config: str = "magnitude") -> tuple[float, int]:
    """Run ``_e2e_child.py`` in a fresh interpreter: (wall seconds, peak RSS bytes)."""
    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_e2e_child.py")
    done = subprocess.run(
        [sys.executable, child, src, dst, mode, config], check=True, capture_output=True, text=True
    )
    wall, rss = done.stdout.strip().splitlines()[-1].split()
    subprocess.run(["rm", "-rf", dst], check=True)
    return float(wall), int(rss)


def end_to_end(params: int, size: int, repeats: int) -> dict[str, Any]:
    """apply_pipeline (auto: streams) and its PyMIL path vs coremltools' prune_weights."""
    modes = ("apply_pipeline", "pymil", "coremltools")
    results: dict[str, list[tuple[float, int]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as workdir:
        src = os.path.join(workdir, "dense.mlpackage")
        save_package(params, size, src)
        baseline = run_child(src, os.path.join(workdir, "none"), "baseline")
        for _ in range(repeats):
            for mode in modes:
                results[mode].append(run_child(src, os.path.join(workdir, f"{mode}.mlpackage"), mode))
    summary: dict[str, Any] = {"params": params, "baseline_rss_mb": baseline[1] / 2**20}
    for mode, runs in results.items():
        summary[f"{mode}_wall_s"] = statistics.median(r[0] for r in runs)
        summary[f"{mode}_rss_mb"] = statistics.median(r[1] for r in runs) / 2**20
    for mode in ("apply_pipeline", "pymil"):
        summary[f"{mode}_wall_ratio"] = summary[f"{mode}_wall_s"] / summary["coremltools_wall_s"]
        summary[f"{mode}_rss_ratio"] = summary[f"{mode}_rss_mb"] / summary["coremltools_rss_mb"]
    return summary


# ---- driver --------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    import coremltools as ct

    import mil_sparsity  # noqa: F401  (registers the passes)

    layers = args.layers if args.params is None else max(1, round(args.params / (args.size * args.size)))
    dense = make_weights(layers, args.size)
    sparse_input = prezeroed(dense)
    rows = []
    for target in (getattr(ct.target, name) for name in args.opsets):
        for mode in args.modes:
            weights = sparse_input if mode == "pack" else dense
            ours_times, theirs_times, floor_times = [], [], []
            # interleaved, so a shared machine's load changes hit all three alike
            for _ in range(args.repeats):
                ours_times.append(timed(lambda: our_pass(mode), weights, target))
                theirs_times.append(timed(lambda: their_pass(mode), weights, target))
                floor_times.append(floor_kernel(weights))
            row: dict[str, Any] = {
                "opset": target.name,
                "mode": mode,
                "ours_s": statistics.median(ours_times),
                "theirs_s": statistics.median(theirs_times),
                "floor_s": statistics.median(floor_times),
            }
            row["speedup"] = row["theirs_s"] / row["ours_s"]
            row["ours_over_floor"] = row["ours_s"] / row["floor_s"]
            if not args.no_memory:
                row["ours_peak_mb"] = peak_extra_bytes(lambda: our_pass(mode), weights, target) / 2**20
                row["theirs_peak_mb"] = peak_extra_bytes(lambda: their_pass(mode), weights, target) / 2**20
                row["memory_ratio"] = row["ours_peak_mb"] / row["theirs_peak_mb"]
            if target == ct.target.iOS16:
                row["ios16_op_build_s"] = ios16_op_build_seconds(weights, mode)
            rows.append(row)
            if not args.json:
                print(format_row(row), file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "machine": machine(),
        "weights": {"layers": layers, "shape": [args.size, args.size], "dtype": "float16",
                    "params": layers * args.size * args.size},
        "repeats": args.repeats,
        "rows": rows,
    }
    if args.e2e_params:
        result["end_to_end"] = end_to_end(args.e2e_params, args.size, args.e2e_repeats)
    return result


def machine() -> dict[str, Any]:
    import coremltools as ct

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "coremltools": ct.__version__,
    }


def format_row(row: dict[str, Any]) -> str:
    text = (
        f"{row['opset']:6s} {row['mode']:9s} ours {row['ours_s']:7.3f}s  theirs {row['theirs_s']:7.3f}s"
        f"  speedup {row['speedup']:5.1f}x  ours/floor {row['ours_over_floor']:4.2f}"
    )
    if "ours_peak_mb" in row:
        text += (
            f"  peak MB ours {row['ours_peak_mb']:7.1f} theirs {row['theirs_peak_mb']:7.1f}"
            f" ({row['memory_ratio']:.2f}x)"
        )
    if "ios16_op_build_s" in row:
        text += f"  iOS16 op build {row['ios16_op_build_s']:.3f}s ({row['ios16_op_build_s'] / row['ours_s']:.0%} of ours)"
    return text


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| opset | mode | ours (s) | coremltools (s) | speedup | ours / floor | peak extra MB ours | coremltools | memory ratio | iOS16 op build share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        share = f"{row['ios16_op_build_s'] / row['ours_s']:.0%}" if "ios16_op_build_s" in row else "-"
        lines.append(
            f"| {row['opset']} | {row['mode']} | {row['ours_s']:.3f} | {row['theirs_s']:.3f} | "
            f"{row['speedup']:.1f}x | {row['ours_over_floor']:.2f} | "
            f"{row.get('ours_peak_mb', float('nan')):.0f} | {row.get('theirs_peak_mb', float('nan')):.0f} | "
            f"{row.get('memory_ratio', float('nan')):.2f} | {share} |"
        )
    e2e = result.get("end_to_end")
    if e2e:
        lines += [
            "",
            f"End to end, post hoc on a saved {e2e['params'] / 1e6:.0f}M-parameter fp16 .mlpackage "
            f"(magnitude 0.75, fresh subprocess each; interpreter + coremltools import alone: "
            f"{e2e['baseline_rss_mb']:.0f} MB):",
            "",
            "| | wall (s) | peak RSS (MB) | wall / coremltools | RSS / coremltools |",
            "|---|---:|---:|---:|---:|",
            f"| mil_sparsity.apply_pipeline (streams) | {e2e['apply_pipeline_wall_s']:.2f} | "
            f"{e2e['apply_pipeline_rss_mb']:.0f} | {e2e['apply_pipeline_wall_ratio']:.2f} | "
            f"{e2e['apply_pipeline_rss_ratio']:.2f} |",
            f"| apply_pipeline(streaming=False) (PyMIL) | {e2e['pymil_wall_s']:.2f} | "
            f"{e2e['pymil_rss_mb']:.0f} | {e2e['pymil_wall_ratio']:.2f} | {e2e['pymil_rss_ratio']:.2f} |",
            f"| coremltools prune_weights | {e2e['coremltools_wall_s']:.2f} | {e2e['coremltools_rss_mb']:.0f} | 1.00 | 1.00 |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="linear layers (default 4)")
    parser.add_argument("--size", type=int, default=4096, help="weights are size x size (default 4096)")
    parser.add_argument("--params", type=int, default=None, help="parameter budget; overrides --layers")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per side (default 3)")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=MODES, help="comma list of " + ",".join(MODES))
    parser.add_argument("--opsets", type=lambda s: s.split(","), default=["iOS18", "iOS16"], help="comma list of opsets (default iOS18,iOS16)")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    parser.add_argument("--e2e-params", type=int, default=100_000_000, help="end-to-end model size (0 skips)")
    parser.add_argument("--e2e-repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        m = result["machine"]
        w = result["weights"]
        print(
            f"\n{w['layers']} x {w['shape'][0]}x{w['shape'][1]} {w['dtype']} ({w['params'] / 1e6:.0f}M params), "
            f"median of {result['repeats']}; {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
            f"numpy {m['numpy']}, coremltools {m['coremltools']}\n"
        )
        print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
