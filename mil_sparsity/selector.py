"""OpSelector: which config applies to which const weight.

Precedence for one const and one op consuming it (first hit wins):

1. ``op_name_configs[const name]``, then ``op_name_configs[consumer name]`` (exact keys),
   then the same two names as a saved model spells them
   (:func:`mil_sparsity.format.sparse_format.saved_name`: inside ``ct.convert`` a pass sees
   ``fc.weight``, the saved model, its report and ``ms.weights`` say ``fc_weight``);
2. the first glob key (``*``, ``?``, ``[``; in insertion order) matching any of those names;
3. ``op_type_configs[consumer op type]`` (``"conv"``, ``"linear"``, ``"matmul"``, ...);
4. ``global_config``.

A value of ``None`` at any level means "leave this weight alone" and stops the search. A const
consumed by several ops gets one config per consumer; if they differ, the pass raises
ValueError naming the ops before it changes anything.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any, Iterator, Mapping, Optional

import attrs

from mil_sparsity.errors import InvalidInputError, InvalidTypeError
from mil_sparsity.plan.coremltools_configs import is_coremltools_config, selector_fields_from_coremltools
from mil_sparsity.configs import (
    FORMAT_VERSION,
    FORMAT_VERSION_KEY,
    SparsityConfig,
    check_format_version,
    config_from_dict,
    config_to_dict,
    is_config,
)
from mil_sparsity.format.sparse_format import saved_name

_GLOB_CHARS = frozenset("*?[")


def _is_glob(key: str) -> bool:
    return any(char in _GLOB_CHARS for char in key)


def _optional_config(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is not None and not is_config(value):
        raise InvalidTypeError(
            f"OpSelector.{attribute.name} must be a sparsity config or None, "
            f"got {type(value).__name__}"
        )


def _config_map(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    for key, config in value.items():
        if not isinstance(key, str):
            raise InvalidTypeError(
                f"OpSelector.{attribute.name} keys must be str, got {type(key).__name__} {key!r}"
            )
        if config is not None and not is_config(config):
            raise InvalidTypeError(
                f"OpSelector.{attribute.name}[{key!r}] must be a sparsity config or None, "
                f"got {type(config).__name__}"
            )


def _as_dict(value: Any) -> dict[str, Optional[SparsityConfig]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTypeError(f"expected a dict of name -> config, got {type(value).__name__}")
    return dict(value)


@attrs.frozen
class Resolution:
    """The config chosen for one (const, consumer) pair and where it came from."""

    config: Optional[SparsityConfig]
    source: str
    by_name: bool


@attrs.frozen(eq=True, hash=False)
class OpSelector:
    """Resolves a config for each const by op name, then op type, then a global default."""

    global_config: Optional[SparsityConfig] = attrs.field(default=None, validator=_optional_config)
    op_type_configs: dict[str, Optional[SparsityConfig]] = attrs.field(
        factory=dict, converter=_as_dict, validator=_config_map
    )
    op_name_configs: dict[str, Optional[SparsityConfig]] = attrs.field(
        factory=dict, converter=_as_dict, validator=_config_map
    )

    def resolve(
        self, const_name: str, consumer_name: Optional[str], consumer_type: Optional[str]
    ) -> Resolution:
        """The config for a const as seen from one consuming op (see module docstring)."""
        given = [name for name in (const_name, consumer_name) if name is not None]
        names = given + [saved for saved in map(saved_name, given) if saved not in given]
        for name in names:
            if name in self.op_name_configs:
                return Resolution(self.op_name_configs[name], f"op_name_configs[{name!r}]", True)
        for key, config in self.op_name_configs.items():
            if not _is_glob(key):
                continue
            if any(fnmatch.fnmatchcase(name, key) for name in names):
                return Resolution(config, f"op_name_configs[{key!r}]", True)
        if consumer_type is not None and consumer_type in self.op_type_configs:
            return Resolution(
                self.op_type_configs[consumer_type], f"op_type_configs[{consumer_type!r}]", False
            )
        return Resolution(self.global_config, "global_config", False)

    def entries(self) -> Iterator[tuple[str, Optional[SparsityConfig]]]:
        """Every (location, config) pair, for validation and display."""
        yield "global_config", self.global_config
        for key, config in self.op_type_configs.items():
            yield f"op_type_configs[{key!r}]", config
        for key, config in self.op_name_configs.items():
            yield f"op_name_configs[{key!r}]", config

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, headed by the format version; each config spelled out with its ``kind``."""

        def dump(config: Optional[SparsityConfig]) -> Optional[dict[str, Any]]:
            return None if config is None else config_to_dict(config)

        return {
            FORMAT_VERSION_KEY: FORMAT_VERSION,
            "global_config": dump(self.global_config),
            "op_type_configs": {key: dump(c) for key, c in self.op_type_configs.items()},
            "op_name_configs": {key: dump(c) for key, c in self.op_name_configs.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OpSelector":
        """Inverse of :meth:`to_dict`. Unknown keys and kinds raise ValueError."""
        if not isinstance(data, Mapping):
            raise InvalidTypeError(f"OpSelector.from_dict expects a dict, got {type(data).__name__}")
        check_format_version(data, "OpSelector")
        allowed = {"global_config", "op_type_configs", "op_name_configs"}
        unknown = sorted(set(data) - allowed - {FORMAT_VERSION_KEY})
        if unknown:
            raise InvalidInputError(
                f"OpSelector.from_dict: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}"
            )

        def load(value: Any, where: str) -> Optional[SparsityConfig]:
            return None if value is None else config_from_dict(value, where)

        def load_map(field: str) -> dict[str, Optional[SparsityConfig]]:
            value = data.get(field)
            if value is None:
                return {}
            if not isinstance(value, Mapping):
                raise InvalidTypeError(f"OpSelector.{field} must be a dict, got {type(value).__name__}")
            return {key: load(item, f"{field}[{key!r}]") for key, item in value.items()}

        return cls(
            global_config=load(data.get("global_config"), "global_config"),
            op_type_configs=load_map("op_type_configs"),
            op_name_configs=load_map("op_name_configs"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "OpSelector":
        return cls.from_dict(json.loads(text))


def as_selector(value: Any) -> OpSelector:
    """Normalise a pass's ``config`` option.

    Accepts one config (applied globally), an OpSelector, a dict in ``OpSelector.from_dict``
    form, its JSON text, or a coremltools ``OptimizationConfig`` holding
    ``OpThresholdPrunerConfig`` / ``OpMagnitudePrunerConfig``.
    """
    if isinstance(value, OpSelector):
        return value
    if is_config(value):
        return OpSelector(global_config=value)
    if isinstance(value, Mapping):
        return OpSelector.from_dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"config: not valid JSON ({error})") from None
        return OpSelector.from_dict(parsed)
    if is_coremltools_config(value):
        return OpSelector(**selector_fields_from_coremltools(value))
    raise InvalidTypeError(
        "config must be a sparsity config, an OpSelector, a dict in OpSelector.from_dict form, "
        f"JSON text, or a coremltools OptimizationConfig; got {type(value).__name__}"
    )
