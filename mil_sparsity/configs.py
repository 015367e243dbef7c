"""Per-weight sparsity configs: frozen attrs classes, plain data, validated on construction.

Every config derives from :class:`SparsityConfig`: a ``kind`` (its name in dict/JSON form),
whether it is ``structured`` (default scope: conv/linear weights and matmul operands only), and
a ``weight_threshold``. Configs are frozen and hashable (usable as dict keys).
``config_to_dict`` / ``config_from_dict`` convert one config; :class:`mil_sparsity.OpSelector`
uses them for whole selections and writes :data:`FORMAT_VERSION` at the top of its dict form.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional, cast

import attrs

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.plan.validators import (
    fraction,
    int_at_least,
    non_negative_number,
    one_of,
    optional_fraction,
    optional_int,
)

DEFAULT_WEIGHT_THRESHOLD = 2048

MAGNITUDE_SCORING = "magnitude"
ACTIVATION_SCORING = "activation"
#: how prune_by_magnitude ranks elements: ``|w|``, or ``|w| * rms(input channel)`` (Wanda)
SCORINGS = (MAGNITUDE_SCORING, ACTIVATION_SCORING)

PRUNE_METHOD = "prune"
SPARSEGPT_METHOD = "sparsegpt"
ADMM_METHOD = "admm"
#: how prune_by_magnitude chooses the values it stores: the kept weights unchanged ("prune"), or
#: the kept weights updated to reconstruct the layer's output on calibration data
#: (SparseGPT, ADMM; they need calibration statistics with a Gram matrix)
METHODS = (PRUNE_METHOD, SPARSEGPT_METHOD, ADMM_METHOD)
RECONSTRUCTION_METHODS = (SPARSEGPT_METHOD, ADMM_METHOD)

#: version of the dict/JSON form; written by ``OpSelector.to_dict``, checked by every from_dict
FORMAT_VERSION = 1
FORMAT_VERSION_KEY = "format_version"


def is_activation_scored(config: object) -> bool:
    """True for a config that ranks by activation scores (``scoring="activation"``, Wanda)."""
    return getattr(config, "scoring", None) == ACTIVATION_SCORING


def is_reconstruction(config: object) -> bool:
    """True for a config whose ``method`` updates the kept weights (SparseGPT, ADMM)."""
    return getattr(config, "method", None) in RECONSTRUCTION_METHODS


def needs_calibration(config: object) -> bool:
    """True for a config that needs calibration statistics: activation scoring or a
    reconstruction method."""
    return is_activation_scored(config) or is_reconstruction(config)


def check_format_version(data: Mapping[str, Any], where: str) -> None:
    """ValueError unless ``data``'s format version (if given) is one this version reads."""
    if FORMAT_VERSION_KEY not in data:
        return  # written before the version was recorded: version 1
    version = data[FORMAT_VERSION_KEY]
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise InvalidInputError(
            f"{where}.{FORMAT_VERSION_KEY} must be {FORMAT_VERSION} (the config format this "
            f"mil_sparsity reads), got {version!r}"
        )


def _weight_threshold() -> Any:
    """Considered only if the weight has strictly more elements than this."""
    return attrs.field(default=DEFAULT_WEIGHT_THRESHOLD, validator=int_at_least(0))


def _scoring() -> Any:
    """Keyword-only (so positional construction is unchanged): "magnitude" ranks ``|w|``;
    "activation" ranks ``|w| * sqrt(mean x_j^2)`` of the input channel j that multiplies it
    (needs the pass option ``calibration``)."""
    return attrs.field(default=MAGNITUDE_SCORING, validator=one_of(*SCORINGS), kw_only=True)


def _method() -> Any:
    """Keyword-only: "prune" keeps the kept weights as they are; "sparsegpt" / "admm" update them
    (needs the pass option ``calibration`` with Gram matrices, ``calibrate --gram``). The
    reconstruction methods choose the mask themselves, so they take ``scoring="magnitude"``
    (the default) only."""
    return attrs.field(default=PRUNE_METHOD, validator=one_of(*METHODS), kw_only=True)


