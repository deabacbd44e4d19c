"""Resolve the model refs in a run's options to local folders before any stage loads a model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.catalog import ClearMLRegistry, LocalRegistry, ModelRecord, Registry, is_ref
from steps.options import fields_with


def local_registry_root() -> Path:
    return Path(os.environ.get("S2ST_REGISTRY_DIR", "~/.cache/s2st/registry")).expanduser()


def open_registry(kind: str = "auto") -> Registry:
    """`local`: the folder registry; `clearml`: the server's; `auto`: the server's when one is configured."""
    from resources.clearml_server import api_server, check_server, offline

    if kind == "auto":
        kind = "clearml" if not offline() and api_server() else "local"
    if kind == "local":
        return LocalRegistry(local_registry_root())
    if kind != "clearml":
        raise ValueError(f"unknown registry {kind!r}; choose auto, local or clearml")
    check_server()
    return ClearMLRegistry()


def resolve(ref: str, registry: Registry) -> tuple[str, ModelRecord | None]:
    """A registry ref -> (local path, its record); any other value is returned as is."""
    if not is_ref(ref):
        return ref, None
    record, folder = registry.local_copy(ref)
    return str(folder / record.entry if record.entry else folder), record


def resolve_sections(
    sections: Mapping[str, Any], registry: Registry | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Local copies for every registry ref in the given option sections (fields marked `model_ref`).

    Returns the changes to apply ({section: {field: local path, its revision field: None}}) and what was resolved
    ({"speech_translation.model": {"ref", "id", "path", ...}}) for the run's record. The registry is opened only
    when a ref is present, so runs that use hub ids never touch it."""
    changes: dict[str, dict[str, Any]] = {}
    resolved: dict[str, dict[str, str]] = {}
    for section, options in sections.items():
        for f in fields_with(options, "model_ref"):
            ref = getattr(options, f.name)
            if not is_ref(ref):
                continue
            registry = registry or open_registry()
            try:
                path, record = resolve(ref, registry)
            except LookupError as exc:
                from resources.weights import ModelUnavailableError

                raise ModelUnavailableError(f"{section}.{f.name}: {exc}") from exc
            assert record is not None
            changes.setdefault(section, {})[f.name] = path
            if revision := f.metadata.get("revision"):
                changes[section][revision] = None  # a registry copy is a plain folder, not a hub snapshot
            resolved[f"{section}.{f.name}"] = {"ref": ref, "id": record.id, "content_hash": record.content_hash,
                                               "source": record.source, "revision": record.revision, "path": path}
    return changes, resolved
