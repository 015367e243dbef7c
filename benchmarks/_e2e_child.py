"""One post-hoc compression in a fresh process; prints "<wall seconds> <peak RSS bytes>".

Peak RSS is VmHWM from /proc/self/status: the high-water mark of this process's own memory
map, which starts anew at exec. (getrusage's ru_maxrss is kept across exec on Linux, so a
child of a large parent would report the parent's peak.)

Usage: python benchmarks/_e2e_child.py SRC DST MODE CONFIG
MODE: baseline (import only), apply_pipeline (auto: streams for a package path),
      pymil (apply_pipeline with streaming=False), streaming (compress_package),
      coremltools (coremltools.optimize.coreml.prune_weights).
CONFIG: magnitude (target 0.75), magnitude:<target> (e.g. magnitude:0.5) or pack.
"""

import os
import resource
import sys
import time

os.environ["TQDM_DISABLE"] = "1"
src, dst, mode, config_arg = sys.argv[1:5]
config_name, _, target_text = config_arg.partition(":")
target = float(target_text or 0.75)
start = time.perf_counter()
import coremltools as ct  # noqa: E402

if mode != "baseline":
    if mode == "coremltools":
        import coremltools.optimize.coreml as cto

        op_config = (
            cto.OpMagnitudePrunerConfig(target_sparsity=target)
            if config_name == "magnitude"
            else cto.OpThresholdPrunerConfig(threshold=1e-12, minimum_sparsity_percentile=0.0)
        )
        model = ct.models.MLModel(src, skip_model_load=True)
        cto.prune_weights(model, config=cto.OptimizationConfig(global_config=op_config)).save(dst)
    else:
        import mil_sparsity as ms

        config = ms.MagnitudeConfig(target_sparsity=target) if config_name == "magnitude" else ms.PackConfig()
        pass_name = ms.PRUNE_BY_MAGNITUDE if config_name == "magnitude" else ms.SPARSE_PACK
        if mode == "streaming":
            from mil_sparsity.streaming import compress_package

            compress_package(src, dst, config)
        else:
            pipeline = ct.PassPipeline.EMPTY
            pipeline.append_pass(pass_name)
            pipeline.set_options(pass_name, {"config": config})
            ms.apply_pipeline(src, pipeline, streaming=None if mode == "apply_pipeline" else False).save(dst)
wall = time.perf_counter() - start


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


print(wall, peak_rss_bytes())
