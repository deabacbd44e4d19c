"""The stage contract shared by speech translation, machine translation and speech synthesis.

A stage is built from its options dataclass, loads its model once in `setup()`, and maps a batch of typed
inputs to typed outputs in `process()`. `run()` wraps `process()` with timing and per-item error isolation:
if a batch fails, its items are retried one by one so that one bad item never takes the batch down.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

log = logging.getLogger(__name__)


class ItemError(Exception):
    """A failure that belongs to one input item (unsayable text, no speech ...), not to the stage."""


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for the run summary: the id asked for and the exact revision that was used."""

    role: str
    model_id: str
    revision: str
    path: str = ""


@dataclass
class StageResult(Generic[Out]):
    """One item's outcome in one stage. `latency_s` is the wall time of the batch the item rode in."""

    output: Out | None
    error: str | None
    latency_s: float
    batch_size: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StageStats:
    """Running totals for throughput: items done and seconds spent inside `process()`."""

    items: int = 0
    errors: int = 0
    busy_s: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def items_per_s(self) -> float:
        return self.items / self.busy_s if self.busy_s > 0 else 0.0


class Stage(ABC, Generic[In, Out]):
    """Base class of every backend of every stage."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.stats = StageStats()
        self._ready = False

    @abstractmethod
    def setup(self) -> None:
        """Load models; called once before the first batch."""

    @abstractmethod
    def process(self, inputs: Sequence[In]) -> list[Out | ItemError]:
        """Map a batch of inputs to outputs, one per input, in order; an ItemError marks a failed item."""

    @abstractmethod
    def models(self) -> list[ModelInfo]:
        """The models this stage loaded (valid after setup)."""

    def ensure_ready(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def run(self, inputs: Sequence[In]) -> list[StageResult[Out]]:
        """Process a batch with timing; isolate failures to the items that cause them."""
        self.ensure_ready()
        if not inputs:
            return []
        start = time.perf_counter()
        try:
            outputs = self.process(inputs)
            if len(outputs) != len(inputs):
                raise RuntimeError(f"{self.name} returned {len(outputs)} outputs for {len(inputs)} inputs")
        except Exception as exc:  # noqa: BLE001 - any backend failure is isolated per item below
            if len(inputs) == 1:
                elapsed = time.perf_counter() - start
                return [self._record(StageResult(None, _describe(exc), elapsed))]
            log.warning("%s: batch of %d failed (%s); retrying items one by one", self.name, len(inputs), exc)
            return [result for item in inputs for result in self.run([item])]
        elapsed = time.perf_counter() - start
        return [
            self._record(
                StageResult(None, _describe(out), elapsed, len(inputs))
                if isinstance(out, Exception)
                else StageResult(out, None, elapsed, len(inputs))
            )
            for out in outputs
        ]

    def _record(self, result: StageResult[Out]) -> StageResult[Out]:
        # Busy time is counted once per batch: each item carries 1/batch_size of it.
        self.stats.items += 1
        self.stats.errors += 0 if result.ok else 1
        self.stats.busy_s += result.latency_s / max(result.batch_size, 1)
        self.stats.latencies.append(result.latency_s)
        return result


def _describe(exc: BaseException) -> str:
    """A one-line message for results.jsonl: the exception's own text, typed when it is not ours."""
    if isinstance(exc, ItemError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
