"""Agent tier: real clearml-agent daemons run the pipeline against the ClearML stand-in, as on a real server.

  1. `python -m data_prep ingest --clearml` registers a two-clip Common Voice fixture as a ClearML Dataset;
  2. three `clearml-agent daemon` processes listen: `services` (--services-mode, for controllers), `gpu` and `cpu`
     (all --cpu-only here), each running tasks with this project's interpreter from a clone of the task's commit;
  3. `python -m clearml_pipeline run --dataset ID --models fixtures` is run from a user's checkout whose origin is
     a bare repository: it registers the controller, enqueues it on `services` and returns; the services agent
     runs the controller, which enqueues each step on `gpu` or `cpu`, where the other agents pick them up;
  4. the same dataset goes through `run --local` (no server) for comparison.
The tests read from the stand-in which worker took each task, and compare the final results with the local run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clearml_pipeline.pipeline import plan
from tests.agents import AgentPool, agent_python, checkout_with_origin
from tests.clearml_standin import Standin, start_standin
from tests.cli import ok, python_m
from tests.cv_fixture import covost_path, make_common_voice_fixture

N_CLIPS = 2
NODES = {node.name: node for node in plan()}  # ingest, speech_translation, machine_translation, ..., evaluation
WORKERS = {"services": "agent:services", "gpu": "agent:gpu", "cpu": "agent:cpu"}
PIPELINE_TIMEOUT_S = 600  # five step processes and the controller on a busy 2-core machine take ~2-4 minutes
# The agent reads and (services mode) sets its runtime properties: endpoints no schema either client ships declares;
# the stand-in refuses it like an unknown endpoint and the agent carries on, as with an open-source server.
EXPECTED_REFUSALS = {"workers.get_runtime_properties", "workers.set_runtime_properties"}
# Every field of a result row the fixture models make deterministic (latencies and the source path are not).
COMPARED = ("id", "status", "error", "stage", "no_speech", "audio_seconds", "en_text", "zh_text", "zh_audio",
            "zh_audio_seconds", "unsayable", "segments")


def cli(standin: Standin, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return python_m(*args, env=standin.subprocess_env(), timeout=timeout)


def wait_for_controller(standin: Standin, pool: AgentPool, controller_id: str) -> str:
    """The controller task's final status, or a description of why it never got one."""
    deadline = time.monotonic() + PIPELINE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = standin.task(controller_id)["status"]
        if status in ("completed", "failed", "stopped", "published"):
            return status
        if dead := pool.dead():
            return f"agents exited: {dead}"
        time.sleep(2)
    return f"still {standin.task(controller_id)['status']} after {PIPELINE_TIMEOUT_S} s"


@pytest.fixture(scope="module")
def flow(fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("agents")
    release = make_common_voice_fixture(root / "cv", n_good=N_CLIPS)
    checkout, origin = checkout_with_origin(root)
    with start_standin(root / "standin") as standin:
        standin.serve_agents(agent_python())
        for queue in WORKERS:
            standin.add_queue(queue)  # an administrator's job on a real server
        ingest = ok(cli(
            standin, "data_prep", "ingest", "--source", "common_voice", "--path", str(release), "--split",
            "validated", "--covost", str(covost_path(release)), "--out", str(root / "datasets"), "--no-progress",
            "--clearml", "--dataset-name", "cv-es-agents",
        ))
        dataset_id = re.search(r"^clearml .* id=(\w+)", ingest, re.MULTILINE).group(1)  # type: ignore[union-attr]
        folder = Path(re.search(r"^dataset\s+(\S+)", ingest, re.MULTILINE).group(1))  # type: ignore[union-attr]
        packages_before = installed_packages()
        pool = AgentPool(root / "agent", standin.subprocess_env(), standin.config_file)
        leftovers: list[int] = []
        try:
            for queue, worker in WORKERS.items():
                pool.start(queue, worker, services_mode=queue == "services")
            started = time.monotonic()
            launch = subprocess.run(
                [sys.executable, "-m", "clearml_pipeline", "run", "--dataset", dataset_id, "--models", "fixtures",
                 "--poll-seconds", "1", "--eval-intelligibility", "false"],
                cwd=checkout, env=standin.subprocess_env(), capture_output=True, text=True, timeout=300,
            )
            found = re.search(r"^pipeline (\w+) launched", launch.stdout, re.MULTILINE)
            controller_id = found.group(1) if found else ""
            outcome = wait_for_controller(standin, pool, controller_id) if controller_id else "not launched"
            elapsed = time.monotonic() - started
            errors = standin.errors  # before stopping: an agent ended mid-request leaves a broken pipe
            logs = {worker: pool.log(worker) for worker in WORKERS.values()}
            logs["tasks"] = pool.task_logs()
        finally:
            leftovers = pool.stop()
        local_out = root / "local"
        local = cli(standin, "clearml_pipeline", "run", "--local", "--input", str(folder), "--output",
                    str(local_out), "--models", "fixtures", "--eval-intelligibility", "false")
        yield {
            "standin": standin, "launch": launch, "controller_id": controller_id, "outcome": outcome,
            "elapsed": elapsed, "logs": logs, "leftovers": leftovers, "origin": origin, "checkout": checkout,
            "dataset_id": dataset_id, "local": local, "local_out": local_out,
            "packages": (packages_before, installed_packages()), "errors": errors,
        }


def installed_packages() -> list[str]:
    """The distributions of this interpreter's environment, versions included (the agents run tasks with it)."""
    from importlib.metadata import distributions

    return sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())


