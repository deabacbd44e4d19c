"""The output contract: one results.jsonl row per input item, in input order, and summary.json.

Later steps (ClearML tasks, evaluation, benchmarks) read these files, so their field names are stable.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from steps.base import ModelInfo

STAGE_NAMES = ("input", "speech_translation", "machine_translation", "speech_synthesis")
VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "espnet",
    "espnet_model_zoo",
    "parallel_wavegan",
    "clearml",
    "numpy",
    "soundfile",
    "soxr",
    "ctranslate2",
)


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
    latency_s: dict[str, float] = field(default_factory=dict)

    def fail(self, stage: str, error: str) -> None:
        self.status, self.stage, self.error = "error", stage, error

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def read_results(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def percentiles(values: list[float], quantiles: tuple[int, ...] = (50, 95)) -> dict[str, float | None]:
    return {f"p{q}": float(np.percentile(values, q)) if values else None for q in quantiles}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def summarize(
    rows: list[ItemResult],
    models: list[ModelInfo],
    stage_busy_s: dict[str, float],
    wall_s: float,
    config: dict[str, Any],
    device: str,
) -> dict[str, Any]:
    """summary.json: counts, models, per-stage throughput and latency, wall time, versions."""
    stages: dict[str, Any] = {}
    for name in STAGE_NAMES:
        latencies = [r.latency_s[name] for r in rows if name in r.latency_s]
        busy = stage_busy_s.get(name, 0.0)
        stages[name] = {
            "items": len(latencies),
            "errors": sum(1 for r in rows if r.stage == name),
            "busy_s": busy,
            "items_per_s": len(latencies) / busy if busy > 0 else None,
            "latency_s": percentiles(latencies),
        }
    audio_seconds = sum(r.audio_seconds or 0.0 for r in rows)
    return {
        "counts": {
            "items": len(rows),
            "ok": sum(r.ok for r in rows),
            "error": sum(not r.ok for r in rows),
            "no_speech": sum(r.no_speech for r in rows),
            "with_unsayable_text": sum(bool(r.unsayable) for r in rows),
        },
        "models": [asdict(m) for m in models],
        "stages": stages,
        "end_to_end": {
            "latency_s": percentiles([r.latency_s["total"] for r in rows if r.ok and "total" in r.latency_s]),
            "items_per_s": len(rows) / wall_s if wall_s > 0 else None,
            "audio_seconds": audio_seconds,
            "real_time_factor": wall_s / audio_seconds if audio_seconds > 0 else None,
        },
        "wall_s": wall_s,
        "device": device,
        "versions": versions(),
        "config": config,
    }
