"""A streaming worker process: load one stage once, warm up, then take batches from its inbox until told to stop.

The router (clearml_pipeline.streaming) starts these through clearml_pipeline.interrupts.child_entry, which has
them ignore SIGINT and die with the router before anything heavy is imported; the router owns shutdown and
accounts for every row a worker holds, so a worker keeps no state worth saving.
"""

from __future__ import annotations

import logging
import queue
import shutil
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import numpy as np

from clearml_pipeline.execution import run_group
from clearml_pipeline.logs import quiet_libraries
from clearml_pipeline.memory import freeze_loaded_objects, retain_freed_memory
from data_prep.samples import DEFAULT_OUTPUT as SAMPLES
from steps.results import ItemResult
from steps.stages import StageSpec, StepContext, build_stage, stage

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """A batch of finished rows from a worker, with the worker's clock readings for queue-wait accounting."""

    worker: int
    rows: list[ItemResult]
    started: float
    finished: float
    cpu_s: float


# As long as the real inputs, so that warming up on them reaches the real batches' memory and shapes: an English
# sentence of the length Whisper gives, and Chinese text of one whole piece (speech synthesis splits at 50 characters).
WARM_UP_EN = "Tomorrow morning we are going to take the early train to the coast and spend the day on the beach."
WARM_UP_ZH = "明天早上我们要坐早班火车去海边然后在沙滩上待一整天晚上再回到城里和朋友们一起去餐馆吃一顿丰盛的晚饭"
# Speech for speech translation's warm-up: two of the Spanish clips shipped in samples/, joined (5.9 s). Noise
# would not do: Silero VAD finds no speech in it, so Whisper never ran in the warm-up and the first real batch was
# its first call (measured, bench, fixtures, 2 cores: 20,000-24,000 page faults and 0.25 s of system time in the
# streaming run's first speech translation batch, 0.86-0.95 CPU-s against 0.63-0.70 for the next ones).
WARM_UP_SPEECH = (SAMPLES / "es_01_cafe.wav", SAMPLES / "es_02_tren.wav")


def warm_up_folder(out: Path, worker_id: int) -> Path:
    """Where a worker warms up (under OUT, removed after; the router removes it if the worker is stopped first)."""
    return out / f".warmup-{worker_id}"


def warm_up_clips(folder: Path, cuts: list[float]) -> list[Path]:
    """One clip per cut into `folder`: WARM_UP_SPEECH joined, cut to that fraction of its length (speech of
    different lengths, as a real batch has); noise where the samples are missing (a checkout without them)."""
    from resources.audio import WHISPER_SAMPLE_RATE, AudioError, load_audio, write_wav

    try:
        speech = np.concatenate([load_audio(path).samples for path in WARM_UP_SPEECH])
    except AudioError:
        log.warning("warm-up: %s missing; speech translation warms up on noise (no speech: Whisper stays cold)",
                    WARM_UP_SPEECH[0].parent)
        speech = np.random.default_rng(0).standard_normal(WHISPER_SAMPLE_RATE * 2).astype(np.float32) * 0.1
    clips = []
    for k, fraction in enumerate(cuts):
        clips.append(folder / f"warmup-{k}.wav")
        write_wav(clips[-1], speech[: round(len(speech) * fraction)], WHISPER_SAMPLE_RATE)
    return clips


def warm_up(built: Any, spec: StageSpec, ctx: StepContext, worker_id: int, rows: int = 1) -> None:
    """Run `rows` synthetic rows through the stage's whole path: Spanish speech, English and Chinese text.

    A worker warms up on a whole batch of long inputs of different lengths: the first real batch then finds its
    memory mapped and its shapes' oneDNN primitives built. Measured (bench, fixtures, 2 cores, 48 requests):
    after a warm-up on one short row, the first streaming speech synthesis batch took 2.85 CPU-s, against
    1.26-1.41 for the next ones, and the stage cost 0.188-0.195 CPU-s per item in the run against 0.168-0.173
    alone; after 8 long rows of one length, 2.0 CPU-s and 0.174-0.176 against 0.163-0.175; after 8 of different
    lengths, 0.173-0.178 against 0.172-0.182. The price: a cold start of 17-18 s instead of 13-14.

    In a folder of its own under OUT, removed after: a replacement warms up while the run writes OUT/audio, and
    no real item's file may be touched."""
    own = warm_up_folder(ctx.out, worker_id)
    own.mkdir(parents=True, exist_ok=True)
    n = max(1, rows)
    # From the whole input down to half of it: items of one batch stop at different steps, so the batch shrinks
    # through every size as real ones do (each size's shapes built here, not in the first real batch).
    cut = [1.0 - 0.5 * k / max(n - 1, 1) for k in range(n)]
    clips = warm_up_clips(own, cut)
    batch = [
        ItemResult(id=f"warmup-{k}", source=str(clip), en_text=WARM_UP_EN[: round(len(WARM_UP_EN) * f)],
                   zh_text=WARM_UP_ZH[: round(len(WARM_UP_ZH) * f)])
        for k, (f, clip) in enumerate(zip(cut, clips, strict=True))
    ]
    try:
        run_group([(spec, built)], batch, replace(ctx, out=own), close=False)
    finally:
        shutil.rmtree(own, ignore_errors=True)
    if failed := next((row for row in batch if not row.ok), None):
        raise RuntimeError(f"warm-up failed: {failed.error}")


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
        warm_up(built, spec, ctx, worker_id, rows=max_batch)
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
