"""End-to-end demo on a model built in code (no download, no torch, no Core ML runtime).

1. Build a small conv + linear ML Program with the MIL builder and save it as a .mlpackage.
2. Post hoc, run ``mil_sparsity::prune_by_magnitude`` with an OpSelector: 3:4 n:m on the conv,
   exact 75% magnitude pruning elsewhere; print the per-weight report.
3. Save the result, reload it, and check every sparse op's materialized weight against the
   original: exactly the expected zeros, every kept value unchanged.
4. What the pruning did to the outputs: dense against pruned on 16 held-out random inputs, with
   the numpy reference evaluator (worst output's mean cosine and relative L2 error).
5. ``ms.fit`` to the same size: each weight's sparsity and method chosen from probes on 8
   other random inputs (Gram statistics from 32 more, so ADMM reconstructs where it applies);
   its plan, and its outputs on the same held-out inputs.

Run: ``python -m mil_sparsity.demo`` (add ``--ios16`` for the iOS16 op form).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, Optional

import numpy as np


def _package_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


def build_model(target: Any) -> Any:
    """A conv -> relu -> flatten -> linear -> linear program, converted to an MLModel."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((64, 16, 3, 3)).astype(np.float32)
    fc1_w = rng.standard_normal((256, 64 * 6 * 6)).astype(np.float32)
    fc2_w = rng.standard_normal((10, 256)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16, 8, 8))], opset_version=target)  # type: ignore[untyped-decorator]
    def prog(x: Any) -> Any:
        y = mb.conv(x=x, weight=conv_w, name="conv1")
        y = mb.relu(x=y)
        y = mb.reshape(x=y, shape=[1, 64 * 6 * 6])
        y = mb.linear(x=y, weight=fc1_w, name="fc1")
        y = mb.relu(x=y)
        return mb.linear(x=y, weight=fc2_w, name="fc2")

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target)


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' per-pipeline progress bars
    import coremltools as ct

    import mil_sparsity as ms
    from mil_sparsity import _coremltools_private as private
    from mil_sparsity.format.sparse_format import dense_name
    from mil_sparsity.model.io import load_program

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ios16", action="store_true", help="target iOS16 (packed-bit mask form)")
    args = parser.parse_args(argv)
    target = ct.target.iOS16 if args.ios16 else ct.target.iOS18

    with tempfile.TemporaryDirectory() as workdir:
        dense_path = os.path.join(workdir, "dense.mlpackage")
        sparse_path = os.path.join(workdir, "sparse.mlpackage")
        build_model(target).save(dense_path)

        selector = ms.OpSelector(
            global_config=ms.MagnitudeConfig(target_sparsity=0.75),
            op_type_configs={"conv": ms.NMConfig(n=3, m=4, dim=1)},
        )
        pipeline = ct.PassPipeline.EMPTY
        pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
        pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": selector})
        report = ms.SparsityReport()
        ms.apply_pipeline(dense_path, pipeline, report=report).save(sparse_path)

        print(f"\nmil_sparsity demo ({target.name})\n")
        print(report.format_table())

        dense_prog = load_program(ct.models.MLModel(dense_path, skip_model_load=True))
        sparse_prog = load_program(ct.models.MLModel(sparse_path, skip_model_load=True))
        originals = {
            op.name: op.outputs[0].val
            for op in dense_prog.functions["main"].operations
            if op.op_type == "const"
        }
        checked = 0
        for op in sparse_prog.functions["main"].operations:
            if op.op_type != "constexpr_sparse_to_dense":
                continue
            weight_name = dense_name(op.name, op.op_type)
            original = originals[weight_name]
            dense = private.materialized_value(op)
            kept = dense != 0
            if not np.array_equal(dense[kept], original[kept]):
                raise SystemExit(f"FAILED: {weight_name} changed a kept value")
            # 75% magnitude and 3:4 n:m both zero exactly 3/4 of a weight with no prior zeros
            expected_zeros = round(0.75 * original.size)
            if int((~kept).sum()) != expected_zeros:
                raise SystemExit(f"FAILED: {weight_name}: {(~kept).sum()} zeros, expected {expected_zeros}")
            if op.outputs[0].rank == 4:  # the conv: every group of 4 input channels holds 3 zeros
                groups = np.moveaxis(~kept, 1, -1).reshape(-1, 4)
                if not np.all(groups.sum(axis=1) == 3):
                    raise SystemExit(f"FAILED: {weight_name} is not 3:4 sparse along dim 1")
            checked += 1
        print(
            f"\nverified {checked} sparse weights after save + reload; package size "
            f"{_package_bytes(dense_path):,} -> {_package_bytes(sparse_path):,} bytes"
        )
        _quality_and_fit(dense_path, sparse_path)
    return 0


def _quality_and_fit(dense_path: str, sparse_path: str) -> None:
    """Steps 4 and 5 of the module doc."""
    import mil_sparsity as ms
    from mil_sparsity.inspect_model import stored_weight_bytes
    from mil_sparsity.model.io import load_model, load_program
    from mil_sparsity.samples import input_specs, random_samples

    specs = input_specs(load_model(dense_path))
    held_out = random_samples(specs, 16, seed=1)
    probes = random_samples(specs, 8, seed=2)
    stats = ms.collect_activation_stats(dense_path, random_samples(specs, 32, seed=3), gram=True, progress=False)
    uniform = ms.compare(dense_path, sparse_path, held_out, progress=False).worst()
    dense_bytes = stored_weight_bytes(load_program(load_model(dense_path)))
    size = stored_weight_bytes(load_program(load_model(sparse_path))) / dense_bytes
    print(
        f"outputs on 16 held-out random inputs (reference evaluator): worst mean cosine "
        f"{uniform['cosine']:.4f}, worst relative L2 {uniform['relative_l2']:.4f}; weights stored "
        f"in {size:.1%} of the dense bytes"
    )
    print(f"\nms.fit(max_size_ratio={size:.3f}) probing on 8 other random inputs:\n")
    result = ms.fit(dense_path, probes, max_size_ratio=round(size, 3), calibration=stats, progress=False)
    print(result.format_plan())
    fitted = ms.compare(dense_path, result.model, held_out, progress=False).worst()
    print(
        f"fit on the held-out inputs: worst mean cosine {fitted['cosine']:.4f}, worst relative "
        f"L2 {fitted['relative_l2']:.4f} at {result.size_ratio:.1%} of the dense bytes"
    )


if __name__ == "__main__":
    raise SystemExit(main())
