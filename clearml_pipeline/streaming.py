"""The streaming runtime: each stage in its own worker processes, rows routed between them by this process.

Why this shape (seed 000's open problems):
- processes come from `multiprocessing.get_context("spawn")`, never a global `set_start_method`, so importing
  this module from anywhere ("context has already been set") cannot break;
- every worker loads its model once and warms up before the clock starts, all workers in parallel; cold start
  is measured on its own, apart from steady-state throughput;
- each replica gets a thread budget (torch intra-op threads) so that replicas share the cores instead of
  oversubscribing them, the likely reason 1:1:2 ran slower than 1:1:1 in the seed;
- the router here knows which rows each worker holds, so a worker that dies loses nothing: its rows are
  retried on a live replica (a replacement is started) or, past the retry budget, become error rows;
- each worker's inbox is bounded (back-pressure) and workers batch dynamically: they take what is queued, up
  to the stage's batch size, waiting at most `max_wait_ms` for more.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import numpy as np

from clearml_pipeline.config import RunConfig
from clearml_pipeline.logs import quiet_libraries
from clearml_pipeline.results import ItemResult
from clearml_pipeline.stages import STAGES, StageSpec, StepContext, build_stage, finish
from steps.base import ModelInfo

SPAWN: SpawnContext = __import__("multiprocessing").get_context("spawn")
STAGE_BY_NAME = {spec.name: spec for spec in STAGES}


@dataclass
class StreamingOptions:
    replicas: str = "1:1:1"  # per stage, in pipeline order; "auto" sizes them from measured stage costs
    replica_threads: str = "auto"  # torch threads per replica, "auto" (cores split among CPU replicas) or "2:1:1"
    max_wait_ms: float = 20.0  # dynamic batching: how long a worker waits to fill a batch
    inbox_batches: int = 2  # bounded inbox per worker, in batches
    retries: int = 1  # times a row is retried after its worker died
    ready_timeout_s: float = 600.0


@dataclass
class Delivery:
    """A batch of finished rows from a worker, with the worker's clock readings for queue-wait accounting."""

    worker: int
    rows: list[ItemResult]
    started: float
    finished: float
    cpu_s: float


@dataclass
class Worker:
    id: int
    spec: StageSpec
    process: SpawnProcess
    inbox: Queue[Any]
    ready: bool = False
    held: dict[str, ItemResult] = field(default_factory=dict)


