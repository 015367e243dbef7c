"""``mil-sparsity passes``: the registered passes, their configs, each field's type and default."""

from __future__ import annotations

import argparse
import json

from mil_sparsity.cli._common import Commands, add_json, emit, emit_json
from mil_sparsity.inspect_model import format_rows
from mil_sparsity.manifest import build_manifest


def register(commands: Commands) -> None:
    parser = commands.add_parser(
        "passes",
        help="list the registered passes, their configs and fields",
        description="List the passes mil_sparsity registers in coremltools (the content of "
        "passes_registry.json), with their config classes and each field's type and default.",
    )
    add_json(parser, "text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    manifest = build_manifest()
    if args.json:
        emit_json(manifest)
        return 0
    lines: list[str] = []
    for entry in manifest["passes"]:
        option = entry["options"]["config"]
        default = (
            "required (no default)" if option.get("required")
            else "default " + json.dumps(option.get("default"))
        )
        lines.append(entry["name"])
        lines.append(f"  {entry['description']}")
        lines.append(f"  class: {entry['class']}")
        lines.append(f"  dtypes: {', '.join(entry['dtypes'])}")
        lines.append(f"  config: {default}")
        for config_class, config in entry["configs"].items():
            lines.append(f"  {config_class.split(':')[-1]} (kind {config['kind']!r})")
            rows = [("field", "type", "default")]
            for field, spec in config["fields"].items():
                value = "required" if spec.get("required") else json.dumps(spec.get("default"))
                rows.append((field, str(spec["type"]), value))
            lines.extend("    " + line for line in format_rows(rows))
        lines.append("")
    emit("\n".join(lines).rstrip())
    return 0
