"""The pipeline on this machine in one run: the in-process runtime and the streaming runtime.

Why two: in-process is the simplest thing that works (one process, every model loaded once, items in groups
of `--batch-size` through all stages), the reference the others are checked against; streaming runs each stage
in its own worker processes so the stages overlap and the cores are shared, for throughput. Both write
results.jsonl row by row as they finish (a crash keeps the finished ones), rewrite it in input order at the
end, and return the summary; both load every model before the first item. Interrupted at any point (a signal
while the models load, the workers warm up or rows run), both still write a row for every item.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clearml_pipeline.config import RunConfig
from clearml_pipeline.execution import (
    RESULTS,
    ResultsSink,
    busy_seconds,
    mark_interrupted,
    run_groups,
    start_outputs,
)
from clearml_pipeline.inputs import InputItem
from clearml_pipeline.replicas import (
    MemoryReading,
    StreamingOptions,
    available_cores,
    is_gpu_stage,
    plan,
    worker_memory,
)
from clearml_pipeline.results import run_device, summarize, with_configured
from clearml_pipeline.streaming import StreamingRunner, WorkerStartError
from steps.base import ModelInfo, Stage
from steps.results import ItemResult, write_rows
from steps.stages import STAGES, StepContext, build_stage

CALIBRATION_ITEMS = 4  # items that measure stage costs for `--replicas auto`
LOADING = "run interrupted while the models were loading, before this item started"
NOT_SENT = "run interrupted before this item was sent to a worker (while workers loaded their models and warmed up)"


def build_stages(config: RunConfig) -> dict[str, Stage[Any, Any]]:
    """Every stage built and loaded before the first item, so a missing model fails the run at once."""
    import torch

    if config.runner.threads > 0:
        torch.set_num_threads(config.runner.threads)
    stages = {spec.name: build_stage(spec, config.stage_options(spec)) for spec in STAGES}
    for stage in stages.values():
        stage.ensure_ready()
    return stages


def _summary(
    config: RunConfig, rows: list[ItemResult], models: list[ModelInfo], busy: dict[str, float], started: float
) -> dict[str, Any]:
    models = with_configured(models, config)  # interrupted while loading: the config's models, revisions unknown
    return summarize(rows, models, busy, time.perf_counter() - started, config.to_dict(), run_device(config))


def _rows(items: Sequence[InputItem]) -> list[ItemResult]:
    return [ItemResult(item.id, str(item.path)) for item in items]


class InProcessRuntime:
    """Every stage in this process; items in groups of `runner.batch_size` through all of them."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def run(self, items: Sequence[InputItem], out: Path) -> dict[str, Any]:
        start_outputs(out)
        started = time.perf_counter()
        ctx = StepContext(out, self.config.runner.max_audio_seconds)
        rows = _rows(items)
        stages: dict[str, Stage[Any, Any]] = {}
        with tqdm(total=len(rows), unit="clip", desc="translating") as bar, ResultsSink(out / RESULTS) as sink:
            try:
                stages = build_stages(self.config)
            except KeyboardInterrupt:
                mark_interrupted(rows, LOADING)
                interrupted = True
            else:
                built = [(spec, stages[spec.name]) for spec in STAGES]
                interrupted = run_groups(built, rows, ctx, sink, self.config.runner.batch_size, bar.update)
        write_rows(out / RESULTS, rows)  # in input order, each row once, wherever an interrupt landed
        models = [info for stage in stages.values() for info in stage.models()]
        summary = _summary(self.config, rows, models, busy_seconds(stages, rows), started)
        summary["interrupted"] = interrupted
        return summary


