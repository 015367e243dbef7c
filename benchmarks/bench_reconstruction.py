"""Side-by-side benchmark: our numpy SparseGPT / ADMM vs coremltools' torch SparseGPT.

Run ``python benchmarks/bench_reconstruction.py`` (``--quick`` for small layers).

* Layers of BERT-base sizes (``[out, in]``): 768x768, 3072x768, 768x3072, float32 weights
  ``N(0, 0.02)``. Calibration inputs: ``--samples`` rows (default 512) of correlated Gaussian
  data, ``X = G (I + A / sqrt(in)) * scale`` with log-normal per-channel scales (a few loud
  channels, as in transformer activations) and a fixed seed per layer.
* Patterns: 50% unstructured and 2:4. Methods: magnitude pruning (mask only, the baseline),
  ours ``sparsegpt`` and ``admm`` (default arguments) and coremltools'
  ``layerwise_compression.algorithms.SparseGPT`` on an ``nn.Linear`` (``weight_dtype=float32``
  so it does not quantize, dampening 0.01, blocks of 128: the same settings as ours).
* Time: the reconstruction call only (median of ``--repeats``); the Gram matrix / Hessian
  accumulation is excluded on both sides. Error: ``||X W^T - X W'^T||_F / ||X W^T||_F`` on the
  calibration inputs. Sparsity: the zero fraction each method produced. Peak: tracemalloc peak
  of one separate call of ours (numpy allocations; torch allocations are not traced, so n/a).
* Ratios are against coremltools' SparseGPT on the same layer and pattern.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
import tracemalloc
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mil_sparsity.kernels import magnitude_prune_mask, nm_prune_mask  # noqa: E402
from mil_sparsity.kernels.reconstruction import admm, sparsegpt  # noqa: E402

FULL_LAYERS = [(768, 768), (3072, 768), (768, 3072)]
QUICK_LAYERS = [(128, 128), (512, 128), (128, 512)]
PATTERNS: list[tuple[str, dict[str, Any]]] = [("50%", {"target_sparsity": 0.5}), ("2:4", {"n": 2, "m": 4})]


def make_layer(rows: int, cols: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = (0.02 * rng.standard_normal((rows, cols))).astype(np.float32)
    mixing = np.eye(cols, dtype=np.float32) + rng.standard_normal((cols, cols), dtype=np.float32) / np.sqrt(cols)
    scale = rng.lognormal(0.0, 0.75, cols).astype(np.float32)
    inputs = ((rng.standard_normal((samples, cols), dtype=np.float32) @ mixing) * scale).astype(np.float32)
    return weight, inputs


def relative_error(weight: np.ndarray, values: np.ndarray, inputs: np.ndarray) -> float:
    x = inputs.astype(np.float64)
    dense = x @ weight.astype(np.float64).T
    return float(np.linalg.norm(dense - x @ values.astype(np.float64).T) / np.linalg.norm(dense))


def magnitude(weight: np.ndarray, pattern: dict[str, Any]) -> np.ndarray:
    if "target_sparsity" in pattern:
        pruned = magnitude_prune_mask(weight, pattern["target_sparsity"])
    else:
        pruned = nm_prune_mask(weight, pattern["n"], pattern["m"], 1)
    return np.where(pruned, 0, weight)


def coremltools_sparsegpt(weight: np.ndarray, inputs: np.ndarray, pattern: dict[str, Any]) -> Callable[[], np.ndarray]:
    """A callable running coremltools' SparseGPT on a fresh nn.Linear whose Hessian is already
    accumulated from ``inputs`` (so the timed part is ``compress()`` alone)."""
    import torch
    from coremltools.optimize.torch.layerwise_compression.algorithms import ModuleSparseGPTConfig, SparseGPT

    logging.getLogger("coremltools.optimize.torch.layerwise_compression.algorithms").setLevel(logging.WARNING)
    nm = (pattern["n"], pattern["m"]) if "n" in pattern else None
    config = ModuleSparseGPTConfig(
        target_sparsity=float(pattern.get("target_sparsity", 0.5)),
        n_m_ratio=nm,
        weight_dtype="float32",
        hessian_dampening=0.01,
        processing_group_size=128,
    )

    def prepare() -> Any:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight.requires_grad_(False)
        layer.weight.data = torch.from_numpy(weight.copy())
        algorithm = SparseGPT(layer, config)
        batch = torch.from_numpy(inputs)
        with torch.no_grad():
            algorithm.add_batch(batch, layer(batch))
        return layer, algorithm

    def run() -> np.ndarray:
        layer, algorithm = state.pop()
        with torch.no_grad():
            algorithm.compress()
        result: np.ndarray = layer.weight.data.numpy().copy()
        return result

    state: list[Any] = []
    run.prepare = lambda: state.append(prepare())  # type: ignore[attr-defined]
    return run


def timed(call: Callable[[], np.ndarray], repeats: int, prepare: Callable[[], None] | None = None) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeats):
        if prepare is not None:
            prepare()
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result


def peak_mb(call: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small layers and 128 calibration rows")
    parser.add_argument("--samples", type=int, default=None, help="calibration rows (default 512, quick 128)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-coremltools", action="store_true", help="skip the torch reference")
    args = parser.parse_args()
    layers = QUICK_LAYERS if args.quick else FULL_LAYERS
    samples = args.samples or (128 if args.quick else 512)

    print(f"# Reconstruction benchmark ({platform.machine()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"{samples} calibration rows)\n")
    header = "| layer [out, in] | pattern | method | time s | rel. error | sparsity | peak MB | time / ct | error / ct |"
    print(header)
    print("|" + "|".join(["---"] * (header.count("|") - 1)) + "|")
    for index, (rows, cols) in enumerate(layers):
        weight, inputs = make_layer(rows, cols, samples, seed=index)
        x64 = inputs.astype(np.float64)
        gram = x64.T @ x64
        for label, pattern in PATTERNS:
            rows_out: list[tuple[str, float, np.ndarray, float | None]] = []
            rows_out.append(("magnitude (mask only)", float("nan"), magnitude(weight, pattern), None))
            if not args.no_coremltools:
                runner = coremltools_sparsegpt(weight, inputs, pattern)
                seconds, values = timed(runner, args.repeats, runner.prepare)  # type: ignore[attr-defined]
                rows_out.append(("coremltools SparseGPT (torch)", seconds, values, None))
            for name, kernel in (("ours SparseGPT", sparsegpt), ("ours ADMM", admm)):
                seconds, values = timed(lambda: kernel(weight, gram, **pattern).values, args.repeats)
                rows_out.append((name, seconds, values, peak_mb(lambda: kernel(weight, gram, **pattern))))
            reference = rows_out[1] if not args.no_coremltools else None
            ref_error = relative_error(weight, reference[2], inputs) if reference else None
            for name, seconds, values, peak in rows_out:
                error = relative_error(weight, values, inputs)
                sparsity = float(np.mean(values == 0))
                time_ratio = f"{seconds / reference[1]:.2f}" if reference and seconds == seconds else ""
                error_ratio = f"{error / ref_error:.3f}" if ref_error else ""
                print(
                    f"| {rows}x{cols} | {label} | {name} | {'' if seconds != seconds else f'{seconds:.2f}'} "
                    f"| {error:.4f} | {sparsity:.4f} | {'n/a' if peak is None else f'{peak:.0f}'} "
                    f"| {time_ratio} | {error_ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
