"""Registering a finished local dataset folder as a ClearML Dataset version; nothing else talks to ClearML.

Reuse: every version we create carries the tag `content-sha256:<hash>`; before creating one we look for a
completed version in the same project and name with that tag and return it, so identical content is never
uploaded twice. `dataset_cls` defaults to `clearml.Dataset` and can be replaced by a stand-in in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.dataset import DatasetResult
from data_prep.manifest import MANIFEST_NAME, read_manifest

CONTENT_TAG_PREFIX = "content-sha256:"
PREVIEW_ROWS = 20
# The preview table is what people see in the UI: no speaker pseudonym, the text columns that matter.
PREVIEW_COLUMNS = ("id", "duration_s", "split", "sentence", "reference_en", "age", "gender", "accents")


@dataclass(frozen=True)
class ClearMLTarget:
    project: str
    name: str
    parent_id: str | None = None  # the ClearML dataset version this one extends
    version: str | None = None  # None: ClearML bumps the latest version of this name
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Registration:
    dataset_id: str
    version: str | None
    reused: bool


def content_tag(content_hash: str) -> str:
    return f"{CONTENT_TAG_PREFIX}{content_hash}"


def _dataset_cls(dataset_cls: Any | None) -> Any:
    if dataset_cls is not None:
        return dataset_cls
    from clearml import Dataset  # imported here: offline ingestion never needs ClearML

    return Dataset


def find_existing(target: ClearMLTarget, content_hash: str, dataset_cls: Any | None = None) -> dict[str, Any] | None:
    """A completed version of (project, name) tagged with this content hash, as list_datasets describes it."""
    cls = _dataset_cls(dataset_cls)
    found = cls.list_datasets(
        dataset_project=target.project, partial_name=target.name, tags=[content_tag(content_hash)], only_completed=True
    )
    # partial_name is a substring/regex match and projects are searched recursively: keep exact matches only.
    exact = [d for d in found or [] if d.get("name") == target.name and d.get("project") in (None, target.project)]
    return exact[0] if exact else None


def parent_local_copy(parent_id: str, dataset_cls: Any | None = None) -> Path:
    """The parent version's files, for build_dataset(parent=...) to merge its rows before registering."""
    return Path(_dataset_cls(dataset_cls).get(dataset_id=parent_id).get_local_copy())


def preview_frame(folder: Path, n: int = PREVIEW_ROWS) -> Any:
    import pandas as pd

    rows = read_manifest(folder / MANIFEST_NAME)[:n]
    return pd.DataFrame([{c: getattr(r, c) for c in PREVIEW_COLUMNS} for r in rows], columns=list(PREVIEW_COLUMNS))


def register(result: DatasetResult, target: ClearMLTarget, dataset_cls: Any | None = None) -> Registration:
    """Upload `result.folder` as a new version of (project, name), or return the identical existing one."""
    cls = _dataset_cls(dataset_cls)
    existing = find_existing(target, result.content_hash, cls)
    if existing is not None:
        return Registration(existing["id"], existing.get("version"), reused=True)
    info = result.info
    ds = cls.create(
        dataset_name=target.name,
        dataset_project=target.project,
        dataset_tags=[content_tag(result.content_hash), f"source:{info['source']['kind']}", *target.tags],
        parent_datasets=[target.parent_id] if target.parent_id else None,
        dataset_version=target.version,
        description=f"{info['counts']['rows']} clips, {info['hours']} h, from {info['source']['location']}",
    )
    # With a parent, ClearML stores only files whose hash differs from the parent's: inherited WAVs are not
    # uploaded again even though the folder holds them.
    ds.add_files(str(result.folder))
    ds.set_metadata(
        {k: info[k] for k in ("content_hash", "source", "options", "counts", "hours", "sample_rate", "parent")},
        metadata_name="ingest",
        ui_visible=False,
    )
    ds.get_logger().report_table(
        title="Manifest preview", series="first rows", iteration=0, table_plot=preview_frame(result.folder)
    )
    ds.upload()
    ds.finalize()
    return Registration(ds.id, getattr(ds, "version", None), reused=False)
