"""The streaming runtime: every row accounted for, a killed worker loses nothing, Ctrl-C ends cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest

from clearml_pipeline import memory
from clearml_pipeline.config import RunConfig
from clearml_pipeline.replicas import (
    GIB,
    MemoryFit,
    StreamingOptions,
    auto_replicas,
    fit_memory,
    memory_budget,
    memory_fit,
    parse_ratio,
    plan,
    thread_budget,
)
from clearml_pipeline.stream_worker import WARM_UP_ZH, warm_up, warm_up_folder
from clearml_pipeline.streaming import StreamingRunner
from steps.results import ItemResult
from steps.stages import STAGES, StepContext
from tests.configs import fixture_config
from tests.speech import SPANISH_SENTENCES, speak, tone

NAMES = [spec.name for spec in STAGES]


def test_ratios_threads_and_auto_replicas() -> None:
    assert parse_ratio("1:1:2", "replicas") == [1, 1, 2]
    with pytest.raises(ValueError, match="3 positive integers"):
        parse_ratio("1:0:1", "replicas")
    gpu = {"speech_translation": True, "machine_translation": True, "speech_synthesis": False}
    assert thread_budget({"speech_translation": 1, "machine_translation": 1, "speech_synthesis": 4}, gpu, 16) == {
        "speech_translation": 1,
        "machine_translation": 1,
        "speech_synthesis": 4,
    }
    cpu = dict.fromkeys(NAMES, False)
    assert thread_budget(dict.fromkeys(NAMES, 1), cpu, 2) == dict.fromkeys(NAMES, 1)
    # The slow stage gets the replicas; GPU stages keep one. On a CPU the first stage gets a spare for the run's
    # start, where every request waits for it and the later stages have nothing to do.
    costs = {"speech_translation": 0.1, "machine_translation": 0.1, "speech_synthesis": 0.8}
    assert auto_replicas(costs, cpu, 10) == {"speech_translation": 2, "machine_translation": 1, "speech_synthesis": 8}
    assert auto_replicas(costs, gpu, 8) == {"speech_translation": 1, "machine_translation": 1, "speech_synthesis": 8}
    # Each share of the cores rounded up: speech synthesis's 1.1 cores of 2 get a second process, which takes the
    # core the other stages leave idle; a share only noise puts over a whole core does not.
    measured = {"speech_translation": 0.12, "machine_translation": 0.02, "speech_synthesis": 0.17}
    assert auto_replicas(measured, cpu, 2) == {"speech_translation": 2, "machine_translation": 1, "speech_synthesis": 2}
    assert auto_replicas(measured, cpu, 4) == {"speech_translation": 3, "machine_translation": 1, "speech_synthesis": 3}
    even = {"speech_translation": 0.13, "machine_translation": 0.02, "speech_synthesis": 0.152}  # share 1.007
    assert auto_replicas(even, cpu, 2) == {**dict.fromkeys(NAMES, 1), "speech_translation": 2}
    assert auto_replicas(even, cpu, 1) == dict.fromkeys(NAMES, 1)  # one core: no spare, it would only wait
    for n in range(1, 17):
        for stage_costs in (costs, measured):
            replicas = auto_replicas(stage_costs, cpu, n)
            for name, cost in stage_costs.items():
                share = n * cost / sum(stage_costs.values())
                spare = name == NAMES[0] and n > 1  # the first stage's spare
                assert replicas[name] >= share - 0.05 + spare  # enough processes to take its share of the cores
                assert replicas[name] - spare == 1 or replicas[name] - spare - 1 < share - 0.05  # none it does not need
    assert auto_replicas(costs, dict.fromkeys(NAMES, True), 8) == dict.fromkeys(NAMES, 1)  # every stage on a GPU
    replicas, threads, why = plan(StreamingOptions(replicas="auto"), cpu, 10, lambda: costs)
    assert replicas["speech_synthesis"] == 8 and threads == dict.fromkeys(NAMES, 1)
    assert why.startswith("auto: 10 cores") and "speech_synthesis 0.800" in why  # the summary says why
    assert plan(StreamingOptions(replicas="1:1:2"), cpu, 10, lambda: costs)[2] == "given: --replicas 1:1:2"


def test_rows_go_to_replicas_a_whole_batch_at_a_time_and_wait_for_a_free_one(tmp_path: Path) -> None:
    """The router deals a stage's pending rows out a whole batch per replica, so two replicas each get batches
    of 8 from upstream batches of 8, not 4 and 4 (which cost speech synthesis 1.6x the CPU per item); a replica
    holds one batch at a time, so the rest wait for whichever replica delivers first, not in a busy one's inbox."""
    import queue
    from collections import deque
    from types import SimpleNamespace

    from clearml_pipeline.streaming import Worker

    tts = STAGES[-1]
    config = fixture_config({"runner": {"batch_size": 8}})
    runner = StreamingRunner(config, StreamingOptions(), StepContext(tmp_path, 60.0), {tts.name: 2}, {tts.name: 1})
    alive = SimpleNamespace(is_alive=lambda: True)
    workers = [Worker(i, tts, alive, queue.Queue(maxsize=16), None, ready=True) for i in range(2)]  # type: ignore[arg-type]
    runner.workers = {w.id: w for w in workers}
    pending = {spec.name: deque() for spec in STAGES}
    pending[tts.name].extend(ItemResult(f"a{i}", "") for i in range(8))
    runner._dispatch(pending)
    assert [len(w.held) for w in workers] == [8, 0]  # the first upstream batch: one replica, whole
    pending[tts.name].extend(ItemResult(f"b{i}", "") for i in range(11))
    runner._dispatch(pending)
    assert sorted(workers[1].held) == [f"b{i}" for i in range(8)]  # the next batch: the other replica, whole
    assert [row.id for row in pending[tts.name]] == ["b8", "b9", "b10"]  # both busy: the rest wait here
    workers[1].held.clear()  # the second replica delivers first
    runner._dispatch(pending)
    assert list(workers[1].held) == ["b8", "b9", "b10"] and len(workers[0].held) == 8 and not pending[tts.name]
    pending[tts.name].extend(ItemResult(f"c{i}", "") for i in range(6))
    runner._dispatch(pending)  # the partial batch is filled up to 8 first
    assert list(workers[1].held)[3:] == [f"c{i}" for i in range(5)] and [r.id for r in pending[tts.name]] == ["c5"]
    assert [w.inbox.qsize() for w in workers] == [8, 16]

    prefetch = StreamingRunner(config, StreamingOptions(inbox_batches=2), StepContext(tmp_path, 60.0),
                               {tts.name: 2}, {tts.name: 1})
    prefetch.workers = {w.id: w for w in [Worker(i, tts, alive, queue.Queue(maxsize=16), None, ready=True)  # type: ignore[arg-type]
                                          for i in range(2)]}
    pending[tts.name].extend(ItemResult(f"d{i}", "") for i in range(40))
    prefetch._dispatch(pending)  # two batches each may wait in an inbox
    assert [len(w.held) for w in prefetch.workers.values()] == [16, 16] and len(pending[tts.name]) == 9


