"""How scripts/conformance.py and tests/test_conformance.py run a coremltools suite with the
conformance plugin (ct_conformance.py): the pytest command, and its JSON-lines report."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[2]

SUITES = {
    "ops": "coremltools.converters.mil.mil.ops.tests",
    "torch": "coremltools.converters.mil.frontend.torch.test.test_torch_ops",
}
#: the op test modules whose ops have threaded kernels (products, convolutions, recurrent
#: layers, attention, activations, norms)
THREADED_OP_MODULES = tuple(
    f"{SUITES['ops']}.{module}"
    for module in (
        "iOS14.test_linear", "iOS14.test_conv", "iOS14.test_recurrent", "iOS14.test_activation",
        "iOS14.test_normalization", "iOS17.test_linear", "iOS18.test_transformers",
    )
)


def pytest_command(
    target: str | Sequence[str], report: Path, sample: int = 0, functions: float = 1.0, perturb: bool = False,
    threads: int = 1,
) -> tuple[list[str], dict[str, str]]:
    """The pytest command (and its environment) running ``target`` (a module or package name,
    or several) with the conformance plugin, one JSON line per case into ``report``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "tests" / "conformance"), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.setdefault("TQDM_DISABLE", "1")
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "ct_conformance",
        "--rootdir", str(ROOT), "-o", "addopts=", "--tb=no", "-W", "ignore",
        f"--conformance-sample={sample}", f"--conformance-functions={functions}",
        f"--conformance-report={report}", *(["--conformance-perturb"] if perturb else []),
        f"--conformance-threads={threads}",
        "--pyargs", *([target] if isinstance(target, str) else target),
    ]
    return command, env


def read_report(report: Path) -> list[dict[str, str]]:
    """One dict per case: ``case`` (id), ``outcome``, ``detail``."""
    return [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
