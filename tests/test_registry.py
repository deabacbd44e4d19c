"""The model registry offline (a local folder): register, reuse, list, resolve refs; bad refs fail clearly.

The same commands against ClearML's model registry are exercised in tests/test_pipeline_server.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clearml_pipeline.config import PipelineConfig
from registry.catalog import LocalRegistry, ModelRecord, folder_hash
from registry.refs import resolve_sections
from resources.weights import ModelUnavailableError
from tests.cli import python_m


def registry_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    env["S2ST_REGISTRY_DIR"] = str(root)
    env["CLEARML_CONFIG_FILE"] = str(root / "no-server.conf")  # no credentials: the local registry is chosen
    return python_m("registry", *args, env=env, timeout=120)


def test_register_list_resolve_offline(fixture_caches: Any, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    hf = str(fixture_caches.hf_hub_cache)
    first = registry_cli(root, "register", "--stage", "speech_translation", "--source", "openai/whisper-large",
                         "--cache", hf, "--tags", "fixture")
    assert first.returncode == 0, first.stderr
    assert "registered: whisper-large" in first.stdout and "LocalRegistry" in first.stdout
    again = registry_cli(root, "register", "--stage", "speech_translation", "--source", "openai/whisper-large",
                         "--cache", hf)
    assert "already registered" in again.stdout  # same name, same content: not copied twice
    vocoder_file = next(fixture_caches.vocoder_cache.rglob("*.pkl"))
    voc = registry_cli(root, "register", "--stage", "vocoder", "--source", str(vocoder_file), "--name", "hifigan")
    assert voc.returncode == 0, voc.stderr

    records = LocalRegistry(root).list()
    assert [r.name for r in records] == ["whisper-large", "hifigan"]
    whisper = records[0]
    snapshot = next((fixture_caches.hf_hub_cache / "models--openai--whisper-large" / "snapshots").iterdir())
    assert whisper.content_hash == folder_hash(snapshot) and whisper.revision == snapshot.name
    assert (whisper.stage, whisper.backend, whisper.languages, whisper.tags) == (
        "speech_translation", "transformers", "es-en", ["fixture"]
    )
    listing = registry_cli(root, "list", "--stage", "speech_translation")
    assert whisper.id in listing.stdout and "hifigan" not in listing.stdout and "1 model(s)" in listing.stdout

    by_name = registry_cli(root, "resolve", "registry:whisper-large").stdout.strip()
    by_id = registry_cli(root, "resolve", f"registry:{whisper.id}").stdout.strip()
    assert by_name == by_id and folder_hash(Path(by_name)) == whisper.content_hash
    assert (Path(by_name) / "config.json").is_file()
    # A vocoder resolves to its checkpoint file (with config.yml beside it), which is what the loader takes.
    vocoder_path = Path(registry_cli(root, "resolve", "registry:hifigan").stdout.strip())
    assert vocoder_path.name == vocoder_file.name and (vocoder_path.parent / "config.yml").is_file()

    missing = registry_cli(root, "resolve", "registry:whisper-large-v3")
    assert missing.returncode == 2 and "no model with that id or name" in missing.stderr


def test_refs_in_run_options_resolve_to_local_copies(tmp_path: Path) -> None:
    model = tmp_path / "src"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x01" * 64)
    registry = LocalRegistry(tmp_path / "registry")
    record, reused = registry.register(
        model, ModelRecord("tiny-mt", "machine_translation", "transformers", "en-zh", str(model), "local",
                           folder_hash(model))
    )
    assert not reused
    config = PipelineConfig().updated({"machine_translation": {"model": "registry:tiny-mt"}})
    hub_id = config.run.speech_translation.model
    changes, resolved = resolve_sections({"machine_translation": config.run.machine_translation,
                                          "speech_translation": config.run.speech_translation}, registry)
    config = config.updated(changes)
    path = Path(config.run.machine_translation.model)
    assert path.parent.parent == registry.root and (path / "weights.bin").read_bytes() == b"\x01" * 64
    assert config.run.speech_translation.model == hub_id  # hub ids pass through untouched
    assert resolved == {"machine_translation.model": {
        "ref": "registry:tiny-mt", "id": record.id, "content_hash": record.content_hash, "source": str(model),
        "revision": "local", "path": str(path)}}
    config = PipelineConfig().updated({"machine_translation": {"model": "registry:nope"}})
    with pytest.raises(ModelUnavailableError, match=re.escape("machine_translation.model: 'registry:nope'")):
        resolve_sections({"machine_translation": config.run.machine_translation}, registry)
