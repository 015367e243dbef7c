"""Run coremltools' own test suites against mil_sparsity.reference and print a table.

    python scripts/conformance.py                      # both suites, every case (long)
    python scripts/conformance.py ops --sample 3       # at most 3 cases per test function
    python scripts/conformance.py torch --sample 2 -- -k TestStack
    python scripts/conformance.py ops --sample 1 --perturb   # must fail: the harness bites
    python scripts/conformance.py ops --threads 2      # threaded runs, every kernel's shares
    python scripts/conformance.py ops --split          # one pytest process per opset package

Suites: ``ops`` (coremltools' MIL op tests, iOS14..iOS18) and ``torch`` (its PyTorch
frontend op tests). Each runs in a pytest subprocess with the plugin
``tests/conformance/ct_conformance.py`` (see there for the outcomes); the table has one row
per test class, then the totals, then every case that failed or crashed with its message.
Exit status: 1 when a case failed or crashed, else 0. Arguments after ``--`` go to pytest.
``--split`` runs each subpackage and module of a package suite (ops: coreml_dialect, iOS14 ..
iOS18, test_utils) in its own pytest process, one report each, and prints one table: a whole
suite then survives a process that dies, and the parts print their time as they finish.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pkgutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "conformance"))
from ct_conformance import OUTCOMES  # noqa: E402
from runner import SUITES, pytest_command, read_report  # noqa: E402

BAD = ("fail", "crash")


def run_suite(
    target: str, sample: int, functions: float, perturb: bool, pytest_args: list[str], report: Path, threads: int = 1
) -> int:
    command, env = pytest_command(target, report, sample, functions, perturb, threads)
    command += pytest_args
    completed = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not report.exists():
        sys.stdout.write(completed.stdout)
    return completed.returncode


def parts(target: str) -> list[str]:
    """A package's subpackages and test modules (a module: itself)."""
    spec = importlib.util.find_spec(target)
    if spec is None or not spec.submodule_search_locations:
        return [target]
    names = sorted(info.name for info in pkgutil.iter_modules(spec.submodule_search_locations))
    return [f"{target}.{name}" for name in names if name.startswith(("iOS", "test_", "coreml_"))]


def table(suite: str, rows: list[dict[str, str]]) -> Counter[str]:
    by_class: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        module, _, rest = row["case"].partition("::")
        test_class = rest.split("::")[0] if "::" in rest else ""
        short = module.split("/tests/")[-1].split("/test/")[-1].removesuffix(".py")
        by_class[f"{short}::{test_class}" if test_class else short][row["outcome"]] += 1
    columns = [kind for kind in OUTCOMES if any(kind in counts for counts in by_class.values())]
    width = max([len(name) for name in by_class] + [len(suite)])
    header = f"{suite:<{width}}  " + "  ".join(f"{kind:>{max(len(kind), 5)}}" for kind in columns)
    print(header)
    print("-" * len(header))
    total: Counter[str] = Counter()
    for name in sorted(by_class):
        counts = by_class[name]
        total.update(counts)
        print(f"{name:<{width}}  " + "  ".join(f"{counts.get(kind, 0):>{max(len(kind), 5)}}" for kind in columns))
    print("-" * len(header))
    print(f"{'total':<{width}}  " + "  ".join(f"{total.get(kind, 0):>{max(len(kind), 5)}}" for kind in columns))
    failing = [row for row in rows if row["outcome"] in BAD]
    if failing:
        print(f"\n{len(failing)} failing case(s):")
        for row in failing:
            print(f"  [{row['outcome']}] {row['case']}\n      {row['detail'][:300]}")
    print()
    return total


def main(argv: list[str]) -> int:
    pytest_args: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, pytest_args = argv[:index], argv[index + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--sample", type=int, default=0, help="at most N cases per test function (0: all)")
    parser.add_argument("--functions", type=float, default=1.0, help="with --sample: this share of the test functions")
    parser.add_argument("--perturb", action="store_true", help="perturb the evaluator's outputs")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="the evaluator's threads; 2 or more also cuts the small cases into shares",
    )
    parser.add_argument("--split", action="store_true", help="one pytest process per subpackage of a package suite")
    parser.add_argument("--keep", type=Path, default=None, help="directory to keep the JSON reports in")
    args = parser.parse_args(argv)
    bad = 0
    with tempfile.TemporaryDirectory() as scratch:
        for suite in args.suites or list(SUITES):
            targets = parts(SUITES[suite]) if args.split else [SUITES[suite]]
            rows = []
            for target in targets:
                name = suite if len(targets) == 1 else f"{suite}.{target.rsplit('.', 1)[-1]}"
                report = (args.keep or Path(scratch)) / f"{name}.jsonl"
                report.parent.mkdir(parents=True, exist_ok=True)
                start = time.monotonic()
                code = run_suite(target, args.sample, args.functions, args.perturb, pytest_args, report, args.threads)
                if len(targets) > 1:
                    print(f"{name}: pytest exit {code}, {(time.monotonic() - start) / 60:.1f} min", flush=True)
                if not report.exists():
                    print(f"{name}: pytest wrote no report (exit {code})")
                    bad += 1
                    continue
                rows += read_report(report)
            total = table(suite, rows)
            bad += sum(total.get(kind, 0) for kind in BAD)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
