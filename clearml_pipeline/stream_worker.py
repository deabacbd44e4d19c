"""A streaming worker process: load one stage once, warm up, then take batches from its inbox until told to stop.

The router (clearml_pipeline.streaming) starts these through clearml_pipeline.interrupts.child_entry, which has
them ignore SIGINT and die with the router before anything heavy is imported; the router owns shutdown and
accounts for every row a worker holds, so a worker keeps no state worth saving.
"""

from __future__ import annotations

import queue
import shutil
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from typing import Any

import numpy as np

from clearml_pipeline.execution import run_group
from clearml_pipeline.logs import quiet_libraries
from clearml_pipeline.memory import freeze_loaded_objects, retain_freed_memory
from steps.results import ItemResult
from steps.stages import StageSpec, StepContext, build_stage, stage


@dataclass
class Delivery:
    """A batch of finished rows from a worker, with the worker's clock readings for queue-wait accounting."""

    worker: int
    rows: list[ItemResult]
    started: float
    finished: float
    cpu_s: float


def warm_up(built: Any, spec: StageSpec, ctx: StepContext, worker_id: int) -> None:
    """Run one synthetic row through the stage's whole path (a noise clip passes the silence gate).

    In a folder of its own under OUT, removed after: a replacement warms up while the run writes OUT/audio, and
    no real item's file may be touched."""
    import soundfile as sf

    own = ctx.out / f".warmup-{worker_id}"
    own.mkdir(parents=True, exist_ok=True)
    row = ItemResult(id="warmup", source=str(own / "warmup.wav"))
    row.en_text, row.zh_text = "Hello, how are you?", "你好，今天天气很好。"
    noise = np.random.default_rng(0).standard_normal(16_000 * 2).astype(np.float32) * 0.1
    sf.write(row.source, noise, 16_000)
    try:
        run_group([(spec, built)], [row], replace(ctx, out=own), close=False)
    finally:
        shutil.rmtree(own, ignore_errors=True)
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
    outbox: Connection,
) -> None:
    """A worker process: load the stage once, warm up, then take batches from `inbox` until told to stop.

    `outbox` is this worker's own pipe to the router, not a queue shared by all workers: a worker killed while
    writing (SIGKILL, out of memory) would leave a shared queue's lock held, and every other worker blocked."""
    import torch

    retain_freed_memory()  # a fresh interpreter (spawn): its own malloc, tuned like the parent's
    quiet_libraries()
    torch.set_num_threads(threads)
    spec = stage(stage_name)
    started = time.monotonic()
    try:
        built = build_stage(spec, options)
        built.ensure_ready()
        warm_up(built, spec, ctx, worker_id)
    except Exception as exc:  # noqa: BLE001 - reported: the router fails the start or the stage's rows
        outbox.send(("failed", worker_id, f"{type(exc).__name__}: {exc}"))
        return
    freeze_loaded_objects()  # for the worker's life: its stage is loaded and warm
    outbox.send(("ready", worker_id, time.monotonic() - started, built.models()))
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
        run_group([(spec, built)], batch, ctx, close=False)
        outbox.send(("done", Delivery(worker_id, batch, t0, time.monotonic(), time.process_time() - c0)))
        if stop:
            return
