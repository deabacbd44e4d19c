"""Signals sent to a real `python -m clearml_pipeline` run, in every runtime and the bench (issue 12, item 5).

After SIGINT or SIGTERM: every input has a row in OUT/results.jsonl (finished ones ok, the rest "interrupted"),
no process the run started is alive 10 s later (workers, multiprocessing's resource tracker, step processes),
and the exit status is 130 (SIGINT) or 143 (SIGTERM). A step process dies with its parent, even a SIGKILLed one.
Fixture models, short clips and small decode caps keep each run to a minute or two.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clearml_pipeline import interrupts
from tests.cli import REPO
from tests.speech import SPANISH_SENTENCES, speak, tone

N_CLIPS = 6
CAPS = ["--models", "fixtures", "--st-max-new-tokens", "8", "--mt-max-new-tokens", "8", "--tts-maxlenratio", "4"]
FIXED_96_TOKENS = ("--st-min-new-tokens", "96", "--st-max-new-tokens", "96")


@pytest.fixture(scope="module")
def clips(fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    spoken = [speak(text, folder / f"{i:02d}.wav") for i, text in enumerate(SPANISH_SENTENCES)]
    for k in range(len(spoken), N_CLIPS):
        (folder / f"{k:02d}.wav").write_bytes(spoken[k % len(spoken)].read_bytes())
    return folder


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (exited, not yet reaped) is not alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found |= {child} | descendants(child)
    return found


def lines(path: Path) -> int:
    try:
        return len(path.read_text(encoding="utf-8").splitlines())
    except OSError:
        return 0


class Run:
    """A real run in its own process; `until(ready)` waits (collecting its descendants) until `ready()`."""

    def __init__(
        self, args: list[str], out: Path, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.out = out
        self.log = out.parent / f"{out.name}.log"
        self.seen: dict[int, str] = {}  # every descendant seen, with its command line then
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clearml_pipeline", *args, "--output", str(out), *CAPS, *extra],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                env=env or {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")},
            )

    def until(self, ready: Callable[[], bool], timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline and not ready():
            self._look()
            time.sleep(0.2)
        self._look()
        assert self.proc.poll() is None, f"the run ended before it could be signalled:\n{self.output()[-3000:]}"
        assert ready(), f"not ready after {timeout} s:\n{self.output()[-3000:]}"

    def _look(self) -> None:
        for pid in descendants(self.proc.pid):
            self.seen[pid] = cmdline(pid) or self.seen.get(pid, "")  # the latest: a fork is an exec away

    def stop(self, signum: int, timeout: float = 180) -> int:
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.out / "results.jsonl").read_text().splitlines()]

    def leftovers(self, grace: float = 10.0) -> list[str]:
        """The run's processes still alive `grace` seconds after it exited (with what they are)."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(pid) for pid in self.seen):
            time.sleep(0.5)
        return [f"{pid}: {cmdline(pid)[:200]}" for pid in self.seen if alive(pid)]

    def seen_running(self, text: str) -> list[int]:
        return [pid for pid, command in self.seen.items() if text in command]


def check_every_row(run: Run, clips: Path, code: int, signum: int) -> list[dict[str, Any]]:
    assert code == 128 + signum, run.output()[-3000:]
    assert "Traceback" not in run.output(), run.output()[-3000:]
    rows = run.rows()
    assert [r["id"] for r in rows] == [f"{k:02d}" for k in range(N_CLIPS)]
    for row in rows:  # finished, or marked interrupted: nothing in between
        assert (row["status"], row["stage"]) in (("ok", None), ("error", "interrupted")), row
        if row["status"] == "ok":
            assert (run.out / row["zh_audio"]).is_file()
    # `source` is the input path as given, absolute, in every runtime
    assert [r["source"] for r in rows] == [str(clips / f"{k:02d}.wav") for k in range(N_CLIPS)]
    assert run.leftovers() == []
    return rows


ROLES = ("speech_translation", "machine_translation", "speech_synthesis", "vocoder")


def check_summary(out: Path) -> dict[str, dict[str, Any]]:
    """summary.json after the interrupt: marked so, every item counted, and still saying which models (by role,
    the ids the config names) and which device the run was made with; returns its models by role."""
    from steps.device import pick_device

    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["counts"]["items"] == N_CLIPS
    models = {m["role"]: m for m in summary["models"]}
    config = summary["config"]
    assert set(ROLES) <= set(models), summary["models"]
    for role, section, name in (
        ("speech_translation", "speech_translation", "model"),
        ("machine_translation", "machine_translation", "model"),
        ("speech_synthesis", "speech_synthesis", "model"),
        ("vocoder", "speech_synthesis", "vocoder"),
    ):
        assert models[role]["model_id"] == config[section][name], models[role]
    assert summary["device"] == pick_device(config["speech_translation"]["device"])  # not "not recorded"
    return models


