"""The dataset contract the pipeline consumes: `manifest.jsonl` rows and the `report.json` of rejected clips.

Every row carries the same keys (None when unknown) so a consumer never has to guess which columns exist, and
`audio` is relative to the dataset folder so a dataset can be moved, zipped or fetched by ClearML anywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from resources.json_text import dumps
from resources.paths import is_safe_id, safe_id, safe_join, unique_ids

MANIFEST_NAME = "manifest.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# Common Voice's own demographic/metadata columns kept in the manifest (older releases say `accent`, newer
# `accents`; both land in `accents`). The raw client_id is not kept: see ManifestRow.speaker.
DEMOGRAPHIC_COLUMNS = ("age", "gender", "accents", "variant", "locale", "up_votes", "down_votes")


@dataclass(frozen=True)
class ManifestRow:
    id: str  # unique in the dataset, a resources.paths.safe_id; also the WAV's stem
    audio: str  # "audio/<id>.wav", relative to the dataset folder; 16 kHz mono 16-bit PCM
    duration_s: float
    sentence: str | None  # Spanish transcript (None when the source has none)
    split: str
    source_path: str  # the clip's path as the source names it (Common Voice: "common_voice_es_123.mp3")
    reference_en: str | None = None  # English reference: CoVoST 2 (Common Voice) or FLEURS en_us, when joined
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
    # Mandarin reference (FLEURS cmn_hans_cn). Last, so older manifests (without it) read unchanged and the
    # columns people know keep their places.
    reference_zh: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MANIFEST_COLUMNS = tuple(f.name for f in fields(ManifestRow))
REQUIRED_COLUMNS = tuple(f.name for f in fields(ManifestRow) if f.default is MISSING)
# What a column's JSON value may be, by its annotation (JSON has no int/float split, and a bool is no count), and
# how a message names it.
JSON_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "text"),
    "float": ((int, float), "a number"),
    "int": ((int,), "a whole number"),
}


def column_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with one manifest row's known columns: a required one missing, or a value of the wrong type
    (a hand-edited `"duration_s": "3 s"` would otherwise fail far from the manifest, in a sum or a plot)."""
    problems = [f"`{name}` is missing" for name in REQUIRED_COLUMNS if name not in data]
    for f in fields(ManifestRow):
        if f.name not in data or f.name == "id":  # any id is made a safe one
            continue
        kind, _, optional = str(f.type).partition(" | ")
        value = data[f.name]
        if value is None and optional:
            continue
        types, wanted = JSON_TYPES[kind]
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"`{f.name}` is {wanted}{' or null' if optional else ''}, not {json.dumps(value)}")
    return problems


@dataclass(frozen=True)
class Rejection:
    id: str
    source_path: str
    split: str
    reason: str  # one of REASONS
    detail: str  # a sentence a person can act on


# The closed set of rejection reasons (report.json's `reason`), in the order they are checked. not_a_file: a
# directory, FIFO or device named like audio; too_large: a header whose decoded size is over the decode limit;
# no_reference_zh: a FLEURS clip whose sentence id has no Mandarin transcription (the join by id found none).
REASONS = (
    "unsafe_path",
    "no_reference_zh",
    "missing_file",
    "not_a_file",
    "empty_file",
    "corrupt",
    "too_large",
    "too_short",
    "too_long",
    "silent",
)


@dataclass(frozen=True)
class RenamedId:
    """A clip whose id another clip already had (e.g. 'a.mp3' and 'a.wav' are both 'a'): it became id-2, ..."""

    id: str
    original_id: str
    source_path: str
    split: str


@dataclass
class Report:
    selected: int = 0
    accepted: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    renamed: list[RenamedId] = field(default_factory=list)

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
            "renamed_ids": [asdict(r) for r in self.renamed],
        }


def dumps_row(row: ManifestRow) -> str:
    # Field order is the dataclass's (id first, for people reading the file); one byte form per row, which the
    # content hash relies on.
    return dumps(row.to_dict())


def write_manifest(path: Path, rows: list[ManifestRow]) -> None:
    # The writer's check: whatever made the rows, a manifest never carries an id that is not a file name.
    bad = [row.id for row in rows if not is_safe_id(row.id)]
    dupes = sorted(i for i, n in Counter(row.id for row in rows).items() if n > 1)
    if bad or dupes:
        raise ValueError(f"manifest ids must be unique safe ids: unsafe {bad[:3]}, repeated {dupes[:3]}")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(dumps_row(row) + "\n" for row in rows)


def read_manifest(path: str | Path, check_audio: bool = True, check_paths: bool = True) -> list[ManifestRow]:
    """Read manifest.jsonl, which may have been edited by hand: it is data, never trusted.

    Every `id` becomes a unique safe id (resources.paths.safe_id, then id-2, id-3 for repeats, in file order), so
    no id can name a path outside a folder or make one row's output replace another's; a manifest that ingest
    wrote is returned unchanged. Each `audio` must stay inside the manifest's folder (UnsafePathError) and
    exist, if check_audio. check_paths=False leaves `audio` unchecked, for a caller that joins each one with
    safe_join before opening it and makes a bad one that row's error, not the whole manifest's.
    Errors (ValueError, FileNotFoundError) name the file and line.
    """
    path = Path(path)
    rows: list[ManifestRow] = []
    known = set(MANIFEST_COLUMNS)
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(enumerate(f, 1))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason}); a manifest.jsonl is UTF-8 JSON lines") from exc
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not a JSON line ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a manifest row is a JSON object, not {type(data).__name__}")
        if not isinstance(data.get("id"), (str, int)) or not isinstance(data.get("audio"), str):
            raise ValueError(f"{where}: a manifest row needs a text `id` and `audio`")
        if problems := column_problems(data):
            raise ValueError(f"{where}: {'; '.join(problems)}")
        # Unknown keys are ignored so an older reader accepts a newer manifest with extra columns.
        row = ManifestRow(**{k: v for k, v in data.items() if k in known} | {"id": safe_id(str(data["id"]))})
        if check_paths:
            audio = safe_join(path.parent, row.audio)
            if check_audio and not audio.is_file():
                raise FileNotFoundError(f"{where}: audio file {row.audio!r} is missing")
        rows.append(row)
    ids = unique_ids([row.id for row in rows])
    return [row if row.id == new else replace(row, id=new) for row, new in zip(rows, ids, strict=True)]


def write_report(folder: Path, report: Report) -> None:
    (folder / REPORT_JSON).write_text(dumps(report.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # A file name that is not UTF-8 is shown with its escapes (\udce9) rather than failing the report.
    (folder / REPORT_MD).write_text(report_markdown(report), encoding="utf-8", errors="backslashreplace")


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
            lines.append(_md_row(cells))
    if report.renamed:
        lines += ["", f"{len(report.renamed)} clip(s) had an id another clip already had and were renamed:", ""]
        lines += ["| id | was | split | source path |", "|---|---|---|---|"]
        lines += [_md_row([r.id, r.original_id, r.split, r.source_path]) for r in report.renamed]
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