def steps_of(standin: Standin, controller_id: str) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in standin.tasks() if t.get("parent") == controller_id}


def artifact_rows(standin: Standin, task: dict[str, Any]) -> list[dict[str, Any]]:
    path = standin.file_path(standin.artifacts(task["id"])["results"]["uri"])
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def explain(flow: dict[str, Any]) -> str:
    tails = "\n".join(f"--- {w}\n{log[-3000:]}" for w, log in flow["logs"].items())
    launch = flow["launch"]
    refused = flow["standin"].errors
    return f"{flow['outcome']}\nrefused: {refused}\nlaunch: {launch.stdout[-1500:]}\n{launch.stderr[-3000:]}\n{tails}"


def test_the_services_agent_ran_the_controller_and_it_completed(flow: dict[str, Any]) -> None:
    ok(flow["launch"])
    assert flow["outcome"] == "completed", explain(flow)
    standin, controller_id = flow["standin"], flow["controller_id"]
    controller = standin.task(controller_id)
    assert controller["type"] == "controller" and "pipeline" in controller["system_tags"]
    # Recorded as the user's checkout: the bare origin at the commit the agents cloned.
    assert controller["script"]["repository"] == flow["origin"]
    assert controller["script"]["entry_point"].startswith("-m clearml_pipeline.__main__")
    dispatched = {d["task"]: d for d in standin.dispatches()}
    assert dispatched[controller_id]["queue"] == "services"
    assert dispatched[controller_id]["worker"] == WORKERS["services"]
    assert controller["last_worker"] == WORKERS["services"]


def test_each_step_ran_on_the_agent_of_its_queue(flow: dict[str, Any]) -> None:
    standin = flow["standin"]
    steps = steps_of(standin, flow["controller_id"])
    assert set(steps) == set(NODES), explain(flow)
    dispatched = {d["task"]: d for d in standin.dispatches()}
    commit = standin.task(flow["controller_id"])["script"]["version_num"]
    for name, task in steps.items():
        queue = NODES[name].step.queue
        assert task["status"] == "completed", (name, task.get("status_reason"), explain(flow))
        assert dispatched[task["id"]]["queue"] == queue and dispatched[task["id"]]["worker"] == WORKERS[queue]
        assert task["script"]["repository"] == flow["origin"] and task["script"]["version_num"] == commit
        assert task["script"]["entry_point"] == "clearml_pipeline/step_task.py"
        assert {"results", "run"} <= set(standin.artifacts(task["id"])), name
    assert "audio" in standin.artifacts(steps["speech_synthesis"]["id"])
    assert "metrics" in standin.artifacts(steps["evaluation"]["id"])
    # Each task was taken once (no retries were needed) and nothing is left waiting in a queue.
    assert len(standin.dispatches()) == len(NODES) + 1
    assert all(not standin.queued(queue) for queue in WORKERS)


def test_results_match_the_local_run_on_the_same_dataset(flow: dict[str, Any]) -> None:
    ok(flow["local"])
    standin = flow["standin"]
    steps = steps_of(standin, flow["controller_id"])
    remote = artifact_rows(standin, steps["evaluation"])
    local = [json.loads(line) for line in (flow["local_out"] / "results.jsonl").read_text().splitlines() if line]
    assert len(remote) == N_CLIPS and all(r["status"] == "ok" for r in remote), remote
    assert [{k: r.get(k) for k in COMPARED} for r in remote] == [{k: r.get(k) for k in COMPARED} for r in local]


def test_no_call_was_refused_and_no_process_was_left(flow: dict[str, Any]) -> None:
    # The SDK's enqueue by queue name first tries the name as a queue id (queues.get_by_id), then looks it up.
    sdk_lookups = {("queues.get_by_id", f"Invalid queue id: queue={queue}") for queue in WORKERS}
    refused = [e for e in flow["errors"] if e[0] not in EXPECTED_REFUSALS and e not in sdk_lookups]
    assert refused == [], refused
    assert flow["leftovers"] == []
    before, after = flow["packages"]
    assert before == after  # the agents installed nothing into the product's environment
    workers = {w["id"] for w in flow["standin"].workers()}
    assert workers == set(), workers  # every agent unregistered when it was stopped