@pytest.fixture(scope="module")
def config(fixture_caches: Any) -> RunConfig:
    return fixture_config(
        {
            "speech_translation": {"max_new_tokens": 8},
            "machine_translation": {"max_new_tokens": 8},
            "speech_synthesis": {"maxlenratio": 4.0},
        }
    )


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    paths = [speak(text, folder / f"{i}.wav") for i, text in enumerate(SPANISH_SENTENCES)]
    paths.append(tone(folder / "silence.wav", 2.0))
    (folder / "broken.wav").write_bytes(b"RIFF....garbage")
    return [*paths, folder / "broken.wav"]


def rows_for(clips: list[Path], copies: int) -> list[ItemResult]:
    return [ItemResult(f"{p.stem}-{k}", str(p)) for k in range(copies) for p in clips]


class KillOnce(StreamingRunner):
    """Kills the first worker of `victim` as soon as it holds a row (SIGKILL: no cleanup, like an OOM kill)."""

    victim = "speech_synthesis"
    killed = False

    def _dispatch(self, pending: Any) -> None:
        super()._dispatch(pending)
        for worker in self.workers.values():
            if not self.killed and worker.spec.name == self.victim and worker.held:
                os.kill(worker.process.pid, signal.SIGKILL)
                self.killed = True


@pytest.mark.parametrize(("retries", "expect_lost"), [(1, False), (0, True)])
def test_a_killed_worker_loses_no_row(
    config: RunConfig, clips: list[Path], tmp_path: Path, retries: int, expect_lost: bool
) -> None:
    options = StreamingOptions(retries=retries, max_wait_ms=5)
    runner = KillOnce(config, options, StepContext(tmp_path, 60.0), dict.fromkeys(NAMES, 1), dict.fromkeys(NAMES, 1))
    rows = rows_for(clips, 2)
    try:
        runner.start()
        done = runner.run(rows)
    finally:
        runner.close()
    assert runner.killed and runner.stats.restarts == 1
    assert [r.id for r in done] == [r.id for r in rows]  # every row, in input order
    died = [r for r in done if r.error and "worker process died" in r.error]
    assert bool(died) is expect_lost
    assert all(r.stage == "speech_synthesis" for r in died)
    speech = [r for r in done if not r.id.startswith(("silence", "broken"))]
    assert all(r.ok for r in speech if r not in died)
    assert all(r.zh_audio and (tmp_path / r.zh_audio).exists() for r in speech if r.ok)
    broken = [r for r in done if r.id.startswith("broken")]
    assert all(r.stage == "input" for r in broken)
    assert all(r.no_speech for r in done if r.id.startswith("silence"))
    assert all(not w.process.is_alive() for w in runner.workers.values())


