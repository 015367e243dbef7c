"""Untrusted packages (issue 21): a fuzzer of saved .mlpackages.

Each case copies a small saved ML Program (two linear layers, four blob-backed consts; iOS16,
iOS18, or iOS18 with an int4-quantized weight), applies one or two mutations from
_mutations.py (Manifest.json entries and paths, spec shapes / dtypes / blob fileNames and
offsets / opsets, weight-file header and metadata, truncation, bit flips, symlinks, FIFOs,
extra and missing files) and runs one operation on it: ``report``, ``prune`` and ``prune --streaming`` through
``mil_sparsity.cli.main``, ``prune_weights`` (streams a path), ``apply_pipeline(streaming=False)``
(PyMIL) and the reference evaluator on a random input.

The oracle, for every case:

* a library call returns, or raises ValueError / TypeError / OSError from a frame inside
  mil_sparsity; an exception raised inside coremltools, numpy, protobuf or the stdlib (or any
  other type, MemoryError included) fails the case;
* a CLI call exits 0, 1 or 2; on error stderr holds exactly one ``mil-sparsity: error: ...``
  line, not an "unexpected <Type>" one, and no traceback;
* nothing in the case directory but the output changes (path, type, size, mtime, sha256): a
  failed prune leaves no ``.out.mlpackage.tmp-*`` directory, a failed library call nothing in
  the temporary directory (where its result package would go);
* a package written is self-contained: no symlinks, manifest item paths and blob fileNames
  resolve to files inside it, and it holds no copy of a file from outside the package;
* no operation succeeds on a package that refers outside itself (a manifest item path, blob
  fileName or symlink that resolves outside it);
* an operation ends within CASE_SECONDS and maps at most MEMORY_HEADROOM more (Linux).

CI runs a fixed-seed slice: ``CI_EXAMPLES`` cases per operation (1200 in all). Locally::

    MIL_SPARSITY_FUZZ_EXAMPLES=2000 pytest tests/test_untrusted_fuzz.py   # random, more cases
    MIL_SPARSITY_FUZZ_KEEP_GOING=1     collect every failing case, fail once at the end
    MIL_SPARSITY_FUZZ_LOG=cases.jsonl  one JSON line per case (operation, mutations, outcome)

The number of cases run per operation and outcome is printed at the end of the module.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coremltools as ct
from coremltools.proto import Model_pb2

import mil_sparsity as ms
from mil_sparsity import reference
from mil_sparsity.cli import main
from mil_sparsity.posthoc import load_model
from mil_sparsity.samples import input_specs, random_samples
from _models import mlp_model
from _packages import compressed_model
from _mutations import VICTIM_TOKEN, Case, Mutation, apply_all, blob_values, make_case, mutation, mutations, regular_bytes

CI_EXAMPLES = 200
EXAMPLES = int(os.environ.get("MIL_SPARSITY_FUZZ_EXAMPLES", CI_EXAMPLES))
KEEP_GOING = os.environ.get("MIL_SPARSITY_FUZZ_KEEP_GOING") == "1"
LOG = os.environ.get("MIL_SPARSITY_FUZZ_LOG")
PACKAGE_DIR = os.path.dirname(os.path.abspath(ms.__file__))
CLEAR_ERRORS = (ValueError, TypeError, OSError)
CASE_SECONDS = 20
MEMORY_HEADROOM = 4 << 30

CASES: collections.Counter[tuple[str, str]] = collections.Counter()
FAILURES: list[dict[str, Any]] = []


# ---- operations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    name: str
    run: Callable[[Case], Any]  # CLI: (exit code, stderr); library: the MLModel or None
    cli: bool
    writes: bool  # writes case.output (CLI prune)


def _cli(*args: str) -> Callable[[Case], tuple[int, str]]:
    def run(case: Case) -> tuple[int, str]:
        argv = [arg.format(pkg=case.package, out=case.output) for arg in args]
        stderr = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            code = main(argv)
        return code, stderr.getvalue()

    return run


def _pymil(case: Case) -> Any:
    pipeline = ct.PassPipeline.EMPTY
    pipeline.append_pass(ms.PRUNE_BY_MAGNITUDE)
    pipeline.set_options(ms.PRUNE_BY_MAGNITUDE, {"config": ms.MagnitudeConfig(target_sparsity=0.5)})
    return ms.apply_pipeline(str(case.package), pipeline, streaming=False)


def _evaluate(case: Case) -> None:
    sample = random_samples(input_specs(load_model(str(case.package))), 1)[0]
    reference.run(str(case.package), sample)


PRUNE = ("prune", "{pkg}", "-o", "{out}", "--target-sparsity", "0.5")
OPERATIONS = [
    Operation("cli report", _cli("report", "{pkg}"), cli=True, writes=False),
    Operation("cli prune", _cli(*PRUNE), cli=True, writes=True),
    Operation("cli prune --streaming", _cli(*PRUNE, "--streaming"), cli=True, writes=True),
    Operation("prune_weights", lambda case: ms.prune_weights(str(case.package), ms.MagnitudeConfig(target_sparsity=0.5)), cli=False, writes=False),
    Operation("apply_pipeline pymil", _pymil, cli=False, writes=False),
    Operation("reference.run", _evaluate, cli=False, writes=False),
]


# ---- the oracle ------------------------------------------------------------------------------
def innermost_frame(error: BaseException) -> tuple[str, int]:
    tb = error.__traceback__
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename, tb.tb_lineno


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[Any, ...]]:
    """relative path -> (kind, size, mtime_ns, sha256 | link target) of everything under root."""
    skipped = {str(path) for path in skip}
    entries: dict[str, tuple[Any, ...]] = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if os.path.join(top, name) not in skipped]
        for name in dirs + files:
            path = os.path.join(top, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entry: tuple[Any, ...] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entry = ("dir",)
            elif not stat.S_ISREG(info.st_mode):  # a FIFO: never opened
                entry = ("special", stat.S_IFMT(info.st_mode), info.st_mtime_ns)
            else:
                entry = ("file", info.st_size, info.st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest())
            entries[os.path.relpath(path, root)] = entry
    return entries


def package_problems(package: Path, written: bool) -> list[str]:
    """What in a package leads outside it, after '..' and symlinks: Manifest.json, a manifest
    item path, a blob fileName of the root model. For a package we ``written`` (an output) also
    any symlink, a copy of a victim file, an unreadable manifest or spec, and a blob fileName
    that is not ``@model_path/...`` naming a file inside."""
    root, problems = str(package), []
    for top, dirs, files in os.walk(package) if written else ():
        for name in dirs + files:
            path = os.path.join(top, name)
            if os.path.islink(path):
                problems.append(f"{os.path.relpath(path, package)} is a symlink")
            elif os.path.isfile(path) and VICTIM_TOKEN in Path(path).read_bytes():
                problems.append(f"{os.path.relpath(path, package)} holds a copy of a file outside the package")
    manifest_path = os.path.join(package, "Manifest.json")
    if not _inside(manifest_path, root):
        return problems + ["Manifest.json leads outside"]
    try:
        manifest = json.loads(regular_bytes(manifest_path))
        paths = {key: os.path.join(package, "Data", entry["path"]) for key, entry in manifest["itemInfoEntries"].items()}
        problems += [f"manifest item path {path!r} leads outside" for path in paths.values() if not _inside(path, root)]
        spec_path = paths[manifest["rootModelIdentifier"]]
        spec = Model_pb2.Model()
        spec.ParseFromString(regular_bytes(spec_path) if _inside(spec_path, root) else b"")
    except Exception as error:  # the manifest or spec of an input may be anything
        return problems + ([f"unreadable manifest or root model ({type(error).__name__}: {error})"] if written else [])
    for value in blob_values(spec):
        name = value.blobFileValue.fileName
        target = os.path.join(os.path.dirname(spec_path), name.removeprefix("@model_path/"))
        if not _inside(target, root):
            problems.append(f"blob fileName {name!r} leads outside")
        elif written and (not name.startswith("@model_path/") or not os.path.isfile(target)):
            problems.append(f"blob fileName {name!r} is not a file inside the package")
    return problems


def check_library(operation: Operation, case: Case) -> tuple[str, Optional[str], Optional[Path]]:
    """(outcome, failure or None, package written or None) of a library call."""
    try:
        result = operation.run(case)
    except MemoryError:
        return "error", "MemoryError", None
    except Exception as error:
        where, line = innermost_frame(error)
        described = f"{type(error).__name__} at {os.path.relpath(where, os.path.dirname(PACKAGE_DIR))}:{line}: {str(error)[:200]}"
        if not isinstance(error, CLEAR_ERRORS):
            return "error", f"not a clear error type: {described}", None
        if not _inside(where, PACKAGE_DIR):
            return "error", f"raised outside mil_sparsity: {described}", None
        return "error", None, None
    path = getattr(result, "package_path", None)
    return "ok", None, Path(path) if path else None


def check_cli(operation: Operation, case: Case) -> tuple[str, Optional[str], Optional[Path]]:
    code, stderr = operation.run(case)
    if code == 0:
        if operation.writes and not case.output.is_dir():
            return "ok", "exit 0 but no output package", None
        return "ok", None, case.output if operation.writes else None
    errors = [line for line in stderr.splitlines() if line.startswith("mil-sparsity:")]
    if code not in (1, 2):
        return "error", f"exit code {code}: {errors}", None
    if len(errors) != 1 or not errors[0].startswith("mil-sparsity: error: ") or "Traceback" in stderr:
        return "error", f"stderr is not one error line: {stderr[-300:]!r}", None
    if errors[0].startswith("mil-sparsity: error: unexpected"):
        return "error", errors[0][len("mil-sparsity: error: "):][:300], None
    if case.output.exists():
        return "error", f"exit {code} but {case.output} exists", None
    return "error", None, None


class CaseTimeout(BaseException):
    """Raised in an operation that runs past CASE_SECONDS (a BaseException: no except clause of
    the library's catches it)."""


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """Run the body with a time limit (SIGALRM) and, on Linux, an address-space limit of
    MEMORY_HEADROOM above what the process maps now: a declared size that is trusted and
    allocated shows up as a MemoryError instead of swapping the machine."""
    import resource
    import signal

    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"the operation ran longer than {CASE_SECONDS} s")

    limits = resource.getrlimit(resource.RLIMIT_AS)
    try:
        mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        mapped = None
    if mapped is not None and limits[1] == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_AS, (mapped + MEMORY_HEADROOM, limits[1]))
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(CASE_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, limits)


