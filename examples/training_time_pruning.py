"""Training-time pruning with coremltools' MagnitudePruner, then sparse packing at conversion.

1. A small conv net is trained a few steps on synthetic data while ``MagnitudePruner`` raises
   its sparsity on a polynomial schedule (``update_steps``) up to ``target_sparsity``.
2. ``pruner.finalize()`` writes the masks into the weights (the zeros are now real). It also
   registers ``_COREML_`` compression metadata, from which coremltools 9's torch frontend would
   pack the weights on its own; the example strips it, so that ``sparse_pack`` does the packing
   and reports it (keep the metadata and sparse_pack simply reports them as already packed).
3. The model is traced and converted with ``mil_sparsity::sparse_pack`` appended to the default
   pipeline: each weight whose zeros make the sparse form smaller becomes
   ``constexpr_sparse_to_dense``, with exactly the pruner's values (after the fp16 cast).
4. The per-weight report is printed.

Run: ``python examples/training_time_pruning.py [--granularity per_scalar|block|n_m]``.
Needs torch (``pip install "mil_sparsity[torch]"``).
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from typing import Any, Optional

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import coremltools as ct  # noqa: E402
import mil_sparsity as ms  # noqa: E402

INPUT_SHAPE = (1, 3, 16, 16)
WEIGHT_THRESHOLD = 512


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        OrderedDict(
            [
                ("conv1", torch.nn.Conv2d(3, 32, 3, padding=1)),
                ("relu1", torch.nn.ReLU()),
                ("conv2", torch.nn.Conv2d(32, 64, 3, padding=1)),
                ("relu2", torch.nn.ReLU()),
                ("pool", torch.nn.AdaptiveAvgPool2d(1)),
                ("flatten", torch.nn.Flatten()),
                ("fc", torch.nn.Linear(64, 10)),
            ]
        )
    )


def pruner_config(granularity: str, target_sparsity: float = 0.75) -> Any:
    """MagnitudePrunerConfig for conv layers: per_scalar, block (of 4 along dim 0) or n:m 3:4."""
    from coremltools.optimize.torch.pruning import MagnitudePrunerConfig

    module_config: dict[str, Any] = {"scheduler": {"update_steps": [2, 4, 6]}}
    if granularity == "per_scalar":
        module_config.update(target_sparsity=target_sparsity, granularity="per_scalar")
    elif granularity == "block":
        module_config.update(target_sparsity=target_sparsity, block_size=4, granularity="per_scalar")
    elif granularity == "n_m":
        module_config.update(n_m_ratio=(3, 4))
    else:
        raise ValueError(f"granularity must be per_scalar, block or n_m, got {granularity!r}")
    return MagnitudePrunerConfig.from_dict({"module_type_configs": {"Conv2d": module_config}})


def train_with_pruner(model: torch.nn.Module, config: Any, steps: int = 8) -> torch.nn.Module:
    """A few SGD steps on synthetic data with the pruner stepping its schedule; then finalize."""
    from coremltools.optimize.torch.pruning import MagnitudePruner

    pruner = MagnitudePruner(model, config)
    model = pruner.prepare()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        inputs = torch.rand(8, *INPUT_SHAPE[1:], generator=generator)
        labels = torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        loss_fn(model(inputs), labels).backward()
        optimizer.step()
        pruner.step()
    pruner.finalize(inplace=True)
    return model.eval()


def strip_coreml_compression_metadata(model: torch.nn.Module) -> torch.nn.Module:
    """Drop the ``_COREML_*`` buffers that coremltools.optimize.torch registers at finalize."""
    for module in model.modules():
        for name in [key for key in module._buffers if key.startswith("_COREML_")]:
            del module._buffers[name]
    return model


def convert_with_sparse_pack(
    model: torch.nn.Module, report: ms.SparsityReport, target: Any = None
) -> Any:
    """Trace and convert with ``mil_sparsity::sparse_pack`` appended to the default pipeline."""
    example = torch.rand(*INPUT_SHAPE)
    traced = torch.jit.trace(model, example)
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(ms.SPARSE_PACK)
    pipeline.set_options(ms.SPARSE_PACK, {"config": ms.PackConfig(weight_threshold=WEIGHT_THRESHOLD), "report": report})
    return ct.convert(
        traced,
        inputs=[ct.TensorType(shape=INPUT_SHAPE)],
        pass_pipeline=pipeline,
        minimum_deployment_target=target or ct.target.iOS17,
        convert_to="mlprogram",
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--granularity", default="per_scalar", choices=["per_scalar", "block", "n_m"])
    args = parser.parse_args(argv)
    model = strip_coreml_compression_metadata(train_with_pruner(build_model(), pruner_config(args.granularity)))
    for name, parameter in model.named_parameters():
        if parameter.dim() > 1:
            print(f"{name}: {float((parameter == 0).float().mean()):.3f} zeros after training")
    report = ms.SparsityReport()
    convert_with_sparse_pack(model, report)
    print()
    print(report.format_table(include_skipped=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
