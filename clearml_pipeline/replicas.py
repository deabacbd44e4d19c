"""How many worker processes each stage gets in the streaming runtime, and how many threads each.

`--replicas auto` (the default) measures each stage's CPU-seconds per item on the run's first items and gives
the CPU stages cores in proportion, each its share rounded up to whole replicas, so that no stage starves the
next and no core idles (the first stage one more, for the run's start): seed 000 guessed ratios by hand.
Explicit ratios (`--replicas 1:1:2`) are used as given. Threads are a budget: the cores split among CPU
replicas (one each once they outnumber the cores), so replicas never stack thread pools on the same cores (two
threads for speech synthesis beside two one-thread stages on 2 cores: 0.24 CPU-s per item alone, 0.34 in the
run, 2.6x instead of 3.0x). Planned replicas must also fit the machine's memory (`fit_memory`): a replica of
speech translation on a CPU holds a whole Whisper, so the spare must not push a machine into swap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clearml_pipeline.config import RunConfig
from clearml_pipeline.memory import machine_memory
from clearml_pipeline.stream_records import Worker
from steps.options import option
from steps.stages import STAGES, StageSpec

SHARE_SLACK = 0.05  # of a core: a stage's share must pass its replicas by more than this to get another one
GIB = 1024**3
# What `--replica-memory auto` leaves free for everything else on the machine (and the workers' peaks); the
# option's help says "a tenth".
RESERVE_FRACTION, RESERVE_MIN = 0.10, GIB


@dataclass(frozen=True)
class StreamingOptions:
    replicas: str = option(
        "auto",
        "worker processes per stage in pipeline order, like 1:1:2; auto: sized from measured stage costs",
        check=lambda text: text == "auto" or parse_ratio(text, "--replicas"),
    )
    replica_threads: str = option(
        "auto",
        "torch threads per replica: auto (cores split among CPU replicas) or 2:1:1",
        check=lambda text: text == "auto" or parse_ratio(text, "--replica-threads"),
    )
    replica_memory: str = option(
        "auto",
        "auto replicas: the most memory all streaming workers together may take, in GiB; auto: what is available "
        "with the first workers loaded, less a tenth of the machine's memory (at least 1 GiB)",
        check=lambda text: memory_budget(text),
    )
    max_wait_ms: float = option(20.0, "dynamic batching: how long a worker waits to fill a batch")
    inbox_batches: int = option(
        1, "batches a worker holds, the one it works on included (the rest wait for whichever replica frees first); "
        "more: fetched ahead, less balanced at the end of a run"
    )
    retries: int = option(
        1, "times a row is retried after its worker died or was killed; also failed starts of a replacement in a row"
    )
    ready_timeout_s: float = option(600.0, "how long workers may take to load their models and warm up")
    row_timeout_s: float = option(
        1800.0,
        "a worker that holds rows this long without delivering any (hung, stopped) is killed and replaced, and "
        "its rows retried as for a dead worker",
    )


def parse_ratio(text: str, what: str) -> list[int]:
    names = [spec.name for spec in STAGES]
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) != len(names) or min(parts) < 1:
        example = ":".join(["1"] * (len(names) - 1) + ["2"])
        raise ValueError(
            f"{what} takes {len(names)} positive integers like {example} ({', '.join(names)}), got {text!r}"
        )
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
    """Replicas so that no stage starves the next and no core idles for want of a process: each CPU stage gets
    its share of the cores (cores x its CPU-seconds per item / those of every CPU stage), rounded up to whole
    single-threaded replicas (and at least one). A stage whose share is more than its whole cores can then take
    what the others leave idle, so the processes may outnumber the cores; the kernel shares the cores out.

    Measured on 2 cores (bench, fixtures, Intel Xeon, 48 requests; speech synthesis's share 1.1): 1:1:2 streamed
    5.09 items/s on average against 4.74 for 1:1:1 (144 requests: 6.33 against 5.42), although speech synthesis
    cost more CPU per item in the run (0.175-0.201 against 0.158-0.172 alone); at a share of 1.0, 1:1:1 streamed
    5 % more (benchmarks/README.md, 2026-12-06 morning). Rounding up once ran slower
    (3.5-4.1 items/s) because two replicas split every upstream batch in two; the router now keeps a batch on one
    replica. `SHARE_SLACK`: a share must pass whole cores by more than that to add a process (measured: at 1.0
    the second process cost 5 %, at 1.1 it paid 7-17 %).
    GPU stages keep one replica each (they share the device through batching, not stacked processes).

    The pipeline's first stage, on a CPU, gets one replica more than its share (while it has fewer than the
    cores): a run starts with every request waiting there and nothing for the later stages to do, so with one
    replica on 2 cores the other core idled for the whole first batch (0.8 s of a 9 s bench run). Measured (bench,
    fixtures, 2 cores, Intel Xeon, alternating): 2:1:2 against the 1:1:2 this gave before, bottleneck efficiency
    0.83-0.96 (mean 0.90, 4 runs) against 0.78-0.86 (mean 0.84, 5 runs) at 48 requests, 0.92 and 0.94 against 0.92
    and 0.86 at 144, although speech translation then cost 0.098-0.110 CPU-s per item in the run against
    0.095-0.103 with one replica (benchmarks/README.md, 2026-12-06 night). The spare costs a model load (cold
    start 18-20 s against 16-17 s) and its memory (fit_memory takes it back where memory is short); `--replicas`
    given by hand has none.
    """
    cpu_stages = [s.name for s in STAGES if not gpu[s.name]]
    total = sum(cpu_s_per_item[name] for name in cpu_stages) or 1.0
    replicas = {s.name: 1 for s in STAGES}
    for name in cpu_stages:
        share = cores * cpu_s_per_item[name] / total
        replicas[name] = max(1, math.ceil(share - SHARE_SLACK))
    first = STAGES[0].name
    if not gpu[first] and replicas[first] < cores:  # the spare for the run's fill
        replicas[first] += 1
    return replicas


def thread_budget(replicas: dict[str, int], gpu: dict[str, bool], cores: int) -> dict[str, int]:
    """Split the cores among CPU replicas (at least one thread each); GPU stages drive the device with one."""
    cpu_replicas = sum(n for name, n in replicas.items() if not gpu[name]) or 1
    share = max(1, cores // cpu_replicas)
    return {name: 1 if gpu[name] else share for name in replicas}


@dataclass(frozen=True)
class MemoryFit:
    """The memory the workers may take together, and one replica's of each stage (a loaded worker's own
    memory, its unique set: the pages no other process shares), in bytes; `source` says where the budget
    came from, for the summary."""

    per_replica: dict[str, int]
    budget: int
    source: str


def memory_budget(replica_memory: str) -> float | None:
    """`--replica-memory` in GiB, None for auto; a bad value stops here, before any worker starts."""
    if replica_memory.strip().lower() == "auto":
        return None
    try:
        gib = float(replica_memory)
    except ValueError:
        gib = -1.0
    if not gib >= 0:  # NaN too
        raise ValueError(f"--replica-memory takes auto or a number of GiB >= 0, got {replica_memory!r}")
    return gib


# What the caller measured: each stage's memory per replica (bytes), and how many replicas of each are loaded now.
MemoryReading = tuple[dict[str, int], dict[str, int]]


def memory_fit(gib: float | None, per_replica: dict[str, int], running: dict[str, int]) -> MemoryFit:
    """The budget for `--replica-memory` (memory_budget's reading of it): a number of GiB as given, or auto (None):
    the memory available now (the machine's, or its memory cgroup's where that is less:
    clearml_pipeline.memory.machine_memory; the `running` workers loaded, so what they hold counts as theirs
    again) less the reserve."""
    if gib is not None:
        return MemoryFit(per_replica, int(gib * GIB), f"--replica-memory {gib:g} GiB")
    available, total = machine_memory()
    reserve = max(RESERVE_MIN, int(RESERVE_FRACTION * total))
    held = sum(n * per_replica.get(name, 0) for name, n in running.items())
    source = f"{available / GIB:.1f} GiB available beside the loaded workers, {reserve / GIB:.1f} GiB kept free"
    return MemoryFit(per_replica, available + held - reserve, source)


def worker_memory(workers: Iterable[Worker]) -> dict[str, int]:
    """The largest unique set (bytes) of each stage's ready workers; a process that has gone is left out, and
    where the unique set cannot be read, the resident set stands in."""
    import psutil

    sizes: dict[str, int] = {}
    for worker in workers:
        if not worker.ready or worker.process.pid is None:
            continue
        name = worker.spec.name
        try:
            process = psutil.Process(worker.process.pid)
            try:
                size = process.memory_full_info().uss
            except psutil.AccessDenied:
                size = process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        sizes[name] = max(sizes.get(name, 0), size)
    return sizes


def fit_memory(replicas: dict[str, int], fit: MemoryFit) -> tuple[dict[str, int], str]:
    """The replicas with as many taken away as their memory needs to fit the budget, and why (empty when they
    fit): each time from the stage whose replica takes the most memory (speech translation's spare, when it holds
    a Whisper), never below one replica per stage (the run needs each stage once, whatever the budget)."""
    capped = dict(replicas)

    def need() -> int:
        return sum(n * fit.per_replica.get(name, 0) for name, n in capped.items())

    while need() > fit.budget and (extra := [name for name, n in capped.items() if n > 1]):
        capped[max(extra, key=lambda name: fit.per_replica.get(name, 0))] -= 1
    if capped == replicas:
        return capped, ""
    sizes = ", ".join(f"{name} {fit.per_replica.get(name, 0) / GIB:.2f}" for name in replicas)
    return capped, f"; fewer to fit the memory ({fit.source}; GiB per replica: {sizes})"


def plan(
    options: StreamingOptions,
    gpu: dict[str, bool],
    cores: int,
    measure_cpu_s: Callable[[], dict[str, float]],
    memory: Callable[[], MemoryReading] | None = None,
) -> tuple[dict[str, int], dict[str, int], str]:
    """Replicas and threads per stage from the options, and why those replicas (for the summary);
    `measure_cpu_s` is only called for `auto` replicas, and then `memory` (read after it: the workers it
    measured are loaded), whose reading auto replicas must fit within `--replica-memory`. Replicas given by
    hand are used as given."""
    names = [spec.name for spec in STAGES]
    gib = memory_budget(options.replica_memory)
    if options.replicas == "auto":
        costs = measure_cpu_s()
        replicas = auto_replicas(costs, gpu, cores)
        why = f"auto: {cores} cores shared by CPU-seconds per item " + ", ".join(
            f"{name} {costs.get(name, 0.0):.3f}" + (" (GPU)" if gpu[name] else "") for name in names
        )
        if memory is not None:
            replicas, capped = fit_memory(replicas, memory_fit(gib, *memory()))
            why += capped
    else:
        replicas = dict(zip(names, parse_ratio(options.replicas, "--replicas"), strict=True))
        why = f"given: --replicas {options.replicas}"
    if options.replica_threads == "auto":
        threads = thread_budget(replicas, gpu, cores)
    else:
        threads = dict(zip(names, parse_ratio(options.replica_threads, "--replica-threads"), strict=True))
    return replicas, threads, why
