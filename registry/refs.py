"""Resolve the model refs in a run's options to local folders before any stage loads a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from registry.catalog import ClearMLRegistry, LocalRegistry, ModelRecord, Registry, is_ref

# (options section, field) pairs that hold model refs.
MODEL_FIELDS = (
    ("speech_translation", "model"),
    ("machine_translation", "model"),
    ("speech_synthesis", "model"),
    ("speech_synthesis", "vocoder"),
    ("evaluation", "asr_model"),
)


def local_registry_root() -> Path:
    return Path(os.environ.get("S2ST_REGISTRY_DIR", "~/.cache/s2st/registry")).expanduser()


def open_registry(kind: str = "auto") -> Registry:
    """`local`: the folder registry; `clearml`: the server's; `auto`: the server's when one is configured."""
    from clearml_pipeline.server import api_server, check_server, offline

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


def resolve_sections(sections: dict[str, Any], registry: Registry | None = None) -> dict[str, dict[str, str]]:
    """Replace every registry ref in the given option objects (by section name) with its local copy.

    Returns what was resolved ({"speech_translation.model": {"ref", "id", "path", ...}}) for the run's record.
    The registry is opened only when a ref is present, so runs that use hub ids never touch it."""
    resolved: dict[str, dict[str, str]] = {}
    for section, name in MODEL_FIELDS:
        options = sections.get(section)
        ref = getattr(options, name, None) if options is not None else None
        if not is_ref(ref):
            continue
        registry = registry or open_registry()
        try:
            path, record = resolve(ref, registry)
        except LookupError as exc:
            from registry.hub import ModelUnavailableError

            raise ModelUnavailableError(f"{section}.{name}: {exc}") from exc
        assert record is not None
        setattr(options, name, path)
        if section == "speech_synthesis" and name == "model":
            options.revision = None  # a registry copy is a plain folder, not a hub snapshot
        resolved[f"{section}.{name}"] = {"ref": ref, "id": record.id, "content_hash": record.content_hash,
                                         "source": record.source, "revision": record.revision, "path": path}
    return resolved
