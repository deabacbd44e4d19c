"""summary.json, the run-level half of the output contract (steps.results holds the rows).

Later steps (ClearML tasks, evaluation, benchmarks) read it, so its field names are stable.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, fields
from importlib import metadata
from typing import Any

from clearml_pipeline.figures import percentiles, stage_figures
from steps.base import ModelInfo
from steps.results import ItemResult
from steps.stages import STAGES, stage_names

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
    stages = {name: stage_figures(rows, name, stage_busy_s.get(name, 0.0)) for name in stage_names()}
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


def configured_models(config: Any) -> list[ModelInfo]:
    """The models a run's config names (a RunConfig or PipelineConfig), one per role of each stage
    (StageSpec.models), with the revision the config pins or "" (not known: the model was not loaded)."""
    stages = getattr(config, "run", config).stages
    found = []
    for spec in STAGES:
        options = stages[spec.name]
        by_name = {f.name: f for f in fields(options)}
        for role, name in spec.models.items():
            pin = by_name[name].metadata.get("revision")
            found.append(ModelInfo(role, str(getattr(options, name)), (getattr(options, pin) if pin else None) or ""))
    return found


def with_configured(models: list[ModelInfo], config: Any) -> list[ModelInfo]:
    """The models loaded, and for every role none was loaded for (a run interrupted before it loaded them)
    the model the config names: a summary always says which models the run was made with."""
    loaded = {info.role for info in models}
    return [*models, *(info for info in configured_models(config) if info.role not in loaded)]


def run_device(config: Any) -> str:
    """The device a run reports: that of its first stage with a device option (Whisper's, the GPU stage)."""
    from steps.device import pick_device

    device = next((options.device for options in config.stages.values() if hasattr(options, "device")), "cpu")
    return pick_device(device)