@dataclass
class StreamStats:
    cold_start_s: float = 0.0
    wall_s: float = 0.0
    queue_wait_s: dict[str, list[float]] = field(default_factory=dict)
    batch_sizes: dict[str, list[int]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    busy_s: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    interrupted: bool = False


def parse_ratio(text: str, what: str) -> list[int]:
    parts = [int(p) for p in text.split(":")]
    if len(parts) != len(STAGES) or min(parts) < 1:
        raise ValueError(f"{what} must be {len(STAGES)} positive integers like 1:1:2, got {text!r}")
    return parts


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def is_gpu_stage(config: RunConfig, spec: StageSpec) -> bool:
    device = getattr(config.stage_options(spec), "device", "cpu")
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def auto_replicas(cpu_s_per_item: dict[str, float], gpu: dict[str, bool], cores: int) -> dict[str, int]:
    """Replicas so that no stage starves the next: CPU stages get cores in proportion to their cost per item.

    GPU stages keep one replica each (they share the device through batching, not stacked processes).
    """
    cpu_stages = [s.name for s in STAGES if not gpu[s.name]]
    budget = max(cores, len(cpu_stages))
    total = sum(cpu_s_per_item[name] for name in cpu_stages) or 1.0
    replicas = {s.name: 1 for s in STAGES}
    for name in cpu_stages:
        replicas[name] = max(1, round(budget * cpu_s_per_item[name] / total))
    return replicas


def thread_budget(replicas: dict[str, int], gpu: dict[str, bool], cores: int) -> dict[str, int]:
    """Split the cores among CPU replicas (at least one thread each); GPU stages drive the device with one."""
    cpu_replicas = sum(n for name, n in replicas.items() if not gpu[name]) or 1
    share = max(1, cores // cpu_replicas)
    return {name: 1 if gpu[name] else share for name in replicas}


def plan(
    options: StreamingOptions, gpu: dict[str, bool], cores: int, measure_cpu_s: Callable[[], dict[str, float]]
) -> tuple[dict[str, int], dict[str, int]]:
    """Replicas and threads per stage from the options; `measure_cpu_s` is only called for `auto` replicas."""
    names = [spec.name for spec in STAGES]
    if options.replicas == "auto":
        replicas = auto_replicas(measure_cpu_s(), gpu, cores)
    else:
        replicas = dict(zip(names, parse_ratio(options.replicas, "replicas"), strict=True))
    if options.replica_threads == "auto":
        threads = thread_budget(replicas, gpu, cores)
    else:
        threads = dict(zip(names, parse_ratio(options.replica_threads, "replica threads"), strict=True))
    return replicas, threads


def warm_up(stage: Any, spec: StageSpec, ctx: StepContext, worker_id: int) -> None:
    """Run one synthetic row through the stage's whole path (a noise clip passes the silence gate)."""
    import soundfile as sf

    row = ItemResult(id=f".warmup-{worker_id}", source=str(ctx.out / f".warmup-{worker_id}.wav"))
    row.en_text, row.zh_text = "Hello, how are you?", "你好，今天天气很好。"
    noise = np.random.default_rng(0).standard_normal(16_000 * 2).astype(np.float32) * 0.1
    sf.write(row.source, noise, 16_000)
    try:
        spec.step(stage, [row], ctx)
    finally:
        Path(row.source).unlink(missing_ok=True)
        if row.zh_audio:
            (ctx.out / row.zh_audio).unlink(missing_ok=True)
    if not row.ok:
        raise RuntimeError(f"warm-up failed: {row.error}")


def worker_main(
    worker_id: int,
    stage_name: str,
    options: Any,
    ctx: StepContext,
    threads: int,
    max_batch: int,
    max_wait_s: float,
    inbox: Queue[Any],
    outbox: Queue[Any],
) -> None:
    """A worker process: load the stage once, warm up, then take batches from `inbox` until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the router owns shutdown; Ctrl-C reaches it alone
    import torch

    quiet_libraries()
    torch.set_num_threads(threads)
    spec = STAGE_BY_NAME[stage_name]
    started = time.monotonic()
    try:
        stage = build_stage(spec, options)
        stage.ensure_ready()
        warm_up(stage, spec, ctx, worker_id)
    except Exception as exc:  # noqa: BLE001 - reported to the router, which fails the run cleanly
        outbox.put(("failed", worker_id, f"{type(exc).__name__}: {exc}"))
        return
    outbox.put(("ready", worker_id, time.monotonic() - started, stage.models()))
    while True:
        first = inbox.get()
        if first is None:
            return
        batch, stop = [first], False
        deadline = time.monotonic() + max_wait_s
        while len(batch) < max_batch:
            try:
                item = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        t0, c0 = time.monotonic(), time.process_time()
        spec.step(stage, batch, ctx)
        outbox.put(("done", Delivery(worker_id, batch, t0, time.monotonic(), time.process_time() - c0)))
        if stop:
            return


class StreamingRunner:
    """Start workers for every stage, stream rows through them, and account for every row whatever happens."""

    def __init__(
        self,
        config: RunConfig,
        options: StreamingOptions,
        ctx: StepContext,
        replicas: dict[str, int],
        threads: dict[str, int],
        stages: Sequence[StageSpec] = STAGES,
    ) -> None:
        """`stages` is the whole pipeline by default; a single stage measures that stage alone."""
        self.config, self.options, self.ctx, self.stages = config, options, ctx, tuple(stages)
        self.replicas, self.threads = replicas, threads
        self.outbox: Queue[Any] = SPAWN.Queue()
        self.workers: dict[int, Worker] = {}
        self.next_id = 0
        self.stats = StreamStats()
        self.models: dict[str, list[ModelInfo]] = {}  # what the workers loaded, per stage

    # -- workers ---------------------------------------------------------------------------------------------
    def _spawn(self, spec: StageSpec) -> Worker:
        options = self.config.stage_options(spec)
        max_batch = max(1, getattr(options, "batch_size", 1))
        inbox: Queue[Any] = SPAWN.Queue(maxsize=max_batch * self.options.inbox_batches)
        worker_id, self.next_id = self.next_id, self.next_id + 1
        process = SPAWN.Process(
            target=worker_main,
            args=(
                worker_id,
                spec.name,
                options,
                self.ctx,
                self.threads[spec.name],
                max_batch,
                self.options.max_wait_ms / 1000,
                inbox,
                self.outbox,
            ),
            name=f"{spec.prefix}-{worker_id}",
            daemon=True,
        )
        process.start()
        worker = Worker(worker_id, spec, process, inbox)
        self.workers[worker_id] = worker
        return worker

    def start(self) -> float:
        """Start every replica and wait until all are warm; returns the cold start in seconds."""
        started = time.monotonic()
        self.ctx.out.mkdir(parents=True, exist_ok=True)
        for spec in self.stages:
            for _ in range(self.replicas[spec.name]):
                self._spawn(spec)
        while not all(w.ready for w in self.workers.values()):
            if time.monotonic() - started > self.options.ready_timeout_s:
                raise RuntimeError(f"workers not ready after {self.options.ready_timeout_s:.0f} s")
            self._receive(timeout=0.5)
            for worker in self.workers.values():
                if not worker.ready and not worker.process.is_alive():
                    raise RuntimeError(
                        f"worker {worker.process.name} exited during start (exit code {worker.process.exitcode})"
                    )
        self.stats.cold_start_s = time.monotonic() - started
        return self.stats.cold_start_s

    def close(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.inbox.put_nowait(None)
        deadline = time.monotonic() + 10
        for worker in self.workers.values():
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
        for worker in self.workers.values():
            worker.inbox.cancel_join_thread()
        self.outbox.cancel_join_thread()

    # -- routing ---------------------------------------------------------------------------------------------
    def run(
        self,
        rows: Sequence[ItemResult],
        arrivals: Sequence[float] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[ItemResult]:
        """Stream `rows` through every stage; `arrivals` (seconds from start) makes the load open-loop.

        Returns every row, in input order; `on_progress` is told how many rows finished since its last call.
        """
        order = [row.id for row in rows]
        done: dict[str, ItemResult] = {}
        waiting = deque(zip(rows, arrivals or [0.0] * len(rows), strict=True))
        pending: dict[str, deque[ItemResult]] = {spec.name: deque() for spec in self.stages}
        self.sent_at: dict[str, float] = {}
        self.attempts: dict[str, int] = {}
        self.arrived: dict[str, float] = {}
        start = time.monotonic()
        try:
            while len(done) < len(rows):
                now = time.monotonic() - start
                while waiting and waiting[0][1] <= now:
                    row, _ = waiting.popleft()
                    self.arrived[row.id] = time.monotonic()
                    pending[self.stages[0].name].append(row)
                self._dispatch(pending)
                before = len(done)
                for row, stage_index in self._receive(timeout=0.01):
                    self._advance(row, stage_index, pending, done)
                self._reap(pending, done)
                if on_progress and len(done) > before:
                    on_progress(len(done) - before)
        except KeyboardInterrupt:
            self.stats.interrupted = True
            for row in rows:
                if row.id not in done:
                    row.fail("interrupted", "run interrupted (Ctrl-C) before this item finished")
                    done[row.id] = finish(row)
        self.stats.wall_s = time.monotonic() - start
        return [done[item_id] for item_id in order]

    def _dispatch(self, pending: dict[str, deque[ItemResult]]) -> None:
        for spec in self.stages:
            ready = [w for w in self.workers.values() if w.spec is spec and w.ready and w.process.is_alive()]
            while pending[spec.name] and ready:
                worker = min(ready, key=lambda w: len(w.held))
                row = pending[spec.name][0]
                try:
                    worker.inbox.put_nowait(row)
                except queue.Full:
                    ready.remove(worker)
                    continue
                pending[spec.name].popleft()
                worker.held[row.id] = row
                self.sent_at[row.id] = time.monotonic()

    def _receive(self, timeout: float) -> list[tuple[ItemResult, int]]:
        """Read worker messages; returns finished rows with the index of the stage that finished them."""
        finished: list[tuple[ItemResult, int]] = []
        try:
            kind, *payload = self.outbox.get(timeout=timeout)
        except queue.Empty:
            return finished
        if kind == "ready":
            worker_id, _cold, models = payload
            self.workers[worker_id].ready = True
            self.models[self.workers[worker_id].spec.name] = models
        elif kind == "failed":
            worker_id, message = payload
            raise RuntimeError(f"worker {self.workers[worker_id].process.name} could not start: {message}")
        elif kind == "done":
            delivery: Delivery = payload[0]
            worker = self.workers[delivery.worker]
            name = worker.spec.name
            self.stats.batch_sizes.setdefault(name, []).append(len(delivery.rows))
            self.stats.cpu_s[name] = self.stats.cpu_s.get(name, 0.0) + delivery.cpu_s
            self.stats.busy_s[name] = self.stats.busy_s.get(name, 0.0) + delivery.finished - delivery.started
            for row in delivery.rows:
                worker.held.pop(row.id, None)
                wait = max(0.0, delivery.started - self.sent_at.get(row.id, delivery.started))
                self.stats.queue_wait_s.setdefault(name, []).append(wait)
                row.latency_s[f"{name}_queue"] = wait
                finished.append((row, self.stages.index(worker.spec)))
        return finished

    def _advance(
        self, row: ItemResult, stage_index: int, pending: dict[str, deque[ItemResult]], done: dict[str, ItemResult]
    ) -> None:
        last = stage_index == len(self.stages) - 1
        if last or not row.ok or row.no_speech:
            row.latency_s["end_to_end"] = time.monotonic() - self.arrived[row.id]
            done[row.id] = finish(row)
        else:
            pending[self.stages[stage_index + 1].name].append(row)

    def _reap(self, pending: dict[str, deque[ItemResult]], done: dict[str, ItemResult]) -> None:
        """A dead worker's rows go back to the front of its stage's queue (or fail), and a replacement starts."""
        for worker in list(self.workers.values()):
            if worker.process.is_alive() or not worker.ready:
                continue
            del self.workers[worker.id]
            self.stats.restarts += 1
            for row in reversed(list(worker.held.values())):
                self.attempts[row.id] = self.attempts.get(row.id, 0) + 1
                if self.attempts[row.id] > self.options.retries:
                    row.fail(
                        worker.spec.name,
                        f"worker process died (exit code {worker.process.exitcode}) "
                        f"while processing this item, {self.attempts[row.id]} times",
                    )
                    row.latency_s["end_to_end"] = time.monotonic() - self.arrived[row.id]
                    done[row.id] = finish(row)
                else:
                    pending[worker.spec.name].appendleft(row)
            worker.inbox.cancel_join_thread()
            self._spawn(worker.spec)
