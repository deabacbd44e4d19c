"""Local dataset folders, addressed by content hash.

Layout: <out>/<name>/<hash[:12]>/{audio/<id>.wav, manifest.jsonl, report.json, report.md, dataset.json}.
The folder is assembled in a staging folder beside it and renamed into place only when complete (dataset.json
is written last), so a folder with dataset.json is always whole, and an identical second ingest finds it and
leaves it untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from data_prep.ingest import Accepted, IngestOptions, load_covost, normalize_all, read_source
from data_prep.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    REPORT_JSON,
    REPORT_MD,
    Report,
    dumps_row,
    read_manifest,
    write_manifest,
    write_report,
)
from data_prep.sources import HFLoader, SourceError
from resources.json_text import dumps
from resources.paths import safe_join, safe_name, safe_output_path

# Bump when the layout or the hashing changes: old hashes then stop matching. 2: rows gained `reference_zh`.
FORMAT = "s2st-dataset/2"
DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class DatasetResult:
    folder: Path
    content_hash: str
    reused: bool  # True: an identical dataset already existed and was returned as is
    info: dict[str, Any]  # dataset.json
    report: Report  # this run's selection (with a parent, its inherited rows are not in it)

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]


def content_hash(options: dict[str, Any], accepted: list[Accepted], report: Report, parent_hash: str | None) -> str:
    """sha256 over format, content options, parent, each manifest row with its WAV's sha256, and rejections.

    Nothing machine-specific goes in (no absolute paths, times or tokens): the same input and options give the
    same hash on any machine."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}\n".encode())
    h.update((json.dumps(options, sort_keys=True) + "\n").encode())
    h.update(f"parent:{parent_hash or ''}\n".encode())
    for item in accepted:
        h.update((dumps_row(item.row) + "\n").encode("utf-8"))
        h.update(f"{item.wav_sha256}\n".encode())
    for r in report.rejections:
        # Not `detail`: decoder messages can name machine-specific paths; the reason is the content.
        h.update((dumps([r.id, r.source_path, r.split, r.reason]) + "\n").encode("utf-8"))
    return h.hexdigest()


def read_dataset_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / DATASET_JSON
    if not path.is_file():
        raise SourceError(f"{folder} is not a dataset folder (no {DATASET_JSON})")
    return json.loads(path.read_text(encoding="utf-8"))


def inherit_parent(parent: Path, audio_dir: Path, have: set[str]) -> list[Accepted]:
    """The parent's rows whose ids this run did not produce, with their WAVs linked (or copied) in."""
    out: list[Accepted] = []
    # read_manifest checks every audio path stays inside the parent and makes every id a unique safe id (a
    # parent fetched from elsewhere is data like any other); the writer checks again.
    for row in read_manifest(parent / MANIFEST_NAME):
        if row.id in have:
            continue
        src = safe_join(parent, row.audio)
        dst = safe_output_path(audio_dir, "", row.id, ".wav")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        out.append(Accepted(replace(row, audio=f"audio/{dst.name}"), hashlib.sha256(dst.read_bytes()).hexdigest()))
    return out


def _info(
    opts: IngestOptions, digest: str, accepted: list[Accepted], report: Report, parent: dict[str, Any] | None
) -> dict[str, Any]:
    rows = [a.row for a in accepted]
    seconds = sum(r.duration_s for r in rows)
    source_label = "/".join(opts.path.resolve().parts[-2:]) if opts.path is not None else opts.hf_name
    return {
        "format": FORMAT,
        "name": opts.name,
        "content_hash": digest,
        "source": {"kind": opts.source, "location": source_label, "hf_name": opts.hf_name, "hf_config": opts.hf_config},
        "options": opts.content_options(),
        "counts": {
            "selected": report.selected,
            "accepted": report.accepted,
            "rejected": report.rejected,
            "reasons": report.reason_counts(),
            "rows": len(rows),
            "inherited": len(rows) - report.accepted,
            "renamed_ids": len(report.renamed),
            "with_sentence": sum(r.sentence is not None for r in rows),
            "with_reference_en": sum(r.reference_en is not None for r in rows),
            "with_reference_zh": sum(r.reference_zh is not None for r in rows),
        },
        "seconds": round(seconds, 3),
        "hours": round(seconds / 3600.0, 4),
        "sample_rate": opts.sample_rate,
        "parent": None if parent is None else {"name": parent.get("name"), "content_hash": parent["content_hash"]},
        "files": {"manifest": MANIFEST_NAME, "report": REPORT_JSON, "report_md": REPORT_MD, "audio": "audio/"},
        "columns": list(MANIFEST_COLUMNS),
    }


def build_dataset(opts: IngestOptions, loader: HFLoader | None = None) -> DatasetResult:
    """Ingest `opts` into <out>/<name>/<hash[:12]>, or return the identical folder that already exists."""
    if safe_name(opts.name) != opts.name:
        raise ValueError(f"dataset name {opts.name!r}: use letters, digits, '-', '_' and '.' only")
    # Everything that can fail cheaply fails before any audio is decoded.
    covost = load_covost(opts.covost) if opts.covost is not None else None
    parent = read_dataset_info(opts.parent) if opts.parent is not None else None
    clips, total = read_source(opts, loader)
    dataset_root = Path(opts.out) / opts.name
    dataset_root.mkdir(parents=True, exist_ok=True)
    staging: Path | None = Path(tempfile.mkdtemp(prefix=".staging-", dir=dataset_root))
    staging.chmod(0o755)  # mkdtemp's 0700 would carry over to the published folder
    try:
        accepted, report = normalize_all(clips, total, staging, opts, covost)
        if opts.parent is not None:
            accepted += inherit_parent(Path(opts.parent), staging / "audio", {a.row.id for a in accepted})
        accepted.sort(key=lambda a: a.row.id)
        digest = content_hash(opts.content_options(), accepted, report, parent and parent["content_hash"])
        final = dataset_root / digest[:12]
        if (final / DATASET_JSON).is_file():
            return DatasetResult(final, digest, True, read_dataset_info(final), report)
        write_manifest(staging / MANIFEST_NAME, [a.row for a in accepted])
        write_report(staging, report)
        info = _info(opts, digest, accepted, report, parent)
        (staging / DATASET_JSON).write_text(dumps(info, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)  # a folder without dataset.json is a leftover, never a finished dataset
        try:
            staging.rename(final)
        except OSError:
            if (final / DATASET_JSON).is_file():  # a concurrent identical ingest finished first
                return DatasetResult(final, digest, True, read_dataset_info(final), report)
            raise
        staging = None
        return DatasetResult(final, digest, False, info, report)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
