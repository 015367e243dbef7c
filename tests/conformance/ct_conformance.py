"""A pytest plugin: coremltools' own op and frontend tests, answered by our reference evaluator.

coremltools' tests compare what the Core ML runtime predicts with expected values, and skip
the comparison off macOS. Loaded with ``-p ct_conformance`` (``tests/conformance`` on
``sys.path``), this plugin makes them run the comparison with
:class:`mil_sparsity.reference.ReferenceEvaluator` standing in for ``MLModel.predict``:

- ``_IS_MACOS`` is set in coremltools' two test helper modules (``testing_utils`` of the MIL
  tests and of the torch frontend tests), and ``coremltools.models.utils._macos_version``
  reports a recent macOS, so the guarded comparisons run;
- ``MLModel.predict`` evaluates the model's program (outputs cast to the description's
  dtypes, scalars as shape (1,), like Core ML); an error while computing becomes a
  ``RuntimeError`` as the runtime raises; a model that is not an ML Program or image inputs
  raise :class:`NotConformanceCase`; ``MLModel.make_state`` gives the evaluator's state, which
  ``predict(..., state=)`` runs on.

Each case gets an outcome, recorded in the report's ``user_properties`` and, with
``--conformance-report=PATH``, one JSON line per case: ``pass``, ``fail`` (wrong values or
shapes), ``crash`` (the evaluator raised where the test expected values), ``unsupported``
(an op type or feature the evaluator lacks), ``not mlprogram``, ``conversion failed`` (the
test failed before anything was predicted: coremltools' converter or the test itself),
``no prediction`` (passed without predicting), ``skipped`` and ``xfail``. A case whose program
draws random values (``random_*`` ops) and passes is ``random``: its values cannot be compared
draw for draw, and coremltools' tests assert only what every draw satisfies (shapes, degenerate
laws such as prob 0 or 1, stddev 0 or low == high, values in [0, 1), category frequencies
within 0.01 of the law over 50,000 draws); the laws themselves are tested statistically in
tests/test_reference_random.py. Such a case that fails is a ``fail`` like any other.

Options: ``--conformance-sample=N`` keeps at most N cases per test function, chosen by a
stable hash of the case id (0: every case), and with ``--conformance-functions=F`` only the
share F of the test functions (by a hash of the function's id); ``--conformance-perturb`` adds an offset to every
value the evaluator returns (the sample must then fail: the harness bites);
``--conformance-threads=N`` runs every evaluator with N threads and, for N >= 2, lowers the
evaluator's sharing thresholds (``sharing.py``) so that the suites' small cases are cut into
shares too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from typing import Any, Optional

import numpy as np
import pytest

os.environ.setdefault("PYMIL_TEST_TARGETS", "mlprogram")  # neural network cases not generated

OUTCOMES = (
    "pass",
    "random",
    "fail",
    "crash",
    "unsupported",
    "not mlprogram",
    "conversion failed",
    "no prediction",
    "skipped",
    "xfail",
)
RUNTIME_ERROR = "Unable to compute the prediction using ML Program"


class NotConformanceCase(Exception):
    """The case needs what the evaluator does not model: ``kind`` is its outcome."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class _Case:
    """What the running case has asked the evaluator."""

    def __init__(self) -> None:
        self.predictions = 0
        self.kind: Optional[str] = None  # "unsupported", "not mlprogram" or "crash"
        self.detail = ""
        self.random_ops: set[str] = set()  # random op types in the programs it predicted with
        self.shares = 0  # shares its threaded runs handed to the evaluator's pool


_CASE = _Case()
_PERTURB = False
_THREADS = 1  # the evaluator's threads (--conformance-threads)


def _spec_dtypes(mlmodel: Any) -> dict[str, np.dtype[Any]]:
    from coremltools.proto import FeatureTypes_pb2 as ft

    by_type = {
        ft.ArrayFeatureType.FLOAT32: np.dtype(np.float32),
        ft.ArrayFeatureType.FLOAT16: np.dtype(np.float16),
        ft.ArrayFeatureType.DOUBLE: np.dtype(np.float64),
        ft.ArrayFeatureType.INT32: np.dtype(np.int32),
    }
    dtypes = {}
    for feature in mlmodel.output_description._fd_spec:
        if feature.type.WhichOneof("Type") == "multiArrayType":
            dtype = by_type.get(feature.type.multiArrayType.dataType)
            if dtype is not None:
                dtypes[feature.name] = dtype
    return dtypes


