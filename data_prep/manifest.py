"""The dataset contract the pipeline consumes: `manifest.jsonl` rows and the `report.json` of rejected clips.

Every row carries the same keys (None when unknown) so a consumer never has to guess which columns exist, and
`audio` is relative to the dataset folder so a dataset can be moved, zipped or fetched by ClearML anywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from data_prep.paths import safe_join

MANIFEST_NAME = "manifest.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# Common Voice's own demographic/metadata columns kept in the manifest (older releases say `accent`, newer
# `accents`; both land in `accents`). The raw client_id is not kept: see ManifestRow.speaker.
DEMOGRAPHIC_COLUMNS = ("age", "gender", "accents", "variant", "locale", "up_votes", "down_votes")


@dataclass(frozen=True)
class ManifestRow:
    id: str  # unique in the dataset; also the WAV's stem
    audio: str  # "audio/<id>.wav", relative to the dataset folder; 16 kHz mono 16-bit PCM
    duration_s: float
    sentence: str | None  # Spanish transcript (None when the source has none)
    split: str
    source_path: str  # the clip's path as the source names it (Common Voice: "common_voice_es_123.mp3")
    reference_en: str | None = None  # CoVoST 2 es->en translation when joined
    # A short pseudonym of Common Voice's client_id (sha256, 16 hex): enough to group clips by speaker,
    # without copying the source's identifier into every log and preview table.
    speaker: str | None = None
    age: str | None = None
    gender: str | None = None
    accents: str | None = None
    variant: str | None = None
    locale: str | None = None
    up_votes: int | None = None
    down_votes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MANIFEST_COLUMNS = tuple(f.name for f in fields(ManifestRow))


@dataclass(frozen=True)
class Rejection:
    id: str
    source_path: str
    split: str
    reason: str  # one of REASONS
    detail: str  # a sentence a person can act on


# The closed set of rejection reasons (report.json's `reason`), in the order they are checked.
REASONS = ("unsafe_path", "missing_file", "empty_file", "corrupt", "too_short", "too_long", "silent")


@dataclass
class Report:
    selected: int = 0
    accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def reason_counts(self) -> dict[str, int]:
        counts = Counter(r.reason for r in self.rejections)
        return {reason: counts[reason] for reason in REASONS if counts[reason]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reason_counts": self.reason_counts(),
            "rejections": [asdict(r) for r in self.rejections],
        }


def dumps_row(row: ManifestRow) -> str:
    # Field order is the dataclass's (id first, for people reading the file); one byte form per row, which the
    # content hash relies on.
    return json.dumps(row.to_dict(), ensure_ascii=False)


def write_manifest(path: Path, rows: list[ManifestRow]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(dumps_row(row) + "\n" for row in rows)


def read_manifest(path: str | Path, check_audio: bool = True) -> list[ManifestRow]:
    """Read manifest.jsonl; each `audio` must stay inside the manifest's folder (and exist, if check_audio)."""
    path = Path(path)
    rows: list[ManifestRow] = []
    known = set(MANIFEST_COLUMNS)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            data = json.loads(line)
            # Unknown keys are ignored so an older reader accepts a newer manifest with extra columns.
            row = ManifestRow(**{k: v for k, v in data.items() if k in known})
            audio = safe_join(path.parent, row.audio)
            if check_audio and not audio.is_file():
                raise FileNotFoundError(f"{path.name}:{lineno}: audio file {row.audio!r} is missing")
            rows.append(row)
    return rows


def write_report(folder: Path, report: Report) -> None:
    (folder / REPORT_JSON).write_text(
        json.dumps(report.to_dict(), ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (folder / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")


def report_markdown(report: Report) -> str:
    lines = [
        "# Ingestion report",
        "",
        f"Selected {report.selected} clips: {report.accepted} accepted, {report.rejected} rejected.",
        "",
    ]
    if report.rejections:
        lines += ["| reason | count |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in report.reason_counts().items()]
        lines += ["", "| id | split | source path | reason | detail |", "|---|---|---|---|---|"]
        for r in report.rejections:
            cells = [r.id, r.split, r.source_path, r.reason, r.detail]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"
