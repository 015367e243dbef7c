"""The pass catalog: every mil_sparsity pass as data, read by the PyMIL passes, the streaming
rewriter, the one-call API, the command line and the manifest.

An entry says which configs a pass takes, which weight dtypes it handles, its options (each
with the function that checks and normalises a value), the config it runs without one, and
whether the streaming rewriter can run it. Adding a pass is a module under
:mod:`mil_sparsity.passes` plus one entry here; nothing else names passes.

Option checkers take ``(value, where)`` and return the normalised value or raise
TypeError/ValueError naming ``where``; for ``config``, ``report`` and ``calibration``, ``None``
means "not set".
"""

from __future__ import annotations

from typing import Any, Callable, Final, Mapping, Optional

import attrs

from mil_sparsity.calibration.stats import ActivationStats
from mil_sparsity.configs import BlockConfig, MagnitudeConfig, NMConfig, PackConfig, ThresholdConfig
from mil_sparsity.configs import SparsityConfig, is_activation_scored, is_reconstruction
from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.report import SparsityReport
from mil_sparsity.plan.scoring import load_calibration
from mil_sparsity.selector import OpSelector, as_selector

NAMESPACE: Final = "mil_sparsity"
CONFIG: Final = "config"
REPORT: Final = "report"
CALIBRATION: Final = "calibration"
JOINT_COMPRESSION: Final = "joint_compression"

OptionCheck = Callable[[Any, str], Any]


def qualified(short_name: str) -> str:
    """``prune_by_magnitude`` -> ``mil_sparsity::prune_by_magnitude``."""
    return f"{NAMESPACE}::{short_name}"


def is_ours(pass_name: str) -> bool:
    return pass_name.startswith(f"{NAMESPACE}::")


def check_report(value: Any, where: str) -> Optional[SparsityReport]:
    if value is not None and not isinstance(value, SparsityReport):
        raise InvalidTypeError(f"{where} must be a SparsityReport, got {type(value).__name__}")
    return value


def check_flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{where} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_calibration_option(value: Any, where: str) -> Optional[ActivationStats]:
    return load_calibration(value, where)


@attrs.frozen
class PassEntry:
    """One pass as data (see the module doc)."""

    name: str
    #: ``module:Class`` of the pass (imported by :mod:`mil_sparsity.passes` to register it)
    implementation: str
    description: str
    configs: tuple[type[SparsityConfig], ...]
    dtypes: frozenset[str]
    #: option name -> its checker; ``config`` is checked against :attr:`configs` as well
    options: Mapping[str, OptionCheck]
    #: the config used when none is set (None: the pass needs one; :attr:`missing_config` says so)
    default_config: Optional[SparsityConfig]
    #: options the streaming rewriter can honour (the rest need PyMIL)
    streaming_options: frozenset[str]
    missing_config: str = ""

    @property
    def short_name(self) -> str:
        return self.name.split("::", 1)[1]

    def takes(self, config: Optional[SparsityConfig]) -> bool:
        return config is not None and isinstance(config, self.configs)

    def check_selector(self, selector: OpSelector) -> OpSelector:
        """InvalidInputError if any config of ``selector`` is of a kind this pass does not take."""
        accepted = ", ".join(cls.__name__ for cls in self.configs)
        for where, config in selector.entries():
            if config is not None and not self.takes(config):
                raise InvalidInputError(f"{self.name} takes {accepted}; {where} is a {type(config).__name__}")
        return selector

    def check_option(self, option: str, value: Any) -> Any:
        """The normalised value of ``option``; TypeError/ValueError naming the pass and option."""
        where = f"{self.name}: option {option}"
        if option not in self.options:
            raise InvalidInputError(
                f"{self.name} has no option {option!r}; its options are {', '.join(self.options)}"
            )
        value = self.options[option](value, where)
        if option == CONFIG and value is not None:
            value = self.check_selector(value)
        return value

    def default_selector(self) -> OpSelector:
        """The selection used when no ``config`` option is set; ValueError if there is none."""
        if self.default_config is None:
            raise InvalidInputError(self.missing_config or f"{self.name} needs a config option")
        return OpSelector(global_config=self.default_config)

    def check_calibration(self, selector: OpSelector, calibration: Optional[ActivationStats]) -> None:
        """ValueError if a config of ``selector`` scores by activation or reconstructs (SparseGPT,
        ADMM) and there are no statistics."""
        if calibration is not None:
            return
        for where, config in selector.entries():
            if config is None:
                continue
            what = None
            if is_activation_scored(config):
                what = "scoring='activation'"
            elif is_reconstruction(config):
                what = f"method={getattr(config, 'method', None)!r}"
            if what is not None:
                raise InvalidInputError(
                    f"{self.name}: {where} has {what}, which needs the pass option "
                    f"{CALIBRATION!r} (an ActivationStats, or the path of one written by "
                    "ActivationStats.save or `mil-sparsity calibrate`"
                    + ("" if what.startswith("scoring") else ", with Gram matrices: --gram")
                    + "); it is not set"
                )


def _selector_option(value: Any, where: str) -> Optional[OpSelector]:
    return None if value is None else as_selector(value)


_COMMON: Final[Mapping[str, OptionCheck]] = {CONFIG: _selector_option, REPORT: check_report}
_FLOATS: Final = frozenset({"float16", "float32"})

