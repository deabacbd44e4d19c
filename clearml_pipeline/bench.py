"""Throughput experiment: the streaming runtime against the seed-style sequential baseline, same inputs, same run.

Three measurements, each after its models are loaded and warm:
1. baseline: one item at a time through the three stages, batch 1, in one process (how seed 000 ran);
2. standalone: each stage alone in one worker at its thread budget, batching on: its capacity per replica and
   the CPU-seconds it needs per item;
3. streaming: the whole pipeline with the chosen replicas.
`speedup` = streaming / baseline throughput. `bottleneck_efficiency` = streaming throughput / the most this
hardware allows for the configuration: the smaller of the slowest stage's capacity (standalone rate x replicas)
and, where stages share CPU cores, cores / the CPU-seconds per item all stages need together.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clearml_pipeline.config import RunConfig
from clearml_pipeline.execution import ResultsSink, run_groups
from clearml_pipeline.figures import percentiles
from clearml_pipeline.inputs import InputItem
from clearml_pipeline.replicas import (
    GIB,
    MemoryReading,
    StreamingOptions,
    available_cores,
    is_gpu_stage,
    plan,
    worker_memory,
)
from clearml_pipeline.results import versions
from clearml_pipeline.streaming import StreamingRunner, StreamStats, warm_up
from steps.options import option
from steps.results import ItemResult, write_rows
from steps.stages import STAGES, StageSpec, StepContext, build_stage

if TYPE_CHECKING:
    from clearml_pipeline.tracking import Tracker


@dataclass(frozen=True)
class BenchOptions:
    requests: int = option(24, "requests sent, cycling over the inputs")
    rate: float = option(0.0, "open-loop arrivals per second; 0: closed loop (every request queued at the start)")
    # Short samples gave standalone rates 40% off from run to run.
    standalone_items: int = option(0, "items per stage for the standalone rates; 0: every request")
    tracking: str = option("offline", "the bench's ClearML task: offline (session under OUT/clearml), server, none")
    queue: str = option("", "with --tracking server: enqueue the bench on QUEUE; an agent there runs it")


@dataclass
class StageRate:
    items_per_s: float
    cpu_s_per_item: float
    threads: int
    memory_bytes: int = 0  # the worker's unique set, read before it stopped


def expand(items: list[InputItem], n: int) -> list[ItemResult]:
    """`n` requests cycling over the inputs (ids made unique)."""
    rows = []
    for k in range(n):
        item = items[k % len(items)]
        rows.append(ItemResult(f"{item.id}-r{k // len(items)}" if k >= len(items) else item.id, str(item.path)))
    return rows


def sequential(config: RunConfig, rows: list[ItemResult], ctx: StepContext) -> tuple[list[ItemResult], float]:
    """The seed-style baseline: batch 1, one item at a time through all stages, in this process."""
    built = []
    for spec in STAGES:
        options = config.stage_options(spec)
        batch_one = {"batch_size": 1} if "batch_size" in {f.name for f in fields(options)} else {}
        built.append((spec, build_stage(spec, config.updated({spec.name: batch_one}).stage_options(spec))))
        built[-1][1].ensure_ready()
    ctx.out.mkdir(parents=True, exist_ok=True)
    for spec, stage in built:
        warm_up(stage, spec, ctx, worker_id=0)
    start = time.monotonic()
    with ResultsSink(ctx.out / "results.jsonl") as sink:
        if run_groups(built, rows, ctx, sink, group_size=1):
            raise KeyboardInterrupt  # a bench interrupted measures nothing; its caller writes the rows
    return rows, time.monotonic() - start


def stage_inputs(spec: StageSpec, done: list[ItemResult]) -> list[ItemResult]:
    """Rows that got to `spec` in the baseline and that it took, reset to what they held when they arrived:
    without what this stage and the ones after it wrote, and without latencies."""
    later = STAGES[STAGES.index(spec) :]
    cleared = {name for s in later for name in s.writes}
    blank = ItemResult("", "")
    fresh = []
    for row in done:
        if spec.name not in row.latency_s:
            continue
        kept = {f.name: getattr(row, f.name) for f in fields(row) if f.name not in cleared}
        fresh.append(ItemResult(**{**kept, **{name: getattr(blank, name) for name in cleared},
                                   "status": "ok", "error": None, "stage": None, "latency_s": {}}))
    return fresh


def standalone(
    config: RunConfig,
    sopts: StreamingOptions,
    ctx: StepContext,
    spec: StageSpec,
    rows: list[ItemResult],
    threads: int,
    warmup: list[ItemResult] | None = None,
) -> StageRate:
    """The stage alone in one worker at `threads`: its rate and CPU-seconds per item over `rows`, after an
    untimed pass over `warmup` (the same inputs: their shapes seen, as in a streaming run that has been going)."""
    runner = StreamingRunner(config, sopts, ctx, {spec.name: 1}, {spec.name: threads}, stages=[spec])
    try:
        runner.start()
        if warmup:
            runner.run(warmup)
            runner.stats = StreamStats()
        runner.run(rows)
        memory = worker_memory(runner.workers.values()).get(spec.name, 0)
    finally:
        runner.close()
    if runner.stats.interrupted:
        raise KeyboardInterrupt
    n = max(len(rows), 1)
    return StageRate(len(rows) / runner.stats.wall_s, runner.stats.cpu_s.get(spec.name, 0.0) / n, threads, memory)


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": available_cores()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_bench(
    config: RunConfig, sopts: StreamingOptions, bopts: BenchOptions, items: list[InputItem], out: Path
) -> dict[str, Any]:
    cores = available_cores()
    ctx = StepContext(out, config.runner.max_audio_seconds)
    gpu = {spec.name: is_gpu_stage(config, spec) for spec in STAGES}

    baseline_rows, baseline_wall = sequential(
        config, expand(items, bopts.requests), StepContext(out / "baseline", config.runner.max_audio_seconds)
    )
    baseline_rate = len(baseline_rows) / baseline_wall
    sample = baseline_rows[: bopts.standalone_items or None]

    probed: dict[str, StageRate] = {}

    def probe() -> dict[str, float]:
        # Cost per item at one thread, on a few items, measured on their second pass: the first call at each new
        # shape builds oneDNN primitives (measured: speech synthesis 0.70 CPU-s per item cold, 0.17 warm).
        few = sample[:4]
        for spec in STAGES:
            probed[spec.name] = standalone(
                config, sopts, ctx, spec, stage_inputs(spec, few), 1, warmup=stage_inputs(spec, few)
            )
        return {name: rate.cpu_s_per_item for name, rate in probed.items()}

    def memory() -> MemoryReading:  # the probe's workers have stopped: every replica's memory is still to be taken
        return {name: rate.memory_bytes for name, rate in probed.items()}, {}

    replicas, threads, why = plan(sopts, gpu, cores, probe, memory)
    rates = {
        spec.name: standalone(config, sopts, ctx, spec, stage_inputs(spec, sample), threads[spec.name])
        for spec in STAGES
    }
    runner = StreamingRunner(config, sopts, ctx, replicas, threads)
    try:
        cold_start = runner.start()
        rows = expand(items, bopts.requests)
        arrivals = [k / bopts.rate for k in range(len(rows))] if bopts.rate > 0 else None
        with ResultsSink(out / "results.jsonl") as sink:  # every request's row, as in `run`
            rows = runner.run(rows, arrivals, sink=sink)
    finally:
        runner.close()
    write_rows(out / "results.jsonl", rows)  # in request order
    if runner.stats.interrupted:
        raise KeyboardInterrupt
    stream_rate = len(rows) / runner.stats.wall_s

    capacity = {name: rate.items_per_s * replicas[name] for name, rate in rates.items()}
    cpu_per_item = sum(rate.cpu_s_per_item for rate in rates.values())
    cpu_bound = cores / cpu_per_item if cpu_per_item > 0 else float("inf")
    ceiling = min(min(capacity.values()), cpu_bound)
    report = {
        "speedup": stream_rate / baseline_rate,
        "bottleneck_efficiency": stream_rate / ceiling,
        "end_to_end_items_per_s": stream_rate,
        "baseline_items_per_s": baseline_rate,
        "ceiling_items_per_s": ceiling,
        "cpu_bound_items_per_s": cpu_bound if cpu_bound != float("inf") else None,
        "cold_start_s": cold_start,
        "requests": len(rows),
        "ok": sum(r.ok for r in rows),
        "errors": sum(not r.ok for r in rows),
        "open_loop_rate": bopts.rate or None,
        "replicas": replicas,
        "replicas_chosen_by": why,
        "threads": threads,
        "end_to_end_latency_s": percentiles([r.latency_s["end_to_end"] for r in rows if "end_to_end" in r.latency_s]),
        "baseline_latency_s": percentiles([r.latency_s["total"] for r in baseline_rows]),
        "stages": {
            spec.name: {
                "standalone_items_per_s": rates[spec.name].items_per_s,
                "cpu_s_per_item": rates[spec.name].cpu_s_per_item,
                "replica_memory_gib": rates[spec.name].memory_bytes / GIB,  # one worker's own memory, standalone
                # the same stage's CPU per item inside the streaming run: above the standalone figure when replicas
                # split its batches or share cores with other stages (what the ceiling does not see)
                "streaming_cpu_s_per_item": runner.stats.cpu_s.get(spec.name, 0.0) / max(len(rows), 1),
                "capacity_items_per_s": capacity[spec.name],
                "device": "gpu" if gpu[spec.name] else "cpu",
                "latency_s": percentiles([r.latency_s[spec.name] for r in rows if spec.name in r.latency_s]),
                "queue_wait_s": percentiles(runner.stats.queue_wait_s.get(spec.name, [])),
                "mean_batch": float(np.mean(runner.stats.batch_sizes.get(spec.name, [0]))),
                "baseline_items_per_s": _baseline_stage_rate(baseline_rows, spec.name),
                "seed_items_per_s": spec.seed_items_per_s,
            }
            for spec in STAGES
        },
        "worker_restarts": runner.stats.restarts,
        "hardware": hardware(),
        "versions": versions(),
        "config": config.to_dict() | {"streaming": asdict(sopts), "bench": asdict(bopts)},
    }
    return report


def enqueue(options: BenchOptions, out: Path) -> Tracker:
    """`--queue`: make the bench's task here and enqueue it. The task's entry point is this command line
    (`-m clearml_pipeline bench ...`, recorded by the SDK), so the agent that takes it runs the same bench from a
    clone of this repository at this commit; there this returns the task, and the bench reports into it."""
    from clearml import Task

    from clearml_pipeline.controller import check_repository
    from clearml_pipeline.tracking import Tracker
    from resources.clearml_server import check_queues, check_server

    if options.tracking != "server":
        raise ValueError("--queue needs --tracking server: the agent's bench reports to the server")
    if Task.running_locally():
        check_server()
        check_repository()
        check_queues({"the bench": options.queue}, "--queue")
    tracker = Tracker("bench", out / "clearml", offline=False)
    if Task.running_locally():
        print(f"bench task {tracker.task.id} queued on {options.queue!r}: an agent there runs it; its figures go to "
              f"the server (experiment table, project {tracker.task.get_project_name()!r})", flush=True)
        tracker.task.execute_remotely(queue_name=options.queue, exit_process=True)
    return tracker


def track(report: dict[str, Any], out: Path, mode: str, tracker: Tracker | None = None) -> str | None:
    """Record the bench as a ClearML task with the same scalar names every time; returns the offline session.
    `tracker`: the task an agent runs the bench in (see enqueue)."""
    if mode == "none":
        return None
    from clearml_pipeline.tracking import Tracker

    replicas = ":".join(str(report["replicas"][s.name]) for s in STAGES)
    if tracker is None:
        tracker = Tracker(f"bench {replicas}", out / "clearml", offline=mode == "offline")
    else:
        tracker.task.set_name(f"bench {replicas}")
    for section, params in report["config"].items():
        tracker.connect(dict(params), name=section)
    for key in (
        "speedup",
        "bottleneck_efficiency",
        "end_to_end_items_per_s",
        "baseline_items_per_s",
        "ceiling_items_per_s",
        "cold_start_s",
    ):
        tracker.scalar("summary", key, report[key])
    for q, value in report["end_to_end_latency_s"].items():
        tracker.scalar("end_to_end_latency_s", q, value)
    for name, stage in report["stages"].items():
        tracker.scalar("standalone_items_per_s", name, stage["standalone_items_per_s"])
        tracker.scalar("capacity_items_per_s", name, stage["capacity_items_per_s"])
        for q, value in stage["latency_s"].items():
            tracker.scalar(f"latency_s/{name}", q, value)
        tracker.scalar("queue_wait_p50_s", name, stage["queue_wait_s"]["p50"])
    tracker.artifact("bench", out / "bench.json")
    session = tracker.close()
    return str(session) if session else None


def _baseline_stage_rate(rows: list[ItemResult], name: str) -> float | None:
    spent = sum(r.latency_s.get(name, 0.0) for r in rows)
    count = sum(name in r.latency_s for r in rows)
    return count / spent if spent > 0 else None


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'stage':<20} {'alone/s':>8} {'x repl':>6} {'cap/s':>7} {'cpu s/it':>8} {'in run':>7} {'lat p50':>8} "
        f"{'p95':>7} {'p99':>7} {'queue p50':>9} {'batch':>5} {'seed/s':>6}"
    ]
    for name, s in report["stages"].items():
        lat, wait = s["latency_s"], s["queue_wait_s"]
        lines.append(
            f"{name:<20} {s['standalone_items_per_s']:>8.2f} {report['replicas'][name]:>6} "
            f"{s['capacity_items_per_s']:>7.2f} {s['cpu_s_per_item']:>8.3f} {s['streaming_cpu_s_per_item']:>7.3f} "
            f"{_f(lat['p50'])} {_f(lat['p95'], 7)} "
            f"{_f(lat['p99'], 7)} {_f(wait['p50'], 9)} {s['mean_batch']:>5.1f} {_f(s['seed_items_per_s'], 6, 2)}"
        )
    e2e = report["end_to_end_latency_s"]
    lines += [
        f"end to end: {report['end_to_end_items_per_s']:.2f} items/s streaming vs {report['baseline_items_per_s']:.2f}"
        f" sequential -> speedup {report['speedup']:.2f}x; latency p50 {_f(e2e['p50'], 0)} s p95 {_f(e2e['p95'], 0)}"
        f" s p99 {_f(e2e['p99'], 0)} s",
        f"ceiling {report['ceiling_items_per_s']:.2f} items/s -> bottleneck efficiency "
        f"{report['bottleneck_efficiency']:.2f}; cold start {report['cold_start_s']:.1f} s; "
        f"{report['ok']}/{report['requests']} ok; worker restarts {report['worker_restarts']}",
    ]
    return "\n".join(lines)


def _f(value: float | None, width: int = 8, digits: int = 3) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"
