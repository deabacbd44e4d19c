"""One input item's row as it travels the stages: the row of results.jsonl, the output contract.

Every runtime, step task, the evaluation and the bench read and write these rows, so the field names are
stable. A row's `stage` says where it failed; `latency_s` holds each stage's time and the row's total.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resources.json_text import dumps
from resources.paths import UnsafePathError, safe_join


@dataclass
class ItemResult:
    id: str
    source: str
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    stage: str | None = None  # where it failed
    audio_seconds: float | None = None
    no_speech: bool = False
    en_text: str | None = None
    zh_text: str | None = None
    zh_audio: str | None = None  # relative to the output folder
    zh_audio_seconds: float | None = None
    unsayable: list[str] = field(default_factory=list)
    segments: list[dict[str, float]] = field(default_factory=list)  # stage 1's speech segments: start, end (s)
    latency_s: dict[str, float] = field(default_factory=dict)

    def fail(self, stage: str, error: str) -> None:
        self.status, self.stage, self.error = "error", stage, error

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def audio_path(self, out: Path) -> Path | None:
        """The row's audio file under the output folder `out`, None if it has none. A row read back from disk is
        data: a zh_audio that is absolute, climbs out with `..` or resolves through a link outside `out` raises
        resources.paths.UnsafePathError, so no reader copies, uploads or transcribes a file elsewhere."""
        return safe_join(out, self.zh_audio) if self.zh_audio else None

    def audio_inside(self, out: Path) -> Path | None:
        """audio_path, or None where the path would leave `out`: for readers that treat it as no audio."""
        try:
            return self.audio_path(out)
        except UnsafePathError:
            return None

    def to_json(self) -> str:
        return dumps(asdict(self))


def read_results(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file (results.jsonl, manifest.jsonl), blank lines skipped."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_rows(path: Path) -> list[ItemResult]:
    return [ItemResult(**row) for row in read_results(path)]


def write_rows(path: Path, rows: list[ItemResult]) -> None:
    """Write every row at once, atomically: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(row.to_json() + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)
