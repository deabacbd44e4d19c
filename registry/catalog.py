"""The model registry: register a model folder with the metadata people filter on, list it, resolve a ref.

Two stores with one interface. `ClearMLRegistry` is ClearML's model registry (an OutputModel per model, its files
uploaded as a weights package, the metadata as model metadata and tags); `LocalRegistry` is a folder with the same
records, for offline work: ClearML's offline mode has no model registry (InputModel and Model.query_models fail).

A model ref is what the pipeline's model parameters hold: `registry:<model id or name>` resolves through the
registry to a local folder; anything else (a hub id, a local path) is passed through to the loaders unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

REF_PREFIX = "registry:"
MODELS_PROJECT = "s2st/models"
HASH_TAG = "content-sha256:"


@dataclass
class ModelRecord:
    name: str  # what refs use: registry:<name> picks the newest model of that name
    stage: str  # speech_translation | machine_translation | speech_synthesis | vocoder | evaluation
    backend: str  # transformers | ctranslate2 | espnet | parallel_wavegan
    languages: str  # e.g. "es-en", "en-zh", "zh"
    source: str  # hub id, zoo tag or the local folder it came from
    revision: str  # hub commit sha, or "local"
    content_hash: str  # sha256 over every file's relative path and bytes
    entry: str = ""  # the file inside the folder a loader wants (a vocoder checkpoint); "" for the folder
    id: str = ""
    created: str = ""
    tags: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items() if k not in ("id", "name", "tags")}


class Registry(Protocol):
    def register(self, folder: Path, record: ModelRecord) -> tuple[ModelRecord, bool]: ...
    def list(self, stage: str | None = None, name: str | None = None) -> list[ModelRecord]: ...
    def local_copy(self, ref: str) -> tuple[ModelRecord, Path]: ...


def folder_hash(folder: Path) -> str:
    """sha256 over the sorted relative paths and contents (symlinks followed, as HF caches use them)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def is_ref(value: str | None) -> bool:
    return bool(value) and str(value).startswith(REF_PREFIX)


def _newest(records: list[ModelRecord]) -> ModelRecord | None:
    return max(records, key=lambda r: r.created, default=None)


class LocalRegistry:
    """<root>/<id>/record.json + <root>/<id>/files/...; a record is written last, so a listed model is whole."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def register(self, folder: Path, record: ModelRecord) -> tuple[ModelRecord, bool]:
        for existing in self.list(name=record.name):
            if existing.content_hash == record.content_hash:
                return existing, True
        record.id = uuid.uuid4().hex
        record.created = datetime.now(UTC).isoformat()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        shutil.copytree(folder, staging / "files", symlinks=False)
        (staging / "record.json").write_text(json.dumps(asdict(record), indent=2), encoding="utf-8")
        os.replace(staging, self.root / record.id)
        return record, False

    def list(self, stage: str | None = None, name: str | None = None) -> list[ModelRecord]:
        records = []
        for path in sorted(self.root.glob("*/record.json")) if self.root.is_dir() else []:
            record = ModelRecord(**json.loads(path.read_text(encoding="utf-8")))
            if (stage is None or record.stage == stage) and (name is None or record.name == name):
                records.append(record)
        return sorted(records, key=lambda r: r.created)

    def local_copy(self, ref: str) -> tuple[ModelRecord, Path]:
        key = ref.removeprefix(REF_PREFIX)
        by_id = self.root / key / "record.json"
        record = ModelRecord(**json.loads(by_id.read_text(encoding="utf-8"))) if by_id.is_file() else None
        record = record or _newest(self.list(name=key))
        if record is None:
            raise LookupError(f"{ref!r}: no model with that id or name in the local registry {self.root}")
        return record, self.root / record.id / "files"


class ClearMLRegistry:
    """ClearML's model registry (needs a server; the SDK reads clearml.conf or CLEARML_API_* variables)."""

    def __init__(self, project: str = MODELS_PROJECT) -> None:
        self.project = project

    def register(self, folder: Path, record: ModelRecord) -> tuple[ModelRecord, bool]:
        from clearml import OutputModel, Task

        for existing in self.list(name=record.name):
            if existing.content_hash == record.content_hash:
                return existing, True
        record.created = datetime.now(UTC).isoformat()
        task = Task.init(
            project_name=self.project,
            task_name=f"register {record.name}",
            task_type="custom",
            output_uri=True,  # the files server, or sdk.development.default_output_uri
            reuse_last_task_id=False,
            auto_connect_frameworks=False,
            auto_connect_arg_parser=False,
            auto_resource_monitoring=False,
        )
        tags = [record.stage, record.backend, record.languages, f"{HASH_TAG}{record.content_hash}", *record.tags]
        model = OutputModel(task=task, name=record.name, tags=tags, framework=_framework(record.backend))
        model.update_weights_package(weights_path=str(folder), auto_delete_file=False)
        for key, value in record.metadata().items():
            model.set_metadata(key, value, v_type="str")
        record.id = model.id
        task.close()
        return record, False

    def list(self, stage: str | None = None, name: str | None = None) -> list[ModelRecord]:
        from clearml import Model

        try:
            models = Model.query_models(project_name=self.project, model_name=name, tags=[stage] if stage else None)
        except ValueError as exc:  # the SDK's answer before the first model creates the project
            if "No projects found" not in str(exc):
                raise
            return []
        records = [self._record(m) for m in models]
        # model_name is a pattern match on the server: keep exact names only.
        return sorted((r for r in records if name is None or r.name == name), key=lambda r: r.created)

    def local_copy(self, ref: str) -> tuple[ModelRecord, Path]:
        from clearml import Model

        key = ref.removeprefix(REF_PREFIX)
        record = None
        if len(key) == 32 and all(c in "0123456789abcdef" for c in key):
            record = self._record(Model(model_id=key))
        record = record or _newest(self.list(name=key))
        if record is None:
            raise LookupError(f"{ref!r}: no model with that id or name in the ClearML project {self.project}")
        path = Model(model_id=record.id).get_local_copy(raise_on_error=True)
        return record, Path(path)

    @staticmethod
    def _record(model: Any) -> ModelRecord:
        meta = {k: v.get("value", "") for k, v in (model.get_all_metadata() or {}).items()}
        known = {k: meta.get(k, "") for k in ModelRecord.__dataclass_fields__ if k not in ("id", "name", "tags")}
        return ModelRecord(id=model.id, name=model.name, tags=list(model.tags or []), **known)


def _framework(backend: str) -> str:
    return {"ctranslate2": "Custom"}.get(backend, "PyTorch")
