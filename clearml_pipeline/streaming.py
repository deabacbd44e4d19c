"""The streaming runtime's router: each stage in its own worker processes, rows routed between them from here.

Why this shape (seed 000's open problems, and issue 12's faults):
- processes come from `multiprocessing.get_context("spawn")`, never a global `set_start_method`, so importing
  this module from anywhere ("context has already been set") cannot break; each starts through
  interrupts.child_entry (SIGINT ignored, dies with the router), and runs stream_worker.worker_main;
- every worker loads its model once and warms up before the clock starts, all workers in parallel; cold start
  is measured on its own, apart from steady-state throughput; `scale` keeps warm workers between runs;
- each replica gets a thread budget (torch intra-op threads) so that replicas share the cores instead of
  oversubscribing them, the likely reason 1:1:2 ran slower than 1:1:1 in the seed;
- the router knows which rows each worker holds, so a worker that dies, or holds rows past `row_timeout_s`
  with no result (stopped, hung: it is killed), loses nothing: its rows are retried on a live replica (a
  replacement is started) or, past the retry budget, become error rows;
- a replacement that dies or fails while warming up is noticed like any other death; after `retries` failed
  starts in a row, a stage with no live worker left fails its rows with the reason, and the run goes on: the
  finished rows are kept and every row is returned;
- a worker holds a batch at a time (clearml_pipeline.dispatch: the rest wait here for whichever replica frees
  first), and workers batch dynamically: they take what is queued, up to the stage's batch size, waiting at most
  `max_wait_ms` for more;
- each worker reports on a pipe of its own: a worker killed while writing to a queue shared by all would keep
  that queue's lock, and every other worker would block on it for ever;
- on Ctrl-C the router first reads the batches already waiting in the pipes, so a row finished before the
  signal is written ok, not interrupted;
- the router's loops and close() run with the signal deferred (interrupts.deferred): it is raised where the
  loop checks, never inside a queue's put, a pipe's read or a worker's start, and close() always ends with
  every worker stopped and every queue released, or the interpreter's exit waits on them for ever.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from typing import Any

from clearml_pipeline.config import RunConfig
from clearml_pipeline.dispatch import choose
from clearml_pipeline.execution import ResultsSink, mark_interrupted
from clearml_pipeline.interrupts import check_interrupt, child_entry, deferred
from clearml_pipeline.replicas import StreamingOptions
from clearml_pipeline.stream_records import StreamStats, Worker, WorkerStartError
from clearml_pipeline.stream_worker import Delivery, warm_up, warm_up_folder, worker_main
from steps.base import ModelInfo
from steps.results import ItemResult
from steps.stages import STAGES, StageSpec, StepContext, finish

SPAWN: SpawnContext = __import__("multiprocessing").get_context("spawn")
DRAIN_PASSES = 50  # reads of every pipe after an interrupt, at most
__all__ = ["SPAWN", "StreamStats", "StreamingRunner", "Worker", "WorkerStartError", "warm_up"]


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
        self.workers: dict[int, Worker] = {}
        self.next_id = 0
        self.stats = StreamStats()
        self.models: dict[str, list[ModelInfo]] = {}  # what the workers loaded, per stage
        self.start_failures: dict[str, int] = {}  # failed starts in a row, per stage
        self.given_up: dict[str, str] = {}  # stages that have no worker and will get none: why
        self.finished: list[ItemResult] = []  # rows finished since the run loop last looked
        self.closed = False

    # -- workers ---------------------------------------------------------------------------------------------
    def _spawn(self, spec: StageSpec) -> Worker:
        options = self.config.stage_options(spec)
        # --batch-size means the same in every runtime: the most rows one stage call takes.
        max_batch = max(1, self.config.runner.batch_size)
        inbox: Queue[Any] = SPAWN.Queue(maxsize=max_batch * max(1, self.options.inbox_batches))
        reader, writer = SPAWN.Pipe(duplex=False)
        worker_id, self.next_id = self.next_id, self.next_id + 1
        args = (worker_id, spec.name, options, self.ctx, self.threads[spec.name], max_batch,
                self.options.max_wait_ms / 1000)
        process = SPAWN.Process(
            target=child_entry,
            args=(pickle.dumps((worker_main, args)), os.getpid(), inbox, writer),
            name=f"{spec.prefix}-{worker_id}",
            daemon=True,
        )
        process.start()
        writer.close()  # the worker holds the only writing end: its death is an end of file here
        worker = Worker(worker_id, spec, process, inbox, reader)
        self.workers[worker_id] = worker
        self.stats.started[spec.name] = self.stats.started.get(spec.name, 0) + 1
        return worker

    def start(self) -> float:
        """Start every replica and wait until all are warm; returns the cold start in seconds."""
        started = time.monotonic()
        self.ctx.out.mkdir(parents=True, exist_ok=True)
        with deferred():  # a process started is always a worker recorded, which close() will stop
            for spec in self.stages:
                for _ in range(self.replicas[spec.name]):
                    self._spawn(spec)
            self._wait_ready(started)
        self.stats.cold_start_s = time.monotonic() - started
        return self.stats.cold_start_s

    def scale(self, replicas: dict[str, int], threads: dict[str, int]) -> None:
        """Between runs, make the workers `replicas` per stage at `threads` each, keeping the warm ones that fit;
        new ones join the next run once warm (nothing waits here). `--replicas auto` plans after a first run through
        one worker per stage, and closing those loaded every model twice (fixtures, 2 cores: a 5-clip run took 41 s,
        18 s now). A worker whose thread budget changes is replaced: its torch pool is sized once."""
        with deferred():
            # Those still loading go first, then the newest: the warmest are kept.
            for worker in sorted(self.workers.values(), key=lambda w: (w.ready, -w.id)):
                extra = sum(w.spec is worker.spec for w in self.workers.values()) > replicas[worker.spec.name]
                if extra or threads[worker.spec.name] != self.threads[worker.spec.name]:
                    self._stop(worker)
            self.replicas, self.threads = dict(replicas), dict(threads)
            for spec in self.stages:
                for _ in range(replicas[spec.name] - sum(w.spec is spec for w in self.workers.values())):
                    self._spawn(spec)

    def _stop(self, worker: Worker) -> None:
        """Stop a worker that holds no rows (between runs) and forget it: a ready one is asked to exit, one still
        warming up is terminated (it reads its inbox only once warm); SIGKILL if it has not exited within 10 s."""
        if not worker.ready:
            worker.process.terminate()
        with contextlib.suppress(Exception):
            worker.inbox.put_nowait(None)
        worker.process.join(timeout=10)
        if worker.process.is_alive():
            self._kill(worker)
        self._release(worker)
        del self.workers[worker.id]

    def _release(self, worker: Worker) -> None:
        """An exited worker's inbox and pipe let go, its warm-up folder removed. The inbox's feeder thread ends here,
        not at exit, where it was cut off between unlinking a semaphore and unregistering it ("leaked semaphore").
        Exit code 0: the worker read up to its stop message, so the feeder is idle; a killed one's may be blocked."""
        worker.inbox.close()
        if worker.process.exitcode == 0:
            worker.inbox.join_thread()
        else:
            worker.inbox.cancel_join_thread()
        worker.outbox.close()
        shutil.rmtree(warm_up_folder(self.ctx.out, worker.id), ignore_errors=True)

    def _wait_ready(self, started: float) -> None:
        while not all(w.ready for w in self.workers.values()):
            check_interrupt()
            if time.monotonic() - started > self.options.ready_timeout_s:
                late = next(w for w in self.workers.values() if not w.ready)
                raise WorkerStartError(late.spec.name, f"workers not ready after {self.options.ready_timeout_s:.0f} s")
            self._receive(timeout=0.5)
            for worker in self.workers.values():
                if not worker.ready and (worker.failed or not worker.process.is_alive()):
                    raise WorkerStartError(worker.spec.name, self._start_failure(worker))

    @staticmethod
    def _start_failure(worker: Worker) -> str:
        if worker.failed:
            return f"worker {worker.process.name} could not start: {worker.failed}"
        return f"worker {worker.process.name} exited during start (exit code {worker.process.exitcode})"

    def close(self) -> None:
        """Stop every worker: a ready one finishes its batch and exits; one still warming up, or any after an
        interrupt (what it would deliver is not waited for), is terminated at once; SIGKILL for the stubborn.
        A signal meanwhile is raised once all of that is done (bounded: 10 s, then 5 s per stubborn worker); a
        second call does nothing."""
        if self.closed:
            return
        self.closed = True
        with deferred():
            for worker in self.workers.values():
                if self.stats.interrupted or not worker.ready:
                    worker.process.terminate()
                with contextlib.suppress(Exception):
                    worker.inbox.put_nowait(None)
            deadline = time.monotonic() + 10
            for worker in self.workers.values():
                worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
                if worker.process.is_alive():
                    worker.process.terminate()
                    worker.process.join(timeout=5)
                if worker.process.is_alive():
                    worker.process.kill()  # also ends a stopped (SIGSTOP) worker, which SIGTERM would not
                    worker.process.join(timeout=5)
            for worker in self.workers.values():
                self._release(worker)

    # -- routing ---------------------------------------------------------------------------------------------
    def run(
        self,
        rows: Sequence[ItemResult],
        arrivals: Sequence[float] | None = None,
        on_progress: Callable[[int], None] | None = None,
        sink: ResultsSink | None = None,
    ) -> list[ItemResult]:
        """Stream `rows` through every stage; `arrivals` (seconds from start) makes the load open-loop.

        Returns every row, in input order; `on_progress` is told how many rows finished since its last call, and
        `sink` gets the finished rows as they finish (a crash of this process keeps them)."""
        order = [row.id for row in rows]
        done: dict[str, ItemResult] = {}
        waiting = deque(zip(rows, arrivals or [0.0] * len(rows), strict=True))
        pending: dict[str, deque[ItemResult]] = {spec.name: deque() for spec in self.stages}
        self.queued_at: dict[str, float] = {}  # when each row began waiting for its current stage
        self.attempts: dict[str, int] = {}
        self.arrived: dict[str, float] = {}
        start = time.monotonic()
        try:
            with deferred():  # raised at the loop's top only: never inside a queue's put or a pipe's read
                while len(done) < len(rows):
                    check_interrupt()
                    now = time.monotonic() - start
                    while waiting and waiting[0][1] <= now:
                        row, _ = waiting.popleft()
                        self.arrived[row.id] = self.queued_at[row.id] = time.monotonic()
                        pending[self.stages[0].name].append(row)
                    self._dispatch(pending)
                    for row, stage_index in self._receive(timeout=0.01):
                        self._advance(row, stage_index, pending)
                    self._reap(pending)
                    self._fail_given_up(pending)
                    self._flush(done, sink, on_progress)
        except KeyboardInterrupt:
            self.stats.interrupted = True
            self._drain(pending)
            self._flush(done, sink, on_progress)
            rest = [row for row in rows if row.id not in done]
            mark_interrupted(rest, "run interrupted before this item finished")
            done.update((row.id, row) for row in rest)
            if sink is not None:
                sink.append(rest)
        self.stats.wall_s = time.monotonic() - start
        return [done[item_id] for item_id in order]

    def _finish(self, row: ItemResult) -> None:
        row.latency_s["end_to_end"] = time.monotonic() - self.arrived.get(row.id, time.monotonic())
        self.finished.append(finish(row))

    def _flush(
        self, done: dict[str, ItemResult], sink: ResultsSink | None, on_progress: Callable[[int], None] | None
    ) -> None:
        rows, self.finished = self.finished, []
        if not rows:
            return
        done.update((row.id, row) for row in rows)
        if sink is not None:
            sink.append(rows)
        if on_progress:
            on_progress(len(rows))

    def _dispatch(self, pending: dict[str, deque[ItemResult]]) -> None:
        """Waiting rows to ready workers, as clearml_pipeline.dispatch chooses."""
        size = max(1, self.config.runner.batch_size)
        most = size * max(1, self.options.inbox_batches)
        for spec in self.stages:
            ready = [w for w in self.workers.values() if w.spec is spec and w.ready and w.process.is_alive()]
            worker: Worker | None = None
            while pending[spec.name] and (worker := choose(ready, worker, size, most)):
                row = pending[spec.name][0]
                try:
                    worker.inbox.put_nowait(row)
                except queue.Full:
                    ready.remove(worker)
                    worker = None
                    continue
                pending[spec.name].popleft()
                if not worker.held:  # the deadline counts from when it has something to do
                    worker.progress_at = time.monotonic()
                worker.held[row.id] = row

    def _receive(self, timeout: float) -> list[tuple[ItemResult, int]]:
        """Read worker messages (one per worker with something to say, waiting up to `timeout` for any); returns
        finished rows with the index of the stage that finished them."""
        finished: list[tuple[ItemResult, int]] = []
        by_pipe = self._readable_pipes()
        for pipe in wait(list(by_pipe), timeout):
            worker = by_pipe[pipe]  # type: ignore[index]
            try:
                kind, *payload = worker.outbox.recv()
            except (EOFError, OSError):  # it exited (or died mid-message): _reap retires it
                worker.outbox.close()
                continue
            if kind == "ready":
                worker.ready = True
                self.start_failures[worker.spec.name] = 0
                self.models[worker.spec.name] = payload[2]
            elif kind == "failed":
                worker.failed = payload[1]  # _reap (or start) replaces it, or gives its stage up
            elif kind == "done":
                finished.extend(self._delivered(worker, payload[0]))
        return finished

    def _readable_pipes(self) -> dict[Connection, Worker]:
        return {w.outbox: w for w in self.workers.values() if not w.outbox.closed}

    def _drain(self, pending: dict[str, deque[ItemResult]]) -> None:
        """After an interrupt: take the batches that workers had already put in their pipes, so that a row finished
        before the signal is written ok, not interrupted. Bounded: a worker still busy may keep delivering."""
        for _ in range(DRAIN_PASSES):
            if not wait(list(self._readable_pipes()), 0):
                return
            for row, stage_index in self._receive(timeout=0):
                self._advance(row, stage_index, pending)

    def _delivered(self, worker: Worker, delivery: Delivery) -> list[tuple[ItemResult, int]]:
        name = worker.spec.name
        worker.progress_at = time.monotonic()
        self.stats.batch_sizes.setdefault(name, []).append(len(delivery.rows))
        self.stats.cpu_s[name] = self.stats.cpu_s.get(name, 0.0) + delivery.cpu_s
        self.stats.busy_s[name] = self.stats.busy_s.get(name, 0.0) + delivery.finished - delivery.started
        finished = []
        for row in delivery.rows:
            if worker.held.pop(row.id, None) is None:
                continue  # not its row any more
            wait_s = max(0.0, delivery.started - self.queued_at.get(row.id, delivery.started))
            self.stats.queue_wait_s.setdefault(name, []).append(wait_s)
            row.latency_s[f"{name}_queue"] = wait_s
            finished.append((row, self.stages.index(worker.spec)))
        return finished

    def _advance(self, row: ItemResult, stage_index: int, pending: dict[str, deque[ItemResult]]) -> None:
        last = stage_index == len(self.stages) - 1
        if last or not row.ok or row.no_speech:
            self._finish(row)
        else:
            self.queued_at[row.id] = time.monotonic()
            pending[self.stages[stage_index + 1].name].append(row)

    def _reap(self, pending: dict[str, deque[ItemResult]]) -> None:
        """Dead, failed or overdue workers are retired: their rows go back to the front of their stage's queue (or
        fail, past the retry budget), and a replacement starts unless the stage's starts keep failing."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            why = self._why_retire(worker, now)
            if why is None:
                continue
            del self.workers[worker.id]
            self._release(worker)
            self.stats.restarts += 1
            name = worker.spec.name
            for row in reversed(list(worker.held.values())):
                self.attempts[row.id] = self.attempts.get(row.id, 0) + 1
                if self.attempts[row.id] > self.options.retries:
                    row.fail(name, f"{why} while processing this item, {self.attempts[row.id]} times")
                    self._finish(row)
                else:
                    pending[name].appendleft(row)
            if not worker.ready:
                self.start_failures[name] = self.start_failures.get(name, 0) + 1
            if self.start_failures.get(name, 0) <= self.options.retries:
                self._spawn(worker.spec)
            elif not any(w.spec is worker.spec for w in self.workers.values()):
                self.given_up[name] = why

    def _why_retire(self, worker: Worker, now: float) -> str | None:
        """Why `worker` must go (None: it stays). An overdue or stuck one is killed here."""
        if worker.failed is not None:
            worker.process.join(timeout=5)
            return self._start_failure(worker)
        if not worker.process.is_alive():
            if not worker.ready:
                return self._start_failure(worker)
            return f"worker process died (exit code {worker.process.exitcode})"
        if worker.ready and worker.held and now - worker.progress_at > self.options.row_timeout_s:
            self._kill(worker)
            self.stats.timeouts += 1
            return (f"worker process killed: it held rows for {now - worker.progress_at:.0f} s with no result "
                    f"(--row-timeout-s {self.options.row_timeout_s:g})")
        if not worker.ready and now - worker.started > self.options.ready_timeout_s:
            self._kill(worker)
            return f"worker {worker.process.name} not ready after {self.options.ready_timeout_s:.0f} s"
        return None

    @staticmethod
    def _kill(worker: Worker) -> None:
        worker.process.kill()  # SIGKILL: also ends a stopped (SIGSTOP) process
        worker.process.join(timeout=5)

    def _fail_given_up(self, pending: dict[str, deque[ItemResult]]) -> None:
        """Rows waiting for a stage that has no worker and will get none fail, saying why; the run goes on."""
        for name, why in self.given_up.items():
            while pending[name]:
                row = pending[name].popleft()
                row.fail(name, f"not processed: no {name} worker could be started ({why})")
                self._finish(row)
