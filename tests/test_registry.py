"""Registration in coremltools' PASS_REGISTRY and the passes_registry.json manifest."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

import mil_sparsity
from mil_sparsity import _coremltools_private as private
from mil_sparsity.manifest import build_manifest

MANIFEST = Path(__file__).resolve().parent.parent / "passes_registry.json"
NAMES = {"mil_sparsity::prune_by_threshold", "mil_sparsity::prune_by_magnitude", "mil_sparsity::sparse_pack"}


def registered() -> set[str]:
    return {name for name in private.registered_passes() if name.startswith("mil_sparsity::")}


def resolve(qualified: str) -> type:
    module, _, qualname = qualified.partition(":")
    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    assert isinstance(obj, type)
    return obj


def test_import_registers_the_three_passes() -> None:
    assert registered() == NAMES
    for name in NAMES:
        graph_pass = private.pass_instance(name)
        assert graph_pass.pass_name == name


def test_reimport_and_reload_do_not_raise() -> None:
    importlib.import_module("mil_sparsity")
    importlib.reload(mil_sparsity)
    importlib.reload(mil_sparsity)
    assert registered() == NAMES


def test_foreign_pass_with_our_name_is_not_overridden() -> None:
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from mil_sparsity.passes import register_passes

    class Impostor(AbstractGraphPass):  # type: ignore[misc]
        def apply(self, prog: object) -> None:
            pass

    saved = private.registered_passes()["mil_sparsity::sparse_pack"]
    private.registered_passes()["mil_sparsity::sparse_pack"] = Impostor
    try:
        with pytest.raises(KeyError, match="already registered"):
            register_passes()
    finally:
        private.registered_passes()["mil_sparsity::sparse_pack"] = saved


def test_manifest_file_matches_builder() -> None:
    assert json.loads(MANIFEST.read_text()) == json.loads(json.dumps(build_manifest()))


def test_manifest_and_live_registry_agree_both_ways() -> None:
    manifest = json.loads(MANIFEST.read_text())
    entries = {entry["name"]: entry for entry in manifest["passes"]}
    # manifest -> registry
    assert set(entries) == registered()
    for name, entry in entries.items():
        cls = resolve(entry["class"])
        assert private.registered_passes()[name] is cls
        assert {resolve(c) for c in entry["configs"]} == set(cls.accepted_configs)
        instance = private.pass_instance(name)
        for option in entry["options"]:
            assert hasattr(instance, option), f"{name} lacks option {option}"
        assert entry["description"] == cls.description
        assert entry["dtypes"] == sorted(cls.supported_dtypes)
    # registry -> manifest
    for name in registered():
        cls = private.registered_passes()[name]
        assert f"{cls.__module__}:{cls.__qualname__}" == entries[name]["class"]


def test_unknown_option_is_rejected_by_coremltools() -> None:
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption

    with pytest.raises(NotImplementedError):
        private.pass_instance("mil_sparsity::sparse_pack").set_options([PassOption("sparsity", 0.5)])


def test_one_pass_class_per_catalog_entry_in_order() -> None:
    from mil_sparsity.passes import PASS_CLASSES
    from mil_sparsity.plan import catalog

    assert tuple(cls.entry for cls in PASS_CLASSES) == catalog.CATALOG
    for cls in PASS_CLASSES:
        assert (cls.pass_name, cls.accepted_configs, cls.supported_dtypes) == (
            cls.entry.name, cls.entry.configs, cls.entry.dtypes
        )