def _perturbed(value: np.ndarray) -> np.ndarray:
    if value.dtype.kind == "b":
        return ~value
    if value.dtype.kind in "iu":
        return value + 1
    return (value + 1.0 + 0.1 * np.abs(value)).astype(value.dtype)


def _random_ops(mlmodel: Any, function_name: str) -> set[str]:
    """The ``random_*`` op types of the model's function (nested blocks included)."""
    program = getattr(mlmodel, "_mil_program", None)
    if program is None or function_name not in program.functions:
        return set()
    found: set[str] = set()
    blocks = [program.functions[function_name]]
    while blocks:
        for op in blocks.pop().operations:
            if op.op_type.startswith("random_"):
                found.add(op.op_type)
            blocks.extend(op.blocks)
    return found


class _State:
    """What the patched ``MLModel.make_state`` returns: the model's evaluator and a state of it
    (a state belongs to the evaluator that made it)."""

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator
        self.state = evaluator.make_state()


def _evaluator(mlmodel: Any) -> Any:
    from mil_sparsity.reference import ReferenceEvaluator

    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise NotConformanceCase("not mlprogram", f"a {spec.WhichOneof('Type')} model")
    function_name = getattr(mlmodel, "function_name", None) or "main"
    try:
        return ReferenceEvaluator(mlmodel, function_name=function_name, threads=_THREADS)
    except NotImplementedError as error:
        raise NotConformanceCase("unsupported", str(error)) from error


def _evaluate(mlmodel: Any, data: Any, state: Optional[_State] = None) -> dict[str, np.ndarray]:
    evaluator = _evaluator(mlmodel) if state is None else state.evaluator
    if not isinstance(data, dict):
        raise NotConformanceCase("unsupported", "batch prediction")
    for name, value in data.items():
        if not isinstance(value, (np.ndarray, np.generic, int, float, list, tuple)):
            raise NotConformanceCase("unsupported", f"input {name!r} of type {type(value).__name__}")
    function_name = getattr(mlmodel, "function_name", None) or "main"
    _CASE.random_ops |= _random_ops(mlmodel, function_name)
    try:
        outputs = evaluator.run(
            {name: np.asarray(value) for name, value in data.items()},
            state=None if state is None else state.state,
        )
    except NotImplementedError as error:  # a kernel lacks an option (crop_resize's sampling modes)
        raise NotConformanceCase("unsupported", str(error)) from error
    dtypes = _spec_dtypes(mlmodel)
    result = {}
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim == 0:  # Core ML returns scalars as shape (1,)
            value = value.reshape(1)
        if name in dtypes and value.dtype != dtypes[name]:
            value = value.astype(dtypes[name])
        result[name] = _perturbed(value) if _PERTURB else value
    return result


def _predict(self: Any, data: Any, state: Optional[_State] = None) -> dict[str, np.ndarray]:
    _CASE.predictions += 1
    try:
        return _evaluate(self, data, state)
    except NotConformanceCase as error:
        _CASE.kind, _CASE.detail = error.kind, str(error)
        raise
    except Exception as error:  # the runtime reports a failed prediction as a RuntimeError
        _CASE.kind, _CASE.detail = "crash", f"{type(error).__name__}: {error}"
        raise RuntimeError(f"{RUNTIME_ERROR}: {type(error).__name__}: {error}") from error


def _make_state(self: Any) -> _State:
    try:
        return _State(_evaluator(self))
    except NotConformanceCase as error:
        _CASE.kind, _CASE.detail = error.kind, str(error)
        raise