PRUNE_BY_THRESHOLD: Final = PassEntry(
    name=qualified("prune_by_threshold"),
    implementation="mil_sparsity.passes.prune_by_threshold:PruneByThreshold",
    description="Zero weights with |w| <= threshold and store them as constexpr_sparse_to_dense.",
    configs=(ThresholdConfig,),
    dtypes=_FLOATS,
    options=_COMMON,
    default_config=ThresholdConfig(),
    streaming_options=frozenset(_COMMON),
)
PRUNE_BY_MAGNITUDE: Final = PassEntry(
    name=qualified("prune_by_magnitude"),
    implementation="mil_sparsity.passes.prune_by_magnitude:PruneByMagnitude",
    description="Zero the smallest-magnitude weights (unstructured, block or n:m) and pack them.",
    configs=(MagnitudeConfig, BlockConfig, NMConfig),
    dtypes=_FLOATS,
    options={**_COMMON, CALIBRATION: check_calibration_option},
    default_config=None,
    streaming_options=frozenset({*_COMMON, CALIBRATION}),
    missing_config=(
        "mil_sparsity::prune_by_magnitude has no default sparsity: set its 'config' option "
        "to a MagnitudeConfig, BlockConfig or NMConfig (or an OpSelector of them), e.g. "
        'pipeline.set_options("mil_sparsity::prune_by_magnitude", '
        '{"config": MagnitudeConfig(target_sparsity=0.5)})'
    ),
)
SPARSE_PACK: Final = PassEntry(
    name=qualified("sparse_pack"),
    implementation="mil_sparsity.passes.sparse_pack:SparsePack",
    description="Pack weights that already hold zeros (training-time pruning) without changing them.",
    configs=(PackConfig,),
    dtypes=frozenset({"float16", "float32", "int8", "uint8"}),
    options={**_COMMON, JOINT_COMPRESSION: check_flag},
    default_config=PackConfig(),
    streaming_options=frozenset(_COMMON),
)

#: every pass, in the order a split selector runs them (threshold before magnitude)
CATALOG: Final[tuple[PassEntry, ...]] = (PRUNE_BY_THRESHOLD, PRUNE_BY_MAGNITUDE, SPARSE_PACK)
BY_NAME: Final[Mapping[str, PassEntry]] = {entry.name: entry for entry in CATALOG}


def entry(pass_name: str) -> PassEntry:
    """The catalog entry of a mil_sparsity pass; ValueError naming the known ones otherwise."""
    found = BY_NAME.get(pass_name)
    if found is None:
        raise InvalidInputError(f"no mil_sparsity pass {pass_name!r}; the passes are {', '.join(BY_NAME)}")
    return found


def owner(config: Optional[SparsityConfig]) -> Optional[PassEntry]:
    """The pass that takes ``config`` (None for None)."""
    if config is None:
        return None
    return next(item for item in CATALOG if item.takes(config))


def pass_for_selector(selector: OpSelector, where: str = "config") -> PassEntry:
    """The one pass that takes every config kind in ``selector``.

    threshold -> prune_by_threshold; magnitude, block, n_m -> prune_by_magnitude;
    pack -> sparse_pack. ValueError if no config is set or the kinds span several passes.
    """
    kinds = sorted({config.kind for _, config in selector.entries() if config is not None})
    if not kinds:
        raise InvalidInputError(f"{where}: no config set (every entry is null): nothing to do")
    owners = {config.kind: owner(config) for _, config in selector.entries() if config is not None}
    names = sorted({found.name for found in owners.values() if found is not None})
    if len(names) > 1:
        detail = "; ".join(
            f"{name} takes {', '.join(k for k in kinds if (o := owners[k]) is not None and o.name == name)}"
            for name in names
        )
        raise InvalidInputError(
            f"{where}: mixes config kinds of different passes ({detail}); one run applies one "
            "pass, so split it per pass"
        )
    return BY_NAME[names[0]]


def keep_only(selector: OpSelector, pass_entry: PassEntry) -> OpSelector:
    """``selector`` with every config of another pass replaced by None: a None stops the
    lookup where the original config would have been found, so each weight keeps exactly the
    config the whole selector gives it, from exactly one pass."""

    def keep(config: Optional[SparsityConfig]) -> Optional[SparsityConfig]:
        return config if pass_entry.takes(config) else None

    return attrs.evolve(
        selector,
        global_config=keep(selector.global_config),
        op_type_configs={key: keep(value) for key, value in selector.op_type_configs.items()},
        op_name_configs={key: keep(value) for key, value in selector.op_name_configs.items()},
    )


def split_by_pass(selector: OpSelector) -> list[tuple[PassEntry, OpSelector]]:
    """(pass, its selector) for each pass that has a config in ``selector``, in catalog order."""
    owners = {found.name for _, config in selector.entries() if (found := owner(config)) is not None}
    return [(item, keep_only(selector, item)) for item in CATALOG if item.name in owners]


def streaming_obstacle(pass_names: list[str], options: Mapping[str, list[str]]) -> Optional[str]:
    """Why the streaming rewriter cannot run these passes (None if it can): only mil_sparsity
    passes, each with no option outside its entry's :attr:`PassEntry.streaming_options`.
    ``options``: pass name -> the option names set for it."""
    for name in pass_names:
        if not is_ours(name) or name not in BY_NAME:
            return (
                f"streaming runs only mil_sparsity passes; the pipeline has {name!r} "
                "(use mil_sparsity.apply_pipeline for other passes)"
            )
        allowed = BY_NAME[name].streaming_options
        for option in options.get(name, ()):
            if option not in allowed:
                return (
                    f"{name}: option {option!r} is not supported when streaming "
                    f"(only {', '.join(sorted(allowed))}); use apply_pipeline(..., streaming=False)"
                )
    return None