class StreamingRuntime:
    """Each stage in its own worker processes (streaming.StreamingRunner), replicas planned or given."""

    def __init__(self, config: RunConfig, options: StreamingOptions) -> None:
        self.config, self.options = config, options

    def run(self, items: Sequence[InputItem], out: Path) -> dict[str, Any]:
        start_outputs(out)
        started = time.perf_counter()
        ctx = StepContext(out, self.config.runner.max_audio_seconds)
        runners: list[StreamingRunner] = []
        with tqdm(total=len(items), unit="clip", desc="translating") as bar, ResultsSink(out / RESULTS) as sink:
            rows, planned, interrupted = self._stream(_rows(items), ctx, bar.update, sink, runners)
        write_rows(out / RESULTS, rows)  # in input order
        busy = busy_seconds({}, rows)
        for done in runners:
            for name, seconds in done.stats.busy_s.items():
                busy[name] = busy.get(name, 0.0) + seconds
        last = runners[-1] if runners else None
        models = [info for spec in STAGES for info in (last.models.get(spec.name, []) if last else [])]
        summary = _summary(self.config, rows, models, busy, started)
        summary["streaming"] = planned | {
            "cold_start_s": last.stats.cold_start_s if last else 0.0,
            "worker_restarts": sum(done.stats.restarts for done in runners),
            "workers_started": {spec.name: sum(done.stats.started.get(spec.name, 0) for done in runners)
                                for spec in STAGES},
            "interrupted": interrupted,
        }
        summary["interrupted"] = interrupted
        return summary

    def _stream(
        self,
        pending: list[ItemResult],
        ctx: StepContext,
        progress: Callable[[int], object],
        sink: ResultsSink,
        runners: list[StreamingRunner],
    ) -> tuple[list[ItemResult], dict[str, Any], bool]:
        """Every row through the workers; returns them in input order, the plan, and whether interrupted.

        An interrupt during a warm-up (no row sent yet) marks the rows not finished; workers that cannot start
        after some rows finished (the calibration's) fail the rest with the reason, and nothing is lost."""
        gpu = {spec.name: is_gpu_stage(self.config, spec) for spec in STAGES}
        calibrated: list[ItemResult] = []

        def calibrate() -> dict[str, float]:
            """`--replicas auto`: the first items go through one worker per stage at one thread, which measures
            each stage's CPU-seconds per item; their results are kept (nothing is computed twice), and so are the
            workers, grown to the plan below (no model is loaded twice)."""
            ones = {spec.name: 1 for spec in STAGES}
            probe = self._runner(ctx, ones, ones, runners)
            calibrated.extend(probe.run(pending[:CALIBRATION_ITEMS], on_progress=progress, sink=sink))
            reached = {s.name: sum(s.name in r.latency_s for r in calibrated) for s in STAGES}
            return {name: probe.stats.cpu_s.get(name, 0.0) / max(n, 1) for name, n in reached.items()}

        def memory() -> MemoryReading:
            """After the calibration: the memory its workers (loaded and warm) hold, which each further replica
            of theirs would take again, and how many of them are loaded."""
            ready = [worker for worker in runners[-1].workers.values() if worker.ready]
            return worker_memory(ready), dict(Counter(worker.spec.name for worker in ready))

        replicas = {spec.name: 1 for spec in STAGES}
        threads = dict(replicas)
        why, interrupted = "", False
        reason, failed_stage = NOT_SENT, STAGES[0].name
        results: dict[str, ItemResult] = {}
        try:
            try:
                replicas, threads, why = plan(self.options, gpu, available_cores(), calibrate, memory)
                interrupted = any(runner.stats.interrupted for runner in runners)
                rest = pending[len(calibrated) :]
                if rest and not interrupted:
                    if runners:  # the calibration's workers, warm
                        runner = runners[-1]
                        runner.scale(replicas, threads)
                    else:
                        runner = self._runner(ctx, replicas, threads, runners)
                    results.update((row.id, row) for row in runner.run(rest, on_progress=progress, sink=sink))
                    interrupted = runner.stats.interrupted
            finally:  # the one runner (the calibration's, grown to the plan); a Ctrl-C close() raises is handled below
                for runner in runners:
                    runner.close()
        except KeyboardInterrupt:  # while workers loaded and warmed up: the rows not finished were never sent
            interrupted = True
        except WorkerStartError as exc:
            if not calibrated:
                raise  # nothing done: the run could not start (exit 2)
            reason, failed_stage = str(exc), exc.stage
        results = {row.id: row for row in calibrated} | results
        missing = [row for row in pending if row.id not in results]
        if missing:
            if interrupted:
                mark_interrupted(missing, reason)
            else:  # the workers of the run after the calibration could not start
                for row in missing:
                    row.fail(failed_stage, f"not processed: {reason}")
            sink.append(missing)
            results.update((row.id, row) for row in missing)
        planned = {"replicas": replicas, "threads": threads, "replicas_chosen_by": why,
                   "calibration_items": len(calibrated)}
        return [results[row.id] for row in pending], planned, interrupted

    def _runner(
        self, ctx: StepContext, replicas: dict[str, int], threads: dict[str, int], runners: list[StreamingRunner]
    ) -> StreamingRunner:
        runner = StreamingRunner(self.config, self.options, ctx, replicas, threads)
        runners.append(runner)
        try:
            runner.start()
        except BaseException:
            runner.close()
            raise
        return runner
