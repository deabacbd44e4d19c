"""Run the three stages over a folder of audio on this machine and write the output contract.

Items travel in groups of `batch_size` through speech translation, machine translation and speech synthesis;
each group's rows are appended to results.jsonl as soon as it is done, so a long run keeps what it finished.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clearml_pipeline.config import RunConfig
from clearml_pipeline.results import ItemResult, summarize
from clearml_pipeline.stages import STAGES, StepContext, build_stage, finish
from clearml_pipeline.streaming import StreamingOptions, StreamingRunner, available_cores, is_gpu_stage, plan
from steps.audio import AUDIO_EXTENSIONS
from steps.base import ModelInfo, Stage

CALIBRATION_ITEMS = 4  # items that measure stage costs for `--replicas auto`


@dataclass(frozen=True)
class InputItem:
    id: str
    path: Path


def discover_inputs(source: Path) -> list[InputItem]:
    """Audio files under `source` (or `source` itself), sorted, each with a unique, filesystem-safe id."""
    if source.is_file():
        paths, root = [source], source.parent
    elif source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        root = source
    else:
        raise FileNotFoundError(f"input {source} does not exist")
    items: list[InputItem] = []
    seen: set[str] = set()
    for path in paths:
        base = re.sub(r"[^\w.-]+", "_", str(path.relative_to(root).with_suffix("")).replace("/", "__")) or "item"
        item_id, n = base, 1
        while item_id in seen:
            n += 1
            item_id = f"{base}-{n}"
        seen.add(item_id)
        items.append(InputItem(item_id, path))
    return items


def batched(items: Sequence[InputItem], size: int) -> Iterator[Sequence[InputItem]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + max(size, 1)]


class LocalRunner:
    """The whole pipeline on this machine: in this process (item groups), or in streaming worker processes."""

    def __init__(self, config: RunConfig, streaming: StreamingOptions | None = None) -> None:
        self.config = config
        self.streaming = streaming
        self.stages: dict[str, Stage[Any, Any]] = {}

    def setup(self) -> None:
        """Load every model before the first item, so a missing model fails the run at once."""
        if self.config.runner.threads > 0:
            torch.set_num_threads(self.config.runner.threads)
        for spec in STAGES:
            self.stages[spec.name] = build_stage(spec, self.config.stage_options(spec))
            self.stages[spec.name].ensure_ready()

    def models(self) -> list[ModelInfo]:
        return [info for stage in self.stages.values() for info in stage.models()]

    def run(self, items: Sequence[InputItem], out: Path) -> dict[str, Any]:
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        ctx = StepContext(out, self.config.runner.max_audio_seconds)
        models: list[ModelInfo] = []
        with tqdm(total=len(items), unit="clip", desc="translating") as progress:
            if self.streaming is None:
                self.setup()  # every model loads before the first item: a missing one fails the run at once
                models = self.models()
                rows, busy = self.run_inprocess(items, ctx, progress.update)
            else:
                rows, busy, extra = self.run_streaming(items, ctx, progress.update)
                models = extra.pop("models")
        device = _device(self.config)
        summary = summarize(rows, models, busy, time.perf_counter() - started, self.config.to_dict(), device)
        if self.streaming is not None:
            summary["streaming"] = extra
            summary["interrupted"] = extra["interrupted"]
        return summary

    def run_inprocess(
        self, items: Sequence[InputItem], ctx: StepContext, progress: Callable[[int], object]
    ) -> tuple[list[ItemResult], dict[str, float]]:
        rows: list[ItemResult] = []
        with (ctx.out / "results.jsonl").open("w", encoding="utf-8") as sink:
            for group in batched(items, self.config.runner.batch_size):
                group_rows = self.run_group(group, ctx)
                sink.writelines(row.to_json() + "\n" for row in group_rows)
                sink.flush()
                rows.extend(group_rows)
                progress(len(group))
        busy = {name: stage.stats.busy_s for name, stage in self.stages.items()}
        busy["input"] = sum(r.latency_s.get("input", 0.0) for r in rows)
        return rows, busy

    def run_group(self, group: Sequence[InputItem], ctx: StepContext) -> list[ItemResult]:
        rows = [ItemResult(item.id, str(item.path)) for item in group]
        for spec in STAGES:
            spec.step(self.stages[spec.name], rows, ctx)
        return [finish(row) for row in rows]

    def run_streaming(
        self, items: Sequence[InputItem], ctx: StepContext, progress: Callable[[int], object]
    ) -> tuple[list[ItemResult], dict[str, float], dict[str, Any]]:
        assert self.streaming is not None
        gpu = {spec.name: is_gpu_stage(self.config, spec) for spec in STAGES}
        pending = [ItemResult(item.id, str(item.path)) for item in items]
        calibrated: list[ItemResult] = []
        runners: list[StreamingRunner] = []

        def calibrate() -> dict[str, float]:
            """`--replicas auto`: the first items go through one worker per stage at one thread, which measures
            each stage's CPU-seconds per item; their results are kept (nothing is computed twice)."""
            ones = {spec.name: 1 for spec in STAGES}
            probe = StreamingRunner(self.config, self.streaming, ctx, ones, ones)  # type: ignore[arg-type]
            runners.append(probe)
            try:
                probe.start()
                calibrated.extend(probe.run(pending[:CALIBRATION_ITEMS], on_progress=progress))
            finally:
                probe.close()
            reached = {s.name: sum(s.name in r.latency_s for r in calibrated) for s in STAGES}
            return {name: probe.stats.cpu_s.get(name, 0.0) / max(n, 1) for name, n in reached.items()}

        replicas, threads = plan(self.streaming, gpu, available_cores(), calibrate)
        rest = pending[len(calibrated) :]
        if rest and runners and runners[0].stats.interrupted:
            for row in rest:
                row.fail("interrupted", "run interrupted (Ctrl-C) before this item finished")
        elif rest:
            runner = StreamingRunner(self.config, self.streaming, ctx, replicas, threads)
            runners.append(runner)
            try:
                runner.start()
                rest = runner.run(rest, on_progress=progress)
            finally:
                runner.close()
        rows = calibrated + rest
        (ctx.out / "results.jsonl").write_text("".join(row.to_json() + "\n" for row in rows), encoding="utf-8")
        busy = {"input": sum(r.latency_s.get("input", 0.0) for r in rows)}
        for done in runners:
            for name, seconds in done.stats.busy_s.items():
                busy[name] = busy.get(name, 0.0) + seconds
        last = runners[-1]
        extra = {
            "replicas": replicas,
            "threads": threads,
            "cold_start_s": last.stats.cold_start_s,
            "calibration_items": len(calibrated),
            "worker_restarts": sum(done.stats.restarts for done in runners),
            "interrupted": any(done.stats.interrupted for done in runners),
            "models": [info for spec in STAGES for info in last.models.get(spec.name, [])],
        }
        return rows, busy, extra


def _device(config: RunConfig) -> str:
    from steps.device import pick_device

    return pick_device(config.speech_translation.device)