def _check_method_scoring(config: Any) -> None:
    if config.method in RECONSTRUCTION_METHODS and config.scoring != MAGNITUDE_SCORING:
        raise InvalidInputError(
            f"{type(config).__name__}.scoring={config.scoring!r} cannot be combined with "
            f"method={config.method!r}: the reconstruction methods rank weights by their own "
            f"error estimate from the Gram matrix; allowed: scoring={MAGNITUDE_SCORING!r} with "
            f"method in {list(RECONSTRUCTION_METHODS)}, or method={PRUNE_METHOD!r}"
        )


def _reduction_dim() -> Any:
    """None: the reduction axis of the op that reads the weight; an int: that axis."""
    return attrs.field(default=None, validator=optional_int)


class SparsityConfig:
    """Base of every config. Subclasses are ``attrs.frozen`` classes with a ``kind``, a
    ``structured`` flag and a ``weight_threshold`` field (declared last, via
    ``_weight_threshold()``, so positional construction keeps each class's field order)."""

    kind: ClassVar[str]
    structured: ClassVar[bool] = False
    weight_threshold: int

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., field: value, ...}``; JSON-serialisable."""
        return {"kind": self.kind, **attrs.asdict(self)}  # type: ignore[arg-type]


@attrs.frozen
class ThresholdConfig(SparsityConfig):
    """Zero every element with ``|w| <= threshold``.

    If the fraction of zeros that results is below ``minimum_sparsity_percentile`` the weight
    is left dense and untouched. Only weights with more than ``weight_threshold`` elements are
    considered.
    """

    kind: ClassVar[str] = "threshold"
    structured: ClassVar[bool] = False

    threshold: float = attrs.field(default=1e-12, validator=non_negative_number)
    minimum_sparsity_percentile: float = attrs.field(default=0.5, validator=fraction)
    weight_threshold: int = _weight_threshold()


@attrs.frozen
class MagnitudeConfig(SparsityConfig):
    """Zero exactly ``round(target_sparsity * N)`` smallest-magnitude elements (ties by position).

    ``scoring="activation"`` (Wanda): zero exactly ``round(target_sparsity * row_length)``
    lowest ``|w| * channel scale`` in every output row of a linear/conv/matmul weight instead.

    ``method="sparsegpt"`` / ``"admm"``: the same exact count over the whole weight, the mask
    and the kept values chosen by :func:`mil_sparsity.kernels.reconstruction.sparsegpt` /
    :func:`~mil_sparsity.kernels.reconstruction.admm` from the Gram matrix of the weight's
    calibration inputs (linear, conv, and 2-D constant matmul operands).
    """

    kind: ClassVar[str] = "magnitude"
    structured: ClassVar[bool] = False

    target_sparsity: float = attrs.field(validator=fraction)
    weight_threshold: int = _weight_threshold()
    scoring: str = _scoring()
    method: str = _method()

    def __attrs_post_init__(self) -> None:
        _check_method_scoring(self)


@attrs.frozen
class BlockConfig(SparsityConfig):
    """Zero the ``round(target_sparsity * blocks)`` blocks of lowest L2 norm.

    A block is ``block_size`` consecutive elements along ``dim`` (a last, shorter block is
    allowed); ``dim=None`` (default) is the reduction axis of the op reading the weight
    (linear and conv: 1, conv_transpose: 0, matmul: the const's contracted axis). By default
    applies only to conv/conv_transpose/linear weights and constant matmul operands; other
    consts are pruned only when selected by name. ``scoring="activation"`` ranks blocks by the
    sum of squared activation scores.

    Block configs have no ``method``: the reconstruction kernels (SparseGPT, ADMM) prune
    unstructured or n:m patterns only, so there is no block reconstruction to choose.
    """

    kind: ClassVar[str] = "block"
    structured: ClassVar[bool] = True

    target_sparsity: float = attrs.field(validator=fraction)
    block_size: int = attrs.field(validator=int_at_least(2))
    dim: Optional[int] = _reduction_dim()
    weight_threshold: int = _weight_threshold()
    scoring: str = _scoring()


@attrs.frozen
class NMConfig(SparsityConfig):
    """n:m sparsity: in every group of ``m`` consecutive elements along ``dim``, zero ``n``.

    The seeds' convention: 3:4 zeroes 3 of every 4 (75% sparse). A tail group of t < m elements
    is treated as padded with m - t zeros that count toward the n. A weight whose ``dim`` is
    shorter than ``m`` is skipped. ``dim=None`` (default): the reduction axis, as for
    :class:`BlockConfig`. Same default op scope as :class:`BlockConfig`.
    ``scoring="activation"`` zeroes the n lowest activation scores of every group.
    ``method="sparsegpt"`` / ``"admm"``: n of every m along the reduction axis (``dim`` None or
    that axis), mask and kept values from the reconstruction kernel, as for
    :class:`MagnitudeConfig`.
    """

    kind: ClassVar[str] = "n_m"
    structured: ClassVar[bool] = True

    n: int = attrs.field(validator=int_at_least(1))
    m: int = attrs.field(validator=int_at_least(1))
    dim: Optional[int] = _reduction_dim()
    weight_threshold: int = _weight_threshold()
    scoring: str = _scoring()
    method: str = _method()

    def __attrs_post_init__(self) -> None:
        _check_method_scoring(self)

    @m.validator
    def _n_at_most_m(self, attribute: "attrs.Attribute[int]", value: int) -> None:
        if self.n > value:
            raise InvalidInputError(f"NMConfig.n must be <= NMConfig.m, got n={self.n}, m={value}")

    @property
    def sparsity(self) -> float:
        return self.n / self.m


@attrs.frozen
class PackConfig(SparsityConfig):
    """Pack weights that already hold zeros, without changing any value.

    ``minimum_sparsity_percentile=None`` packs exactly when the sparse form is smaller than the
    dense one (break-even sparsity 1/16 for fp16, 1/32 for fp32, 1/8 for int8/uint8).
    """

    kind: ClassVar[str] = "pack"
    structured: ClassVar[bool] = False

    minimum_sparsity_percentile: float | None = attrs.field(default=None, validator=optional_fraction)
    weight_threshold: int = _weight_threshold()


CONFIG_TYPES: tuple[type[SparsityConfig], ...] = (
    ThresholdConfig,
    MagnitudeConfig,
    BlockConfig,
    NMConfig,
    PackConfig,
)
CONFIG_KINDS: dict[str, type[SparsityConfig]] = {cls.kind: cls for cls in CONFIG_TYPES}


def is_config(value: object) -> bool:
    return isinstance(value, SparsityConfig)


def config_to_dict(config: SparsityConfig) -> dict[str, Any]:
    """``{"kind": ..., field: value, ...}``; JSON-serialisable."""
    return config.to_dict()


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> SparsityConfig:
    """Inverse of :func:`config_to_dict`. Unknown kinds, unknown keys, missing required fields
    and an unsupported ``format_version`` raise ValueError naming the field."""
    if not isinstance(data, Mapping):
        raise InvalidTypeError(f"{where} must be a dict with a 'kind' key, got {type(data).__name__}")
    check_format_version(data, where)
    kind = data.get("kind")
    if kind not in CONFIG_KINDS:
        raise InvalidInputError(
            f"{where}.kind must be one of {sorted(CONFIG_KINDS)}, got {kind!r}"
        )
    cls = CONFIG_KINDS[kind]
    fields: tuple["attrs.Attribute[Any]", ...] = attrs.fields(cast(Any, cls))  # every subclass is an attrs class
    known = {field.name for field in fields}
    unknown = sorted(set(data) - known - {"kind", FORMAT_VERSION_KEY})
    if "method" in unknown and cls is BlockConfig:
        raise InvalidInputError(
            f"{where}: BlockConfig has no 'method' (got {data['method']!r}): the reconstruction "
            f"methods {list(RECONSTRUCTION_METHODS)} prune unstructured (kind 'magnitude') or n:m "
            "(kind 'n_m') patterns only"
        )
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; allowed keys are {sorted(known)}"
        )
    missing = [field.name for field in fields if field.default is attrs.NOTHING and field.name not in data]
    if missing:
        raise InvalidInputError(
            f"{where}: {cls.__name__} needs {', '.join(repr(name) for name in missing)} "
            f"(required field{'s' if len(missing) > 1 else ''} missing)"
        )
    values = {key: value for key, value in data.items() if key in known}
    return cls(**values)