@contextlib.contextmanager
def temporary_dir(path: Path) -> Iterator[None]:
    """Library results (temporary packages) go to ``path``."""
    old = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield
    finally:
        tempfile.tempdir = old


def _changes(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    changes = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        if old is None or new is None:
            changes.append(f"{path} ({'created' if old is None else 'removed'})")
        else:
            changes.append(f"{path} ({'mtime' if old[:2] == new[:2] and old[3:] == new[3:] else 'content'})")
    return changes


def run_case(base: Path, drawn: list[Mutation], operation: Operation, keep_going: bool = KEEP_GOING) -> list[str]:
    """Run one case; the failures found (none: the case passes; with ``keep_going`` they are
    recorded in FAILURES instead)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        case = make_case(base, Path(tmp))
        applied = apply_all(drawn, case)
        scratch = case.root / "tmp"
        scratch.mkdir()
        before = snapshot(case.root, (case.output, scratch))
        outside = package_problems(case.package, written=False)
        try:
            with temporary_dir(scratch), bounded():
                outcome, failure, written = (check_cli if operation.cli else check_library)(operation, case)
        except CaseTimeout as timeout:
            outcome, failure, written = "error", str(timeout), None
        failures = [failure] if failure else []
        changed = _changes(before, snapshot(case.root, (case.output, scratch)))
        if changed:
            failures.append("changed outside the output: " + ", ".join(changed[:4]))
        if outcome == "error" and any(scratch.iterdir()):
            failures.append("left temporary files: " + ", ".join(sorted(p.name for p in scratch.iterdir())[:3]))
        if outcome == "ok" and outside:
            failures.append(f"succeeded on a package that refers outside itself ({outside[0]})")
        problems = package_problems(written, written=True) if written is not None else []
        if problems:
            failures.append("output not self-contained: " + "; ".join(problems[:3]))
    if drawn:  # the unmutated bases are not fuzzed cases
        CASES[(operation.name, "FAIL" if failures else outcome)] += 1
    record = {"operation": operation.name, "base": base.name, "mutations": [str(m) for m in applied], "kinds": [m.kind for m in applied], "outcome": outcome, "failures": failures}
    if LOG:
        with open(LOG, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    if failures and keep_going:
        FAILURES.append(record)
        return []
    return failures


# ---- the tests -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bases(tmp_path_factory: Any, request: Any) -> Iterator[dict[str, Path]]:
    """The source packages: the 64 -> 64 -> 48 MLP saved for iOS16 and iOS18 (four fp16 blobs),
    and for iOS18 with its first weight int4-quantized (a sub-byte blob read by a constexpr op)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.pop("MIL_SPARSITY_TRACEBACK", None)
    root = tmp_path_factory.mktemp("fuzz-bases")
    paths = {}
    for target in ("iOS16", "iOS18"):
        paths[target] = root / f"mlp-{target}.mlpackage"
        mlp_model(getattr(ct.target, target), sizes=(64, 64, 48)).save(str(paths[target]))
    paths["iOS18-int4"] = root / "mlp-iOS18-int4.mlpackage"
    compressed_model("int4", ct.target.iOS18).save(str(paths["iOS18-int4"]))
    yield paths
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and CASES:
        reporter.write_line(f"\nuntrusted-package fuzzer: {sum(CASES.values())} cases")
        for name in [op.name for op in OPERATIONS]:
            counts = {outcome: CASES[(name, outcome)] for outcome in ("ok", "error", "FAIL") if CASES[(name, outcome)]}
            reporter.write_line(f"  {name:24} {sum(counts.values()):6}  {counts}")


def test_base_packages_pass_every_operation(bases: dict[str, Path]) -> None:
    """Unmutated, every operation succeeds and the prunes write a self-contained package: the
    oracle accepts a good package (and the fuzzed failures come from the mutations)."""
    failures = {
        f"{base.name}: {operation.name}": run_case(base, [], operation, keep_going=False)
        for base in bases.values()
        for operation in OPERATIONS
    }
    assert {case: found for case, found in failures.items() if found} == {}


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(drawn=mutation())
def test_escaping_mutations_are_seen(bases: dict[str, Path], drawn: Mutation) -> None:
    """The oracle sees exactly the mutations flagged ``escapes`` as leading outside the package
    (bit flips and truncation aside: they may make anything of a path)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        case = make_case(bases["iOS18-int4"], Path(tmp))
        drawn.apply(case)
        problems = package_problems(case.package, written=False)
    if not drawn.kind.startswith("file."):
        assert bool(problems) == drawn.escapes, problems


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.name.replace(" ", "-") for op in OPERATIONS])
def test_mutated_package(bases: dict[str, Path], operation: Operation) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize="MIL_SPARSITY_FUZZ_EXAMPLES" not in os.environ,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(target=st.sampled_from(sorted(bases)), drawn=mutations())
    def case(target: str, drawn: list[Mutation]) -> None:
        failures = run_case(bases[target], drawn, operation)
        assert not failures, f"{operation.name} on {[str(m) for m in drawn]}: " + " | ".join(failures)

    case()
    mine = [f for f in FAILURES if f["operation"] == operation.name]  # MIL_SPARSITY_FUZZ_KEEP_GOING=1
    assert not mine, f"{len(mine)} failing cases:\n" + "\n".join(
        sorted({f"{f['kinds']} -> {' | '.join(f['failures'])[:200]}" for f in mine})
    )