def test_auto_replicas_fit_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replicas of the largest model go first (speech translation's spare, holding a Whisper), never below one
    per stage; replicas given by hand are left as given."""
    planned = {"speech_translation": 2, "machine_translation": 1, "speech_synthesis": 2}
    sizes = {"speech_translation": 6 * GIB, "machine_translation": GIB // 2, "speech_synthesis": GIB}
    assert fit_memory(planned, MemoryFit(sizes, 15 * GIB, "x")) == (planned, "")  # 14.5 GiB: they fit
    fewer, why = fit_memory(planned, MemoryFit(sizes, 9 * GIB, "test budget"))
    assert fewer == {**planned, "speech_translation": 1}  # 8.5 GiB
    assert why == (
        "; fewer to fit the memory (test budget; GiB per replica: speech_translation 6.00, machine_translation 0.50, "
        "speech_synthesis 1.00)"
    )
    assert fit_memory(planned, MemoryFit(sizes, 8 * GIB, "x"))[0] == dict.fromkeys(NAMES, 1)  # then synthesis's
    assert fit_memory(planned, MemoryFit(sizes, -GIB, "x"))[0] == dict.fromkeys(NAMES, 1)  # one each, whatever
    # auto: what is available now, the loaded workers' memory counted back in, less 10 % of the machine's memory
    import psutil

    fake = type("VirtualMemory", (), {"total": 32 * GIB, "available": 10 * GIB})
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    monkeypatch.setattr(memory, "PROC_CGROUP", Path("/nonexistent"))  # no cgroup limit (test_machine_memory: one)
    fit = memory_fit(None, sizes, dict.fromkeys(NAMES, 1))  # auto
    assert fit.budget == pytest.approx(10 * GIB + 7.5 * GIB - 3.2 * GIB, abs=1) and fit.per_replica == sizes
    assert fit.source == "10.0 GiB available beside the loaded workers, 3.2 GiB kept free"
    assert memory_fit(memory_budget("2.5"), sizes, {}).budget == 2.5 * GIB
    for bad in ("-1", "lots", "nan"):
        with pytest.raises(ValueError, match="--replica-memory takes auto or a number of GiB >= 0"):
            plan(StreamingOptions(replica_memory=bad), dict.fromkeys(NAMES, False), 2, lambda: {})
    costs = {"speech_translation": 0.12, "machine_translation": 0.02, "speech_synthesis": 0.17}
    cpu = dict.fromkeys(NAMES, False)
    small = StreamingOptions(replica_memory="8")
    replicas, threads, why = plan(small, cpu, 2, lambda: costs, lambda: (sizes, {}))
    assert replicas == dict.fromkeys(NAMES, 1) and threads == dict.fromkeys(NAMES, 1)
    assert why.startswith("auto: 2 cores") and "fewer to fit the memory (--replica-memory 8 GiB" in why
    given = StreamingOptions(replicas="2:1:2", replica_memory="8")
    assert plan(given, cpu, 2, lambda: costs, lambda: (sizes, {}))[0] == planned


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_machine_memory_is_the_cgroups_where_its_limit_is_lower(
    version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a ClearML agent's container psutil reads the host's memory; the memory cgroup's limit is what the
    workers may use. A limit may sit on a parent of the process's own cgroup; reclaimable page cache is free."""
    import psutil

    host = type("VirtualMemory", (), {"total": 64 * GIB, "available": 40 * GIB})
    monkeypatch.setattr(psutil, "virtual_memory", lambda: host)
    root = tmp_path / "cgroup"
    base = root if version == "v2" else root / "memory"
    limit, usage, cache = memory.CGROUP_FILES[version]
    own, parent = base / "agents" / "task-7", base / "agents"
    for folder, cap in ((own, "max" if version == "v2" else str(2**63 - 4096)), (parent, str(8 * GIB))):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / limit).write_text(cap + "\n")
        (folder / usage).write_text(f"{5 * GIB}\n")
        (folder / "memory.stat").write_text(f"anon 123\n{cache} {GIB}\nfile 99\n")
    line = "0::/agents/task-7" if version == "v2" else "7:pids:/\n4:memory:/agents/task-7\n0::/"
    (tmp_path / "cgroup-file").write_text(line + "\n")
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory, "PROC_CGROUP", tmp_path / "cgroup-file")
    assert memory.machine_memory() == (8 * GIB - 5 * GIB + GIB, 8 * GIB)  # the parent's limit, less its usage
    (parent / limit).write_text(str(128 * GIB))  # a limit above the machine's memory limits nothing
    assert memory.machine_memory() == (40 * GIB, 64 * GIB)
    monkeypatch.setattr(memory, "PROC_CGROUP", tmp_path / "missing")  # not Linux, or no cgroups: the machine's
    assert memory.machine_memory() == (40 * GIB, 64 * GIB)


