"""What the streaming router keeps: a record per worker process, a run's statistics, and the error a stage's start
raises (clearml_pipeline/streaming.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from typing import Any

from steps.results import ItemResult
from steps.stages import StageSpec


class WorkerStartError(RuntimeError):
    """The workers of a stage could not start (their model failed to load, or they died warming up)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class Worker:
    id: int
    spec: StageSpec
    process: SpawnProcess
    inbox: Queue[Any]
    outbox: Connection  # the reading end of its pipe
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    failed: str | None = None  # its own report of why it could not start
    progress_at: float = 0.0  # when it last delivered, or began holding rows after holding none
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
    started: dict[str, int] = field(default_factory=dict)  # worker processes started per stage, replacements too
    timeouts: int = 0  # workers killed for holding rows past row_timeout_s
    interrupted: bool = False
