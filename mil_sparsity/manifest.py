"""The pass manifest (``passes_registry.json``), built from the live pass classes.

``python -m mil_sparsity.manifest`` prints it; ``--write PATH`` writes it. A test checks that
the committed file, this builder and coremltools' pass registry agree both ways.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

import attrs

from mil_sparsity.configs import config_to_dict
from mil_sparsity.passes import PASS_CLASSES, SparsityPass
from mil_sparsity.plan import catalog

CONFIG_OPTION_TYPE = (
    "{configs} | OpSelector | dict (OpSelector.from_dict form) | str (its JSON) | "
    "coremltools.optimize.coreml.OptimizationConfig"
)


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _field_type(field: "attrs.Attribute[Any]") -> str:
    kind = field.type
    return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


def config_fields(cls: type) -> dict[str, dict[str, Any]]:
    fields: dict[str, dict[str, Any]] = {}
    for field in attrs.fields(cls):
        entry: dict[str, Any] = {"type": _field_type(field)}
        if field.default is not attrs.NOTHING:
            entry["default"] = field.default
        else:
            entry["required"] = True
        fields[field.name] = entry
    return fields


def pass_entry(cls: type[SparsityPass]) -> dict[str, Any]:
    default = cls.entry.default_config
    configs = " | ".join(config.__name__ for config in cls.accepted_configs)
    config_option: dict[str, Any] = {"type": CONFIG_OPTION_TYPE.format(configs=configs)}
    if default is None:
        config_option["required"] = True
    else:
        config_option["default"] = config_to_dict(default)
    return {
        "name": cls.pass_name,
        "class": qualified_name(cls),
        "description": cls.description,
        "configs": {
            qualified_name(config): {"kind": config.kind, "fields": config_fields(config)}
            for config in cls.accepted_configs
        },
        "dtypes": sorted(cls.supported_dtypes),
        "options": {
            "config": config_option,
            "report": {"type": "mil_sparsity.SparsityReport | None", "default": None},
        },
    }


def build_manifest() -> dict[str, Any]:
    return {"namespace": catalog.NAMESPACE, "passes": [pass_entry(cls) for cls in PASS_CLASSES]}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Print or write passes_registry.json")
    parser.add_argument("--write", metavar="PATH", help="write the manifest to PATH")
    args = parser.parse_args(argv)
    text = json.dumps(build_manifest(), indent=2) + "\n"
    if args.write:
        with open(args.write, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
