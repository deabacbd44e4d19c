"""The pipeline with no server: each step is an offline ClearML task in its own process, as an agent would run it.

OUT/steps/<task>/ holds each task's output folder (the next step's input), OUT/clearml/<step>.<task>.zip each
step's offline session (`clearml-task --import-offline-session ZIP` uploads it to a server later), and OUT/ the
final results.jsonl, summary.json, audio/, metrics.json, report.md and plots/. Every model of every step is
located first (clearml_pipeline.model_check), so a missing one stops the run before any step, with its message;
a step that fails to start (a bad dataset) stops the run too; item failures are rows, never a stop.

Interrupted (SIGINT or SIGTERM here, or a step process that was), the running step is sent the same signal and
given STEP_GRACE_S to write its rows; then OUT/results.jsonl gets every item: the ones that went through every
stage (or failed, or had no speech) as they are, the rest `interrupted`. A step process that dies (killed, out of
memory) fails the items it had not finished, with its exit code. Step processes die with this one
(interrupts.die_with_parent), so even a SIGKILL here leaves none running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import groupby
from pathlib import Path
from typing import Any

from clearml_pipeline.execution import (
    PIPELINE_CONFIG,
    RESULTS,
    RUN_FILES,
    mark_interrupted,
    read_rows_leniently,
    start_outputs,
)
from clearml_pipeline.interrupts import received
from clearml_pipeline.model_check import check_models
from clearml_pipeline.pipeline import Node, PipelineConfig, plan
from clearml_pipeline.step_task import PARENT_ENV
from clearml_pipeline.step_work import MANIFEST
from clearml_pipeline.tracking import check_offline_folder, offline_environment
from resources.json_text import dumps
from resources.paths import UnsafePathError
from steps.results import ItemResult, write_rows
from steps.stages import AUDIO_DIR, STAGES, finish

REPO_ROOT = Path(__file__).resolve().parents[1]
FINAL_FILES = tuple(name for name in RUN_FILES if name not in (RESULTS, PIPELINE_CONFIG))
FINAL_FOLDERS = ("plots",)
STEP_GRACE_S = 60.0  # an interrupted step writes its rows in seconds; one that does not is killed
INTERRUPTED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


class StepFailedError(RuntimeError):
    def __init__(self, step: str, code: int, detail: str) -> None:
        super().__init__(f"step {step} failed (exit {code}){': ' + detail if detail else ''}")
        self.step, self.code = step, code


def run_locally(
    config: PipelineConfig, dataset: Path, out: Path, shards: dict[str, int] | None = None
) -> dict[str, Any]:
    """Run every task of the plan in order (a stage's shards one after another); returns the final summary.
    A model that cannot be located raises ModelUnavailableError before the first step starts."""
    out = out.resolve()
    started = time.perf_counter()
    # Before OUT is emptied of an earlier run (reproduce comes here directly): an OUT the SDK would misread, and
    # every step's models, so that a missing TTS model stops the run now, not after hours of Whisper.
    check_offline_folder(out / "clearml")
    check_models(config)
    start_outputs(out)
    config_path = out / PIPELINE_CONFIG
    config_path.write_text(json.dumps(config.to_dict() | {"shards": shards or {}}, indent=2), encoding="utf-8")
    env = os.environ | offline_environment(out / "clearml") | {PARENT_ENV: str(os.getpid())}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    nodes = plan(shards)
    launched: list[tuple[Node, float]] = []
    for index, node in enumerate(nodes, start=1):
        folder = out / "steps" / node.name
        for stale in (RESULTS, "error.txt"):  # an earlier run's: what is here after the step is this run's
            (folder / stale).unlink(missing_ok=True)
        print(f"[{index}/{len(nodes)}] {node.name}", flush=True)
        launched.append((node, time.time()))
        command = [
            sys.executable, "-m", "clearml_pipeline.step_task", "--step", node.step.name, "--offline",
            "--dataset", str(dataset), "--input", ",".join(str(out / "steps" / p) for p in node.parents),
            "--shard", node.shard_spec, "--output", str(folder),
            "--config", str(config_path), "--sessions", str(out / "clearml"),
        ]
        try:
            code = run_step(command, env)
        except KeyboardInterrupt:
            return salvage(config, dataset, out, launched, started, interrupted=received() or signal.SIGINT)
        if code in INTERRUPTED_CODES:  # the step alone was signalled: the run stops as if this one was
            return salvage(config, dataset, out, launched, started, interrupted=code - 128)
        error = folder / "error.txt"
        detail = error.read_text(encoding="utf-8", errors="replace").strip() if code and error.is_file() else ""
        if code != 0 and node is nodes[0]:  # the dataset could not be listed: OUT gets nothing
            raise StepFailedError(node.name, code, detail)
        if code != 0:  # it failed or died: what is finished is kept, the rest fails saying so
            failed = f"step {node.name} {'failed' if detail else 'died'} (exit {code}){': ' + detail if detail else ''}"
            print(f"error: {failed}; every item's row is kept in {out / RESULTS}", file=sys.stderr)
            return salvage(config, dataset, out, launched, started, died=failed)
        print(f"      done in {time.perf_counter() - started:.1f} s", flush=True)
    publish(out / "steps" / nodes[-1].name, out, dataset)
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def run_step(command: list[str], env: dict[str, str]) -> int:
    """Run one step process (its output straight to the terminal); on an interrupt here, pass the signal on,
    wait for the step to write its rows (STEP_GRACE_S at most), then re-raise."""
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached the step too; a second signal there is ignored, so this one is safe.
        process.send_signal(received() or signal.SIGINT)
        try:
            process.wait(timeout=STEP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def publish(final: Path, out: Path, dataset: Path) -> None:
    """Move the last step's outputs up to OUT, where a user (and `evaluate`/`reproduce`) looks for them; of the
    audio, only the files of this run's rows; `source` as in every runtime (as_given)."""
    for name in FINAL_FILES:
        if (final / name).is_file():
            shutil.copyfile(final / name, out / name)
    for name in FINAL_FOLDERS:
        if (final / name).is_dir():
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(final / name, out / name)
    rows = list(read_rows_leniently(final / RESULTS).values())
    _copy_audio(rows, [final], out)
    write_rows(out / RESULTS, as_given(rows, dataset))


def as_given(rows: list[ItemResult], dataset: Path) -> list[ItemResult]:
    """A user folder's rows with `source` the input path as given (absolute, links kept), as the other runtimes
    write it; between steps it is relative to the dataset folder. A manifest's paths stay as the manifest has
    them (relative to the dataset folder)."""
    if not (dataset / MANIFEST).is_file():
        for row in rows:
            row.source = str(dataset / row.source)  # an absolute source (the fallback's) stays as it is
    return rows


def _copy_audio(rows: list[ItemResult], folders: list[Path], out: Path) -> bool:
    """Copy each row's audio file into OUT/audio from the first folder that has it; True if a row had to fail
    because none does."""
    (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    missing = False
    for row in rows:
        if not row.zh_audio:
            continue
        try:  # a step's rows are read back from disk: a path in them stays inside its folder, and inside OUT
            target = row.audio_path(out)
            found = next((p for folder in folders if (p := row.audio_path(folder)) and p.is_file()), None)
        except UnsafePathError as exc:
            row.fail(STAGES[-1].name, f"its audio file is not inside the step's output: {exc}")
            row.zh_audio, missing = None, True
            continue
        if found is None or target is None:
            row.fail(STAGES[-1].name, f"its audio file {row.zh_audio} is missing from the step's output")
            row.zh_audio, missing = None, True
        else:
            shutil.copyfile(found, target)
    return missing


def salvage(
    config: PipelineConfig,
    dataset: Path,
    out: Path,
    launched: list[tuple[Node, float]],
    started: float,
    interrupted: int | None = None,
    died: str = "",
) -> dict[str, Any]:
    """Every item's row in OUT after an interrupted or dead step: the last step that wrote all its rows, with what
    the stopped step finished laid over it; a row that has not been through every stage (and did not fail or
    have no speech earlier) is marked interrupted, or failed with `died`."""
    from clearml_pipeline.results import run_device, summarize, with_configured
    from clearml_pipeline.step_work import PARTIAL, dataset_rows

    folders = {node.name: out / "steps" / node.name for node, _ in launched}
    steps = [list(group) for _, group in groupby(launched, key=lambda each: each[0].step.name)]
    base: list[ItemResult] | None = None
    overlay: dict[str, ItemResult] = {}
    for group in reversed(steps):
        shards = [list(read_rows_leniently(folders[node.name] / RESULTS).values()) for node, _ in group]
        if all(shards) and all(len(rows) == len(shards[0]) for rows in shards):
            base = [shards[i % len(shards)][i] for i in range(len(shards[0]))]
            break
        for node, at in group:  # the step that stopped: its finished rows, if written during this run
            for name in (RESULTS, PARTIAL):
                path = folders[node.name] / name
                if path.is_file() and path.stat().st_mtime >= at:
                    overlay.update(read_rows_leniently(path))
    if base is None:  # stopped while listing the dataset: list it here
        base = dataset_rows(dataset, config.run.runner.limit)
    rows = [overlay.get(row.id, row) for row in base]
    last = STAGES[-1].name
    unfinished = [row for row in rows if row.ok and not row.no_speech and last not in row.latency_s]
    if died:
        for row in unfinished:
            row.fail(launched[-1][0].step.name, f"not processed: {died} before this item finished")
            finish(row)
    else:
        mark_interrupted(unfinished, "run interrupted before this item went through every stage")
    _copy_audio(rows, [folders[node.name] for node, _ in reversed(launched)], out)
    write_rows(out / RESULTS, as_given(rows, dataset))
    models, registry = _loaded_models(folders, launched)
    summary = summarize(rows, with_configured(models, config), {}, time.perf_counter() - started,
                        config.to_dict(), run_device(config.run))
    summary["registry"] = registry
    summary["interrupted"] = interrupted is not None
    if died:  # the run did not finish even where every row did (the evaluation step): the exit status says so
        summary["failed_step"] = died
    if interrupted is not None:
        summary["interrupted_by"] = interrupted
    (out / "summary.json").write_text(dumps(summary, indent=2), encoding="utf-8")
    return summary


def _loaded_models(folders: dict[str, Path], launched: list[tuple[Node, float]]) -> tuple[list[Any], dict[str, Any]]:
    """The models (and registry refs) the last step that finished during this run recorded in its run.json:
    every model loaded so far, with exact revisions."""
    from steps.base import ModelInfo

    for node, at in reversed(launched):
        path = folders[node.name] / "run.json"
        if path.is_file() and path.stat().st_mtime >= at:
            run = json.loads(path.read_text(encoding="utf-8"))
            return [ModelInfo(**m) for m in run.get("models", [])], run.get("registry", {})
    return [], {}


def sessions(out: Path, since: float = 0.0) -> list[Path]:
    """The offline session zips under OUT/clearml written since `since` (time.time(): this run's)."""
    return sorted(path for path in (out / "clearml").glob("*.zip") if path.stat().st_mtime >= since)