def test_streaming_matches_the_inprocess_runner(config: RunConfig, clips: list[Path], tmp_path: Path) -> None:
    folder = clips[0].parent
    base = [
        sys.executable,
        "-m",
        "clearml_pipeline",
        "run",
        "--local",
        "--input",
        str(folder),
        "--models",
        "fixtures",
        "--st-max-new-tokens",
        "8",
        "--mt-max-new-tokens",
        "8",
        "--tts-maxlenratio",
        "4",
    ]
    env = {**os.environ, "S2ST_FIXTURES_DIR": os.environ["S2ST_FIXTURES_DIR"]}
    outputs = {}
    for name, runtime, replicas, budget in (
        ("inprocess", "inprocess", "1:1:2", "auto"),
        ("streaming", "streaming", "1:1:2", "auto"),
        ("auto", "streaming", "auto", "auto"),  # sized from the first items' measured costs, which it keeps
        ("capped", "streaming", "auto", "0"),  # no memory for more workers than the calibration's
    ):
        out = tmp_path / name
        proc = subprocess.run(
            [*base, "--output", str(out), "--runtime", runtime, "--replicas", replicas, "--replica-memory", budget],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 1, proc.stderr[-2000:]  # the broken clip
        assert "leaked semaphore" not in proc.stderr  # each worker's inbox let go before the interpreter's exit
        outputs[name] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    keys = ("id", "status", "stage", "en_text", "zh_text", "no_speech", "zh_audio")
    for name in ("streaming", "auto", "capped"):
        assert [{k: r[k] for k in keys} for r in outputs[name]] == [
            {k: r[k] for k in keys} for r in outputs["inprocess"]
        ], name
    auto = json.loads((tmp_path / "auto" / "summary.json").read_text())["streaming"]
    assert auto["calibration_items"] == min(4, len(outputs["auto"]))
    assert auto["workers_started"] == auto["replicas"]  # the calibration's workers went on: no model loaded twice
    assert set(auto["replicas"]) == {"speech_translation", "machine_translation", "speech_synthesis"}
    assert all(n >= 1 for n in auto["replicas"].values())
    assert "fewer to fit the memory" not in auto["replicas_chosen_by"]  # a few small fixture models fit
    capped = json.loads((tmp_path / "capped" / "summary.json").read_text())["streaming"]
    assert capped["replicas"] == dict.fromkeys(NAMES, 1) and capped["workers_started"] == capped["replicas"]
    why = capped["replicas_chosen_by"]
    assert "fewer to fit the memory (--replica-memory 0 GiB; GiB per replica:" in why
    # each stage's worker was measured: a loaded model's own memory, not nothing
    assert all(float(re.search(rf"{name} (\d+\.\d+)", why.split("GiB per replica:")[1])[1]) > 0.01 for name in NAMES)
    summary = json.loads((tmp_path / "streaming" / "summary.json").read_text())
    assert summary["streaming"]["replicas"] == {
        "speech_translation": 1,
        "machine_translation": 1,
        "speech_synthesis": 2,
    }
    assert summary["streaming"]["cold_start_s"] > 0


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (exited, not yet reaped by init) is not alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _ok_ids(results: Path) -> set[str]:
    """The ids written ok so far to a results.jsonl that a run is appending to (a line being written is skipped)."""
    found: set[str] = set()
    for line in results.read_text().splitlines() if results.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            found |= {row["id"]} if row.get("status") == "ok" else set()
    return found


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in map(int, children):
            found |= {child} | _children(child)
    return found


def test_ctrl_c_ends_the_run_cleanly_with_every_row_written(clips: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(12):
        (folder / f"{k:02d}.wav").write_bytes(clips[k % 3].read_bytes())
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clearml_pipeline",
            "run",
            "--local",
            "--runtime",
            "streaming",
            "--input",
            str(folder),
            "--output",
            str(out),
            "--models",
            "fixtures",
            "--st-max-new-tokens",
            "8",
            "--mt-max-new-tokens",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    deadline = time.monotonic() + 300
    workers: set[int] = set()
    finished_ok: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        # Stage workers only: multiprocessing's resource tracker outlives its parent briefly by design.
        workers |= {pid for pid in _children(proc.pid) if "spawn_main" in _cmdline(pid)}
        finished_ok = _ok_ids(out / "results.jsonl")
        if finished_ok:  # a row the router has written ok (a wav on disk may still be on its way to the router)
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"{k:02d}" for k in range(12)]
    ok = {r["id"] for r in rows if r["status"] == "ok"}
    assert finished_ok <= ok and all((out / r["zh_audio"]).is_file() for r in rows if r["zh_audio"])
    assert any(r["stage"] == "interrupted" for r in rows)
    assert workers and not [pid for pid in workers if _alive(pid)]


# -- the router's faults (issue 12, item 4): machine translation alone, on text rows, to keep them quick ---------

MT = next(spec for spec in STAGES if spec.name == "machine_translation")


def text_rows(n: int) -> list[ItemResult]:
    return [ItemResult(f"t{k}", "", en_text=f"Hello number {k}, how are you today?") for k in range(n)]


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """A router that hangs fails the test (TimeoutError out of run()) instead of hanging it."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the run did not end within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def mt_runner(
    cls: type[StreamingRunner], config: RunConfig, options: StreamingOptions, out: Path, replicas: int = 1
) -> Any:
    small = config.updated({"runner": {"batch_size": 2}})
    one = {"machine_translation": 1}
    return cls(small, options, StepContext(out, 60.0), {"machine_translation": replicas}, one, stages=[MT])


def run_to_the_end(runner: StreamingRunner, rows: list[ItemResult], seconds: int = 420) -> list[ItemResult]:
    try:
        with time_limit(seconds):
            runner.start()
            return runner.run(rows)
    finally:
        runner.close()


class KillTheReplacementWarmingUp(StreamingRunner):
    """SIGKILLs the first worker once it holds rows, then its replacement while that one loads its model."""

    victims: list[int]

    def _dispatch(self, pending: Any) -> None:
        super()._dispatch(pending)
        self.victims = getattr(self, "victims", [])
        for worker in self.workers.values():
            if not self.victims and worker.held:
                os.kill(worker.process.pid, signal.SIGKILL)
                self.victims.append(worker.process.pid)

    def _spawn(self, spec: Any) -> Any:
        worker = super()._spawn(spec)
        if len(getattr(self, "victims", [])) == 1:
            time.sleep(3)  # well into its start-up: importing torch, loading the model
            assert worker.process.is_alive()  # alive and warming up when it is killed
            os.kill(worker.process.pid, signal.SIGKILL)
            self.victims.append(worker.process.pid)
        return worker


def test_a_replacement_that_dies_warming_up_is_replaced_and_its_rows_retried(config: RunConfig, tmp_path: Path) -> None:
    runner = mt_runner(KillTheReplacementWarmingUp, config, StreamingOptions(retries=1, max_wait_ms=5), tmp_path)
    rows = text_rows(6)
    done = run_to_the_end(runner, rows)
    assert len(runner.victims) == 2 and runner.stats.restarts == 2  # the worker and its dead replacement
    assert [r.id for r in done] == [r.id for r in rows]
    assert all(r.ok and r.zh_text for r in done), [r.error for r in done]  # a third worker did them all


class BreakTheReplacement(StreamingRunner):
    """SIGKILLs the first worker after it finished some rows, and gives its replacement a model that is not there."""

    killed = False

    def _receive(self, timeout: float) -> Any:
        finished = super()._receive(timeout)
        self.delivered = getattr(self, "delivered", 0) + len(finished)
        return finished

    def _dispatch(self, pending: Any) -> None:
        super()._dispatch(pending)
        for worker in self.workers.values():
            if not self.killed and getattr(self, "delivered", 0) >= 2 and worker.held:
                self.config = self.config.updated({"machine_translation": {"model": str(Path("/nonexistent/m"))}})
                os.kill(worker.process.pid, signal.SIGKILL)
                self.killed = True


def test_a_replacement_that_cannot_start_keeps_the_finished_rows(config: RunConfig, tmp_path: Path) -> None:
    runner = mt_runner(BreakTheReplacement, config, StreamingOptions(retries=0, max_wait_ms=5), tmp_path)
    rows = text_rows(10)
    done = run_to_the_end(runner, rows)
    assert runner.killed and [r.id for r in done] == [r.id for r in rows]  # every row, in order
    finished = [r for r in done if r.ok]
    assert len(finished) >= 2 and all(r.zh_text for r in finished)  # what was done is kept
    failed = [r for r in done if not r.ok]
    assert failed and all(r.stage == "machine_translation" for r in failed)
    assert all("worker process died" in r.error or "could be started" in r.error for r in failed)
    not_started = [r for r in failed if "no machine_translation worker could be started" in r.error]
    assert not_started and all("/nonexistent/m" in r.error for r in not_started)  # saying why


class StopOnce(StreamingRunner):
    """SIGSTOPs the first worker once it holds rows: alive, holding them, never delivering."""

    stopped = 0

    def _dispatch(self, pending: Any) -> None:
        super()._dispatch(pending)
        for worker in self.workers.values():
            if not self.stopped and worker.held:
                os.kill(worker.process.pid, signal.SIGSTOP)
                self.stopped = worker.process.pid


def test_a_stopped_worker_is_killed_at_the_row_deadline_and_its_rows_retried(
    config: RunConfig, tmp_path: Path
) -> None:
    options = StreamingOptions(retries=1, max_wait_ms=5, row_timeout_s=3)
    runner = mt_runner(StopOnce, config, options, tmp_path)
    rows = text_rows(6)
    done = run_to_the_end(runner, rows)
    assert runner.stopped and runner.stats.timeouts == 1 and runner.stats.restarts == 1
    assert not _alive(runner.stopped)  # killed, not left stopped
    assert [r.id for r in done] == [r.id for r in rows]
    assert all(r.ok and r.zh_text for r in done), [r.error for r in done]


class InterruptWithDeliveriesWaiting(StreamingRunner):
    """Ctrl-C at the moment a worker's finished batch sits in its pipe, not yet read by the router."""

    waiting_at_signal = False

    def _dispatch(self, pending: Any) -> None:
        super()._dispatch(pending)
        worker = next(iter(self.workers.values()))
        if worker.held and not self.waiting_at_signal:
            self.waiting_at_signal = bool(wait([worker.outbox], 120))
            raise KeyboardInterrupt


def test_rows_a_worker_finished_before_ctrl_c_are_written_ok(config: RunConfig, tmp_path: Path) -> None:
    runner = mt_runner(InterruptWithDeliveriesWaiting, config, StreamingOptions(max_wait_ms=5), tmp_path)
    rows = text_rows(6)
    done = run_to_the_end(runner, rows)
    assert runner.waiting_at_signal and runner.stats.interrupted
    assert [r.id for r in done] == [r.id for r in rows]
    ok = [r for r in done if r.ok]
    assert len(ok) >= 2 and all(r.zh_text for r in ok)  # the batch (of 2) in the pipe, read after the signal
    assert all(r.stage == "interrupted" for r in done if not r.ok)


class CtrlCInsideTheQueueLock(StreamingRunner):
    """Ctrl-C at the worst moment of close(): inside the inbox's `with self._notempty:` (its put of the stop
    message), after the lock is taken and before the `with` is set up to release it. A KeyboardInterrupt raised
    there keeps the lock for ever, and the interpreter's exit (multiprocessing's finalizer takes that lock) hangs:
    how a Ctrl-C'd run once never ended (CI, 2026-12-06)."""

    send: Callable[[int], None]
    lock: Any = None

    def close(self) -> None:
        inbox = next(iter(self.workers.values())).inbox
        condition = inbox._notempty  # type: ignore[attr-defined]
        self.lock = condition._lock
        send = self.send

        class SignalOnEnter:
            def __enter__(self) -> Any:
                entered = condition.__enter__()
                send(signal.SIGINT)  # the handler runs here, the lock held
                return entered

            def __exit__(self, *exc: Any) -> Any:
                return condition.__exit__(*exc)

            def __getattr__(self, name: str) -> Any:
                return getattr(condition, name)

        inbox._notempty = SignalOnEnter()  # type: ignore[attr-defined]
        super().close()


def test_ctrl_c_inside_close_stops_every_worker_and_leaves_no_lock_held(
    config: RunConfig, tmp_path: Path, command_signals: Callable[[int], None]
) -> None:
    runner = mt_runner(CtrlCInsideTheQueueLock, config, StreamingOptions(max_wait_ms=5), tmp_path, replicas=2)
    runner.send = command_signals
    with time_limit(420):
        runner.start()
        done = runner.run(text_rows(4))  # the inboxes' feeder threads are running: their exit finalizer is set
    assert all(r.ok for r in done)
    workers = list(runner.workers.values())
    try:
        with pytest.raises(KeyboardInterrupt):  # raised once close() has done everything
            runner.close()
        assert not any(w.process.is_alive() for w in workers)
        assert all(w.outbox.closed for w in workers)
        assert runner.lock is not None and not runner.lock.locked()
        for worker in workers:  # what the interpreter's exit does with each inbox; it hangs on a held lock
            releasing = threading.Thread(target=worker.inbox.close, daemon=True)
            releasing.start()
            releasing.join(timeout=10)
            assert not releasing.is_alive()
    finally:  # a failure here must not hang the test session's own exit
        if runner.lock is not None and runner.lock.locked():
            runner.lock.release()
        for worker in workers:
            worker.process.kill()


def test_scaling_between_runs_keeps_the_warm_workers_that_fit_and_replaces_the_others(
    config: RunConfig, tmp_path: Path
) -> None:
    """What `--replicas auto` does after its calibration run: grow to the plan without loading a model twice."""
    runner = mt_runner(StreamingRunner, config, StreamingOptions(max_wait_ms=5), tmp_path)
    stage = "machine_translation"
    feeders_before = set(_feeders())
    try:
        with time_limit(420):
            runner.start()
            assert all(r.ok for r in runner.run(text_rows(2)))
            (warm,) = runner.workers.values()
            cold_start = runner.stats.cold_start_s

            runner.scale({stage: 2}, {stage: 1})
            assert warm.id in runner.workers and warm.process.is_alive()  # kept: same thread budget
            (loading,) = (w for w in runner.workers.values() if w is not warm)
            runner.scale({stage: 1}, {stage: 1})  # fewer again: the one still loading goes, the warm one stays
            assert list(runner.workers.values()) == [warm] and not loading.process.is_alive()

            runner.scale({stage: 2}, {stage: 1})
            (new,) = (w for w in runner.workers.values() if w is not warm)
            assert not new.ready  # loading: the next rows go to the warm worker meanwhile
            assert all(r.ok for r in runner.run([replace(row, id=f"second-{row.id}") for row in text_rows(2)]))
            runner._wait_ready(time.monotonic())
            rows = [replace(row, id=f"third-{row.id}") for row in text_rows(8)]
            assert all(r.ok for r in runner.run(rows))
            assert runner.stats.started == {stage: 3}
            assert runner.stats.cold_start_s == cold_start  # nothing waited for the new replica

            runner.scale({stage: 1}, {stage: 2})  # another thread budget: every worker is replaced
            assert warm.id not in runner.workers and not warm.process.is_alive() and not new.process.is_alive()
            assert len(runner.workers) == 1 and runner.threads == {stage: 2}
            rows = [replace(row, id=f"fourth-{row.id}") for row in text_rows(2)]
            assert all(r.ok for r in runner.run(rows))  # they wait for the replacement to be warm
            assert runner.stats.started == {stage: 4}
            (last,) = runner.workers.values()
            warm_up_folder(tmp_path, last.id).mkdir()  # as a worker stopped while warming up leaves it
            (warm_up_folder(tmp_path, last.id) / "warmup.wav").write_bytes(b"")
    finally:
        runner.close()
    assert not any(w.process.is_alive() for w in runner.workers.values())
    assert not list(tmp_path.glob(".warmup-*"))
    # every inbox's feeder thread has ended (the stopped workers' ones joined), none left for the interpreter's exit
    assert set(_feeders()) <= feeders_before
    runner.close()  # a second close does nothing


def _feeders() -> list[threading.Thread]:
    """The multiprocessing queues' feeder threads still running in this process."""
    return [t for t in threading.enumerate() if t.name == "QueueFeederThread" and t.is_alive()]


def test_a_worker_warms_up_on_a_whole_batch_of_long_rows_in_a_folder_it_removes(tmp_path: Path) -> None:
    seen: list[tuple[int, list[int], bool]] = []

    def step(stage: Any, rows: list[ItemResult], ctx: StepContext) -> None:
        assert ctx.out.is_relative_to(tmp_path) and ctx.out != tmp_path  # never OUT itself: real items' files
        seen.append((len(rows), [len(row.zh_text or "") for row in rows], Path(rows[0].source).is_file()))

    warm_up(object(), replace(STAGES[-1], step=step), StepContext(tmp_path, 60.0), worker_id=3, rows=8)
    [(rows, lengths, audio)] = seen
    assert rows == 8 and audio and len(WARM_UP_ZH) >= 40  # a whole batch; the longest text a whole piece
    assert lengths[0] == len(WARM_UP_ZH) and lengths[-1] >= len(WARM_UP_ZH) // 2
    assert lengths == sorted(set(lengths), reverse=True) and len(lengths) == 8  # each length once
    assert list(tmp_path.iterdir()) == []

    def fail(stage: Any, rows: list[ItemResult], ctx: StepContext) -> None:
        rows[-1].fail("speech_synthesis", "the model gave no audio")

    with pytest.raises(RuntimeError, match="warm-up failed: the model gave no audio"):
        warm_up(object(), replace(STAGES[-1], step=fail), StepContext(tmp_path, 60.0), worker_id=4, rows=2)
    assert list(tmp_path.iterdir()) == []
