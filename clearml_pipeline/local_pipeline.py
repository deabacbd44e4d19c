"""The pipeline with no server: each step is an offline ClearML task in its own process, as an agent would run it.

OUT/steps/<task>/ holds each task's output folder (the next step's input), OUT/clearml/<step>.<task>.zip each
step's offline session (`clearml-task --import-offline-session ZIP` uploads it to a server later), and OUT/ the
final results.jsonl, summary.json, audio/, metrics.json, report.md and plots/. A step that fails to start (a
missing model, a bad dataset) stops the run with its message; item failures are rows, never a stop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clearml_pipeline.pipeline import PipelineConfig, plan
from clearml_pipeline.tracking import offline_environment

REPO_ROOT = Path(__file__).resolve().parents[1]
FINAL_FILES = ("results.jsonl", "summary.json", "metrics.json", "report.md")
FINAL_FOLDERS = ("audio", "plots")


class StepFailedError(RuntimeError):
    def __init__(self, step: str, code: int, detail: str) -> None:
        super().__init__(f"step {step} failed (exit {code}){': ' + detail if detail else ''}")
        self.step, self.code = step, code


def run_locally(
    config: PipelineConfig, dataset: Path, out: Path, shards: dict[str, int] | None = None
) -> dict[str, Any]:
    """Run every task of the plan in order (a stage's shards one after another); returns the final summary."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "pipeline.json"
    config_path.write_text(json.dumps(config.to_dict() | {"shards": shards or {}}, indent=2), encoding="utf-8")
    env = os.environ | offline_environment(out / "clearml")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    nodes = plan(shards)
    for index, node in enumerate(nodes, start=1):
        folder = out / "steps" / node.name
        print(f"[{index}/{len(nodes)}] {node.name}", flush=True)
        started = time.perf_counter()
        command = [
            sys.executable, "-m", "clearml_pipeline.step_task", "--step", node.step.name, "--offline",
            "--dataset", str(dataset), "--input", ",".join(str(out / "steps" / p) for p in node.parents),
            "--shard", node.shard_spec, "--output", str(folder),
            "--config", str(config_path), "--sessions", str(out / "clearml"),
        ]
        # The step's output (its progress bar included) goes straight to the user's terminal.
        code = subprocess.run(command, env=env, cwd=REPO_ROOT).returncode
        if code != 0:
            error = folder / "error.txt"
            raise StepFailedError(node.name, code, error.read_text().strip() if error.is_file() else "")
        print(f"      done in {time.perf_counter() - started:.1f} s", flush=True)
    publish(out / "steps" / nodes[-1].name, out)
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def publish(final: Path, out: Path) -> None:
    """Move the last step's outputs up to OUT, where a user (and `evaluate`/`reproduce`) looks for them."""
    for name in FINAL_FILES:
        if (final / name).is_file():
            shutil.copyfile(final / name, out / name)
    for name in FINAL_FOLDERS:
        if (final / name).is_dir():
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(final / name, out / name)


def sessions(out: Path) -> list[Path]:
    return sorted((out / "clearml").glob("*.zip"))