@pytest.mark.parametrize(
    ("runtime", "signum", "when"),
    [
        ("inprocess", signal.SIGTERM, "rows"),  # mid-run: some rows written
        ("inprocess", signal.SIGINT, "start"),  # while the command starts (the parser imports torch)
        ("streaming", signal.SIGTERM, "rows"),
        ("streaming", signal.SIGINT, "workers"),  # while the workers load their models and warm up
    ],
)
def test_a_signal_writes_every_row_and_leaves_no_process(
    clips: Path, tmp_path: Path, runtime: str, signum: int, when: str
) -> None:
    out = tmp_path / "out"
    run = Run(["run", "--local", "--runtime", runtime, "--input", str(clips), "--batch-size", "1",
               "--replicas", "1:1:1"], out)
    started = time.monotonic()
    ready = {
        "rows": lambda: lines(out / "results.jsonl") >= 1,
        "start": lambda: time.monotonic() - started > 1.5,
        "workers": lambda: sum("spawn_main" in cmdline(pid) for pid in descendants(run.proc.pid)) >= 3,
    }[when]
    run.until(ready)
    rows = check_every_row(run, clips, run.stop(signum), signum)
    statuses = [r["status"] for r in rows]
    if when == "rows":
        assert "ok" in statuses and "error" in statuses  # stopped mid-run: both kinds
    else:
        assert set(statuses) == {"error"}  # nothing had started
    if runtime == "streaming":
        assert len(run.seen_running("spawn_main")) >= 3 and run.seen_running("resource_tracker")
    models = check_summary(out)
    if when == "rows":  # loaded before the interrupt: their exact revisions
        assert all(models[role]["revision"] for role in ROLES), models


def test_steps_runtime_sigterm_then_a_rerun_with_other_audio_is_fresh(clips: Path, tmp_path: Path) -> None:
    """SIGTERM mid-step: the step process is told, writes its rows, and OUT gets every row; then the same names
    with other audio (silence) into the same OUT: the step's partial results are discarded, not resumed
    (issue 12, item 2)."""
    clips = Path(shutil.copytree(clips, tmp_path / "clips"))
    out = tmp_path / "out"
    # 96 decoded tokens a clip (after CAPS: the last flag wins) keep the step busy for seconds after its first
    # row: with 8, the whole step could finish between that row and the signal, and there was no mid-step.
    run = Run(["run", "--local", "--input", str(clips), "--batch-size", "1"], out, extra=FIXED_96_TOKENS)
    run.until(lambda: lines(out / "steps" / "speech_translation" / "partial.jsonl") >= 1)
    assert run.seen_running("step_task")
    rows = check_every_row(run, clips, run.stop(signal.SIGTERM), signal.SIGTERM)
    assert {r["stage"] for r in rows} == {"interrupted"}  # none had been through every stage
    check_summary(out)
    partial = [json.loads(line) for line in (out / "steps" / "speech_translation" / "partial.jsonl").open()]
    assert [r["id"] for r in partial if r["status"] == "ok" and r["en_text"]]  # the step did finish some rows

    for clip in clips.glob("*.wav"):  # the same names, now silence
        tone(clip, 2.0)
    again = subprocess.run(
        [sys.executable, "-m", "clearml_pipeline", "run", "--local", "--input", str(clips), "--output", str(out),
         *CAPS], cwd=REPO, capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")},
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" not in again.stdout and "discarding" in again.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == N_CLIPS and all(r["status"] == "ok" and r["no_speech"] for r in rows)
    assert all(r["en_text"] == "" for r in rows)  # not the first run's translations
    assert list((out / "audio").glob("*.wav")) == []  # and none of its audio


def test_a_step_process_dies_with_its_parent(clips: Path, tmp_path: Path) -> None:
    """SIGKILL cannot be handled: the step process learns of its parent's death from the kernel (SIGTERM via
    PR_SET_PDEATHSIG) and ends within seconds instead of running on."""
    out = tmp_path / "out"
    run = Run(["run", "--local", "--input", str(clips)], out)
    run.until(lambda: any("speech_translation" in cmdline(pid) for pid in descendants(run.proc.pid)))
    assert run.seen_running("step_task")
    run.stop(signal.SIGKILL)
    assert run.leftovers() == []


def test_bench_sigterm_stops_its_workers_and_writes_every_request(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    run = Run(["bench", "--input", str(clips), "--requests", "4", "--replicas", "1:1:1", "--tracking", "none"], out)
    run.until(lambda: any("spawn_main" in cmdline(pid) for pid in descendants(run.proc.pid)))
    code = run.stop(signal.SIGTERM)
    assert code == 143, run.output()[-3000:]
    rows = run.rows()
    assert len(rows) == 4 and all(r["stage"] == "interrupted" for r in rows)
    assert not (out / "bench.json").exists()  # no figures from a measurement cut short
    assert run.leftovers() == []


# -- interrupts.deferred: where a signal may not raise (the streaming router's locks and its shutdown) ---------


def test_a_deferred_signal_is_raised_where_the_outermost_block_ends(command_signals: Callable[[int], None]) -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        command_signals(signal.SIGINT)
        reached.append("after the signal")
        with interrupts.deferred():
            pass  # an inner block's end is not where it is raised
        reached.append("after the inner block")
    assert reached == ["after the signal", "after the inner block"]
    assert interrupts.received() == signal.SIGINT


def test_check_interrupt_raises_it_once(command_signals: Callable[[int], None]) -> None:
    with interrupts.deferred():
        interrupts.check_interrupt()  # nothing pending: nothing raised
        command_signals(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            interrupts.check_interrupt()
    # the block ended without raising it a second time
    assert interrupts.interrupted_exit_code() == 143


def test_an_error_in_a_deferred_block_does_not_swallow_the_interrupt(command_signals: Callable[[int], None]) -> None:
    with pytest.raises(KeyboardInterrupt) as raised, interrupts.deferred():
        command_signals(signal.SIGINT)
        raise ValueError("the block's own failure")
    assert isinstance(raised.value.__context__, ValueError)


def test_outside_a_deferred_block_the_signal_raises_at_once(command_signals: Callable[[int], None]) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)  # interrupted: the handler raises in the sleep