def _patch() -> None:
    import coremltools.converters.mil.testing_utils as mil_testing
    import coremltools.models.utils as model_utils
    from coremltools.models import MLModel

    mil_testing._IS_MACOS = True
    model_utils._macos_version = lambda: (15, 4)  # type: ignore[attr-defined]
    try:
        import coremltools.converters.mil.frontend.torch.test.testing_utils as torch_testing
    except ImportError:  # no torch: the frontend suite cannot run anyway
        pass
    else:
        torch_testing._IS_MACOS = True
    MLModel.predict = _predict
    MLModel.make_state = _make_state


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("conformance", "coremltools' tests against mil_sparsity.reference")
    group.addoption("--conformance-sample", type=int, default=0, help="at most N cases per test function (0: all)")
    group.addoption(
        "--conformance-functions", type=float, default=1.0,
        help="with --conformance-sample: keep only this share of the test functions (by hash)",
    )
    group.addoption("--conformance-perturb", action="store_true", help="perturb every evaluator output")
    group.addoption("--conformance-report", default=None, help="write one JSON line per case here")
    group.addoption(
        "--conformance-threads", type=int, default=1,
        help="the evaluator's threads; 2 or more also lowers its sharing thresholds (sharing.py)",
    )


def pytest_configure(config: Any) -> None:
    global _PERTURB, _THREADS
    _PERTURB = bool(config.getoption("conformance_perturb"))
    _THREADS = int(config.getoption("conformance_threads"))
    if _THREADS > 1:
        from sharing import count_shares, share_everything

        share_everything(setattr)
        count_shares(setattr, _count_share)
    _patch()
    config._conformance_outcomes = {}


def _count_share() -> None:
    _CASE.shares += 1


def case_id(item: Any) -> str:
    """The case's id with its module path from ``coremltools/`` on (stable across venvs)."""
    path = str(item.path).replace(os.sep, "/")
    start = path.rfind("/coremltools/")
    module = path[start + 1 :] if start >= 0 else path
    return module + "::" + item.nodeid.split("::", 1)[1]


def case_hash(case: str) -> str:
    return hashlib.sha256(case.encode()).hexdigest()


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    per_function = int(config.getoption("conformance_sample"))
    if per_function <= 0:
        return
    groups: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        groups[case_id(item).split("[")[0]].append(item)
    share = float(config.getoption("conformance_functions"))
    keep = set()
    for function, group in groups.items():
        if int(case_hash(function)[:8], 16) >= share * 16**8:
            continue
        chosen = sorted(group, key=lambda item: case_hash(case_id(item)))[:per_function]
        keep.update(id(item) for item in chosen)
    config.hook.pytest_deselected(items=[item for item in items if id(item) not in keep])
    items[:] = [item for item in items if id(item) in keep]


def pytest_runtest_setup(item: Any) -> None:
    global _CASE
    _CASE = _Case()


def _outcome(report: Any) -> str:
    if report.skipped:
        return "xfail" if hasattr(report, "wasxfail") else "skipped"
    if report.passed:
        if not _CASE.predictions:
            return "no prediction"
        return "random" if _CASE.random_ops else "pass"
    if _CASE.kind is not None:
        return _CASE.kind
    return "fail" if _CASE.predictions else "conversion failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    outcomes = item.config._conformance_outcomes
    if report.when == "call" or (report.when == "setup" and not report.passed):
        kind = _outcome(report)
        detail = _CASE.detail if kind in ("crash", "unsupported", "not mlprogram") else ""
        if kind == "random":
            detail = ", ".join(sorted(_CASE.random_ops))
        if kind in ("fail", "conversion failed") and report.longrepr is not None:
            detail = str(getattr(report.longrepr, "reprcrash", None) and report.longrepr.reprcrash.message)
        outcomes[case_id(item)] = (kind, detail[:500], _CASE.shares)
        report.user_properties.append(("conformance", kind))


def pytest_sessionfinish(session: Any) -> None:
    path = session.config.getoption("conformance_report")
    outcomes = session.config._conformance_outcomes
    if path:
        with open(path, "w") as stream:
            for nodeid, (kind, detail, shares) in outcomes.items():
                stream.write(json.dumps({"case": nodeid, "outcome": kind, "detail": detail, "shares": shares}) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    outcomes = terminalreporter.config._conformance_outcomes
    counts = {kind: 0 for kind in OUTCOMES}
    for kind, *_ in outcomes.values():
        counts[kind] += 1
    terminalreporter.write_line(
        "conformance: " + ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
    )
