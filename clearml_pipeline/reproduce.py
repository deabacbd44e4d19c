"""Rerun a finished pipeline run with the same dataset, model versions and parameters; show old and new metrics.

A local run (an OUT folder written by `run --local`) is rerun locally from its pipeline.json, with every hub model
pinned to the snapshot revision the run recorded and every registry model to the registry id it resolved, after
checking that the dataset still has the same content hash. A ClearML pipeline task is cloned and enqueued with
its parameters unchanged (the UI's "clone and run"), and the new task id is printed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from clearml_pipeline.config import PipelineConfig
from clearml_pipeline.execution import PIPELINE_CONFIG, RESULTS
from steps.stages import STAGES

# (metrics.json path, label) for the side-by-side table: quality, speed, counts.
COMPARED = (
    ("translation.bleu", "BLEU"),
    ("translation.chrf", "chrF"),
    ("intelligibility.cer", "CER"),
    ("spanish_wer.wer", "Spanish WER"),
    ("quality.zh_bleu", "zh BLEU (char)"),
    ("quality.zh_chrf", "zh chrF"),
    ("quality.asr_bleu", "ASR-BLEU (char)"),
    ("quality.asr_chrf", "ASR-chrF"),
    ("quality.en_bleu", "en BLEU"),
    ("quality.en_chrf", "en chrF"),
    ("latency_s.total.p50", "latency p50 (s)"),
    ("latency_s.total.p90", "latency p90 (s)"),
    ("latency_s.total.p99", "latency p99 (s)"),
    ("throughput.items_per_s", "items/s"),
    ("throughput.real_time_factor", "real-time factor"),
    ("counts.ok", "items ok"),
    ("counts.error", "items error"),
)


def role_fields() -> dict[str, tuple[str, str, str]]:
    """ModelInfo.role -> (config section, model field, revision field): every stage model that can be pinned."""
    found = {}
    for spec in STAGES:
        by_name = {f.name: f for f in fields(spec.options)}
        for role, name in spec.models.items():
            if revision := by_name[name].metadata.get("revision"):
                found[role] = (spec.name, name, revision)
    return found


def pinned_config(old: Path) -> tuple[PipelineConfig, Path, dict[str, int]]:
    """The earlier run's config with its models pinned, its dataset folder (content hash checked) and shards."""
    if not (old / PIPELINE_CONFIG).is_file():
        raise ValueError(
            f"{old} has no {PIPELINE_CONFIG}: only runs made by `run --local` (the default steps runtime) or on a "
            f"ClearML server can be reproduced"
        )
    recorded_config = json.loads((old / PIPELINE_CONFIG).read_text(encoding="utf-8"))
    config = PipelineConfig.from_dict(recorded_config)
    summary = json.loads((old / "summary.json").read_text(encoding="utf-8"))
    pins: dict[str, dict[str, Any]] = {}
    roles = role_fields()
    for model in summary.get("models", []):
        if model["role"] in roles and model["revision"] not in ("local", ""):
            section, name, revision = roles[model["role"]]
            if getattr(config.section(section), name) == model["model_id"]:
                pins.setdefault(section, {})[revision] = model["revision"]
    for key, resolved in (summary.get("registry") or {}).items():
        section, name = key.split(".")
        pins.setdefault(section, {})[name] = f"registry:{resolved['id']}"
    config = config.updated(pins)
    dataset = summary.get("dataset") or {}
    folder = Path(dataset.get("ref", ""))
    if not folder.is_dir():
        raise FileNotFoundError(f"the run's dataset {dataset.get('ref')!r} is not a folder here any more")
    recorded = (dataset.get("info") or {}).get("content_hash")
    info = folder / "dataset.json"
    if recorded and info.is_file() and json.loads(info.read_text())["content_hash"] != recorded:
        raise ValueError(f"the dataset at {folder} has changed since the run (content hash differs)")
    return config, folder, recorded_config.get("shards") or {}


def flat(metrics: dict[str, Any], path: str) -> Any:
    value: Any = metrics
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def side_by_side(old: dict[str, Any], new: dict[str, Any]) -> str:
    lines = [f"{'metric':<20} {'before':>12} {'now':>12}"]
    for path, label in COMPARED:
        a, b = flat(old, path), flat(new, path)
        if a is None and b is None:
            continue
        lines.append(f"{label:<20} {_fmt(a):>12} {_fmt(b):>12}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def reproduce(run: str, output: Path) -> int:
    old = Path(run).expanduser()
    if not old.is_dir():
        return reproduce_remote(run)
    from clearml_pipeline.local_pipeline import run_locally
    from registry.model_sets import model_caches

    config, dataset, shards = pinned_config(old)
    config = config.updated(model_caches(config.run.runner.models, config.sections()))
    summary = run_locally(config, dataset, output, shards)
    if summary.get("interrupted") or summary.get("failed_step"):  # no metrics.json to set beside the old one
        print(f"not reproduced: the run {'was interrupted' if summary.get('interrupted') else 'did not finish'}; "
              f"every item's row is in {output / RESULTS}", file=sys.stderr)
        return 128 + int(summary["interrupted_by"]) if summary.get("interrupted") else 1
    before = json.loads((old / "metrics.json").read_text(encoding="utf-8")) if (old / "metrics.json").is_file() else {}
    now = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    print(f"\nreproduced {old} -> {output}\n{side_by_side(before, now)}")
    return 0


def reproduce_remote(task_id: str) -> int:
    """Clone the pipeline task (parameters, dataset id and model refs included) and enqueue the clone."""
    from clearml import Task

    from resources.clearml_server import check_server

    check_server()
    original = Task.get_task(task_id=task_id)
    clone = Task.clone(source_task=original, name=f"{original.name} (reproduce {task_id[:8]})")
    if original.data.execution.queue:  # the queue the original controller ran from
        Task.enqueue(clone, queue_id=original.data.execution.queue)
    else:
        Task.enqueue(clone, queue_name="services")
    print(f"pipeline {task_id} cloned as {clone.id} and enqueued; compare them in the UI (select both, Compare)")
    return 0
