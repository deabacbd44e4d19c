"""Agent tier: real clearml-agent daemons run the pipeline against the ClearML stand-in, as on a real server.

  1. `python -m data_prep ingest --clearml` registers a two-clip Common Voice fixture as a ClearML Dataset;
  2. three `clearml-agent daemon` processes listen: `services` (--services-mode, for controllers), `gpu` and `cpu`
     (all --cpu-only here), each running tasks with this project's interpreter from a clone of the task's commit;
  3. `python -m clearml_pipeline run --dataset ID --models fixtures` is run from a user's checkout whose origin is
     a bare repository: it registers the controller, enqueues it on `services` and returns; the services agent
     runs the controller, which enqueues each step on `gpu` or `cpu`, where the other agents pick them up;
  4. the web UI's "Run" (pipelines.start_pipeline, tests/web_ui.py) starts it again with mt_num_beams edited;
  5. `bench --tracking server --queue gpu` is enqueued and the gpu agent runs the throughput experiment;
  6. a run on samples/ whose speech translation process is SIGKILLed right after its first checkpoint, and
     whose gpu agent (daemon and step) is SIGKILLed right after machine translation's first checkpoint;
  7. the first dataset goes through `run --local` (no server) for comparison.
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
UI_BEAMS = 1  # the web UI run changes mt_num_beams from its default 4 to greedy
BENCH_FLAGS = ("--requests", "4", "--standalone-items", "2", "--replicas", "1:1:1", "--st-max-new-tokens", "8",
               "--mt-max-new-tokens", "8", "--tts-maxlenratio", "4")
SPARE_GPU_WORKER = "agent:gpu-2"  # started on `gpu` when the fault run kills the first gpu agent
WORKER_TIMEOUT_S = 15  # the server's worker timeout (600 s) for the fault run, whose agents report every second
PIPELINE_TIMEOUT_S = 600  # five step processes and the controller on a busy 2-core machine take ~2-4 minutes
# The agent reads and (services mode) sets its runtime properties: endpoints no schema either client ships declares;
# the stand-in refuses it like an unknown endpoint and the agent carries on, as with an open-source server.
EXPECTED_REFUSALS = {"workers.get_runtime_properties", "workers.set_runtime_properties",
                     # The web UI's rerun takes two steps from the cache; it deletes the step tasks it had made for
                     # them, first listing their events (files to delete): no events queries here (stand-in README).
                     "events.get_task_events", "tasks.delete"}
# Every field of a result row the fixture models make deterministic (latencies and the source path are not).
COMPARED = ("id", "status", "error", "stage", "no_speech", "audio_seconds", "en_text", "zh_text", "zh_audio",
            "zh_audio_seconds", "unsayable", "segments")


def cli(standin: Standin, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return python_m(*args, env=standin.subprocess_env(), timeout=timeout)


def wait_for_task(standin: Standin, pool: AgentPool, task_id: str) -> str:
    """The task's final status, or a description of why it never got one."""
    deadline = time.monotonic() + PIPELINE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = standin.task(task_id)["status"]
        if status in ("completed", "failed", "stopped", "published"):
            return status
        if dead := pool.dead():
            return f"agents exited: {dead}"
        time.sleep(2)
    return f"still {standin.task(task_id)['status']} after {PIPELINE_TIMEOUT_S} s"


def run_pipeline(standin: Standin, checkout: Path, dataset_id: str, *flags: str
                 ) -> tuple[subprocess.CompletedProcess[str], str]:
    """`run` as a user starts it from their checkout: returns the process and the controller's task id."""
    launch = subprocess.run(
        [sys.executable, "-m", "clearml_pipeline", "run", "--dataset", dataset_id, "--models", "fixtures",
         "--poll-seconds", "1", "--eval-intelligibility", "false", *flags],
        cwd=checkout, env=standin.subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    found = re.search(r"^pipeline (\w+) launched", launch.stdout, re.MULTILINE)
    return launch, found.group(1) if found else ""


def clearml_dataset_id(ingest_stdout: str) -> str:
    return re.search(r"^clearml .* id=(\w+)", ingest_stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]


def fault_at_first_checkpoint(standin: Standin, pool: AgentPool, body: dict[str, Any], done: dict[str, Any]) -> None:
    """Stand-in hook on tasks.add_or_update_artifacts: once a step has its first `partial` checkpoint stored (file
    uploaded, artifact recorded), and before the call is answered: speech translation's process is SIGKILLed;
    for machine translation the whole gpu agent is (its machine died) and a new one starts on the queue."""
    task = standin.state.tasks[body["task"]]
    uri = next((a.get("uri") or "" for a in body["artifacts"] if a["key"] == "partial"), "")
    if not uri or task["name"] in done or not standin.file_path(uri).is_file():
        return
    if task["name"] == "speech_translation":
        done[task["name"]] = pool.kill_task(body["task"])
    elif task["name"] == "machine_translation":
        done[task["name"]] = pool.kill_agent(WORKERS["gpu"])
        pool.start("gpu", SPARE_GPU_WORKER)


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
        dataset_id = clearml_dataset_id(ingest)
        folder = Path(re.search(r"^dataset\s+(\S+)", ingest, re.MULTILINE).group(1))  # type: ignore[union-attr]
        packages_before = installed_packages()
        # Agents report every second, so that a dead one drops out of the server's worker list within seconds.
        env = {**standin.subprocess_env(), "CLEARML_AGENT_STATUS_REPORT_FREQ_SEC": "1"}
        pool = AgentPool(root / "agent", env, standin.config_file)
        leftovers: list[int] = []
        try:
            for queue, worker in WORKERS.items():
                pool.start(queue, worker, services_mode=queue == "services")
            started = time.monotonic()
            launch, controller_id = run_pipeline(standin, checkout, dataset_id)
            outcome = wait_for_task(standin, pool, controller_id) if controller_id else "not launched"
            elapsed = time.monotonic() - started
            # A user opens the finished run in the web UI, presses "Run", edits one parameter and starts it.
            ui = cli(standin, "tests.web_ui", controller_id, "services", f"mt_num_beams={UI_BEAMS}", timeout=120)
            ui_id = ui.stdout.strip().splitlines()[-1] if ui.returncode == 0 and ui.stdout.strip() else ""
            ui_outcome = wait_for_task(standin, pool, ui_id) if ui_id else f"not started: {ui.stderr[-2000:]}"
            # The throughput experiment as a task: enqueued from the checkout, run by the gpu agent from its clone.
            bench = subprocess.run(
                [sys.executable, "-m", "clearml_pipeline", "bench", "--input", "samples", "--output",
                 str(root / "bench"), "--models", "fixtures", *BENCH_FLAGS, "--tracking", "server", "--queue", "gpu"],
                cwd=checkout, env=standin.subprocess_env(), capture_output=True, text=True, timeout=300,
            )
            found = re.search(r"^bench task (\w+) queued", bench.stdout, re.MULTILINE)
            bench_id = found.group(1) if found else ""
            bench_outcome = (wait_for_task(standin, pool, bench_id) if bench_id
                             else f"not queued: {bench.stderr[-2000:]}")
            # A step's process is killed (SIGKILL) right after its first checkpoint: the agent reports the task
            # failed, the controller relaunches it in place, and the new attempt resumes from the checkpoint.
            # Then a whole agent dies mid-step: the controller's agent watch fails the step, a spare agent resumes it.
            samples = ok(cli(standin, "data_prep", "ingest", "--source", "folder", "--path",
                             str(checkout / "samples"), "--out", str(root / "datasets"), "--no-progress", "--clearml",
                             "--dataset-name", "samples"))
            killed: dict[str, list[int]] = {}
            standin.on_call("tasks.add_or_update_artifacts", lambda body: fault_at_first_checkpoint(
                standin, pool, body, killed))
            standin.state.worker_timeout_s = WORKER_TIMEOUT_S
            fault, fault_id = run_pipeline(standin, checkout, clearml_dataset_id(samples), "--batch-size", "1",
                                           "--agent-check-seconds", "2")
            fault_outcome = wait_for_task(standin, pool, fault_id) if fault_id else "not launched"
            errors = standin.errors  # before stopping: an agent ended mid-request leaves a broken pipe
            logs = {worker: pool.log(worker) for worker in (*WORKERS.values(), SPARE_GPU_WORKER)}
            logs["tasks"] = pool.task_logs()
        finally:
            leftovers = pool.stop()
        local_out = root / "local"
        local = cli(standin, "clearml_pipeline", "run", "--local", "--input", str(folder), "--output",
                    str(local_out), "--models", "fixtures", "--eval-intelligibility", "false")
        yield {
            "standin": standin, "launch": launch, "controller_id": controller_id, "outcome": outcome,
            "elapsed": elapsed, "logs": logs, "leftovers": leftovers, "origin": origin, "checkout": checkout,
            "dataset_id": dataset_id, "local": local, "local_out": local_out, "ui_id": ui_id, "ui_outcome": ui_outcome,
            "bench": bench, "bench_id": bench_id, "bench_outcome": bench_outcome, "bench_out": root / "bench",
            "fault": fault, "fault_id": fault_id, "fault_outcome": fault_outcome, "killed": killed,
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
    ran = {flow["controller_id"], *(task["id"] for task in steps.values())}
    assert len([d for d in standin.dispatches() if d["task"] in ran]) == len(NODES) + 1
    assert all(not standin.queued(queue) for queue in WORKERS)


def test_results_match_the_local_run_on_the_same_dataset(flow: dict[str, Any]) -> None:
    ok(flow["local"])
    standin = flow["standin"]
    steps = steps_of(standin, flow["controller_id"])
    remote = artifact_rows(standin, steps["evaluation"])
    local = [json.loads(line) for line in (flow["local_out"] / "results.jsonl").read_text().splitlines() if line]
    assert len(remote) == N_CLIPS and all(r["status"] == "ok" for r in remote), remote
    assert [{k: r.get(k) for k in COMPARED} for r in remote] == [{k: r.get(k) for k in COMPARED} for r in local]


def test_a_run_started_from_the_web_ui_with_an_edited_parameter_used_it(flow: dict[str, Any]) -> None:
    assert flow["ui_outcome"] == "completed", explain(flow)
    standin, ui_id = flow["standin"], flow["ui_id"]
    run = standin.task(ui_id)
    # The server's clone drops system tags; the controller tags itself as a pipeline again when the agent runs it.
    assert run["type"] == "controller" and "pipeline" in run["system_tags"]
    assert {d["task"]: d["worker"] for d in standin.dispatches()}[ui_id] == WORKERS["services"]
    assert run["hyperparams"]["Args"]["mt_num_beams"]["value"] == str(UI_BEAMS)
    first, again = steps_of(standin, flow["controller_id"]), steps_of(standin, ui_id)
    assert first["machine_translation"]["hyperparams"]["machine_translation"]["num_beams"]["value"] == "4"
    mt = again["machine_translation"]
    assert mt["hyperparams"]["machine_translation"]["num_beams"]["value"] == str(UI_BEAMS)
    assert mt["status"] == "completed" and mt["last_worker"] == WORKERS["gpu"]
    summary = standin.file_path(standin.artifacts(mt["id"])["summary"]["uri"]).read_text(encoding="utf-8")
    assert json.loads(summary)["config"]["machine_translation"]["num_beams"] == UI_BEAMS  # what the step ran with
    # Steps upstream of the edit have the same code and inputs: the new run took them from the first (cached).
    dag = json.loads(run["configuration"]["Pipeline"]["value"])
    assert {n: dag[n]["executed"] for n in ("ingest", "speech_translation")} == {
        n: first[n]["id"] for n in ("ingest", "speech_translation")}
    # Only the edited step and those downstream of it were sent to an agent again.
    dispatched = {d["task"] for d in standin.dispatches()}
    assert {n for n, t in again.items() if t["id"] in dispatched} == {
        "machine_translation", "speech_synthesis", "evaluation"}, {n: t["status"] for n, t in again.items()}
    rows = artifact_rows(standin, again["evaluation"])
    assert len(rows) == N_CLIPS and all(r["status"] == "ok" for r in rows), rows


def test_the_bench_enqueued_with_a_queue_ran_on_its_agent_and_reported_to_the_server(flow: dict[str, Any]) -> None:
    ok(flow["bench"])
    assert flow["bench_outcome"] == "completed", explain(flow)
    standin, bench_id = flow["standin"], flow["bench_id"]
    task = standin.task(bench_id)
    assert {d["task"]: d["worker"] for d in standin.dispatches()}[bench_id] == WORKERS["gpu"]
    assert task["name"] == "bench 1:1:1" and task["type"] == "testing"
    # The agent ran the command line the SDK recorded, from its clone at the checkout's commit.
    command = task["script"]["entry_point"].split()
    assert command[:5] == ["-m", "clearml_pipeline.__main__", "bench", "--input", "samples"], command
    assert task["script"]["repository"] == flow["origin"]
    scalars = standin.scalars(bench_id)
    for series in ("speedup", "bottleneck_efficiency", "end_to_end_items_per_s", "baseline_items_per_s"):
        assert scalars["summary"][series][0][1] > 0, series
    assert set(scalars["standalone_items_per_s"]) == {"speech_translation", "machine_translation", "speech_synthesis"}
    report = json.loads(standin.file_path(standin.artifacts(bench_id)["bench"]["uri"]).read_text(encoding="utf-8"))
    assert report["requests"] == report["ok"] == 4
    assert report["speedup"] == scalars["summary"]["speedup"][0][1]
    assert json.loads((flow["bench_out"] / "bench.json").read_text())["speedup"] == report["speedup"]


def failures(standin: Standin, task_id: str) -> list[str]:
    return [body.get("status_reason", "") for endpoint, body in standin.calls
            if endpoint == "tasks.failed" and body["task"] == task_id]


def task_log(standin: Standin, task_id: str) -> str:
    return "\n".join(e.get("msg", "") for e in standin.events(task_id, "log"))


def test_a_step_whose_process_was_killed_is_retried_and_resumes_from_its_checkpoint(flow: dict[str, Any]) -> None:
    assert flow["killed"].get("speech_translation"), "speech translation was never killed: " + explain(flow)
    assert flow["fault_outcome"] == "completed", explain(flow)
    standin = flow["standin"]
    st = steps_of(standin, flow["fault_id"])["speech_translation"]
    # Its agent saw the process die and failed the task; the controller sent the same task to the queue again.
    assert [reason for reason in failures(standin, st["id"]) if "exit code -9" in reason], failures(standin, st["id"])
    assert [d["worker"] for d in standin.dispatches() if d["task"] == st["id"]] == [WORKERS["gpu"]] * 2
    # batch size 1, a checkpoint every 4 groups: the first attempt's 4 rows were kept, the 5th computed again
    assert "speech_translation: resuming, 4 item(s) already done by an earlier attempt" in task_log(standin, st["id"])


def test_a_step_whose_agent_died_is_failed_by_the_controller_relaunched_and_resumed(flow: dict[str, Any]) -> None:
    assert flow["killed"].get("machine_translation"), "the gpu agent was never killed: " + explain(flow)
    assert flow["fault_outcome"] == "completed", explain(flow)
    standin = flow["standin"]
    steps = steps_of(standin, flow["fault_id"])
    mt = steps["machine_translation"]
    # Nobody was left to report the task: the controller failed it once its agent left the server's worker list.
    reasons = failures(standin, mt["id"])
    assert reasons == [f"its agent {WORKERS['gpu']} left the server's worker list while running it"], reasons
    assert "agent:gpu left the server's worker list" in task_log(standin, flow["fault_id"])
    assert [d["worker"] for d in standin.dispatches() if d["task"] == mt["id"]] == [WORKERS["gpu"], SPARE_GPU_WORKER]
    assert "machine_translation: resuming, 4 item(s) already done by an earlier attempt" in task_log(standin, mt["id"])
    # Every input is accounted for once, and each made it through both faults.
    rows = artifact_rows(standin, steps["evaluation"])
    assert sorted(r["id"] for r in rows) == sorted(p.stem for p in (flow["checkout"] / "samples").glob("*.wav"))
    assert all(r["status"] == "ok" and r["en_text"] and r["zh_text"] for r in rows), rows


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


def test_run_refuses_a_missing_queue_and_says_which_queues_no_agent_listens_to(tmp_path: Path) -> None:
    """No agent here: `run` must not leave a user's pipeline waiting in Pending without a word."""
    checkout, _ = checkout_with_origin(tmp_path)
    command = [sys.executable, "-m", "clearml_pipeline", "run", "--dataset", "0" * 32, "--models", "fixtures"]
    with start_standin(tmp_path / "standin") as standin:
        standin.add_queue("services")
        missing = subprocess.run(command, cwd=checkout, env=standin.subprocess_env(), capture_output=True,
                                 text=True, timeout=300)
        assert missing.returncode == 2, missing.stdout + missing.stderr
        assert "no queue named 'gpu', 'cpu' on the server" in missing.stderr
        assert standin.queued("services") == [] and not [t for t in standin.tasks() if t["type"] == "controller"]
        standin.add_queue("gpu")
        standin.add_queue("cpu")
        idle = subprocess.run(command, cwd=checkout, env=standin.subprocess_env(), capture_output=True, text=True,
                              timeout=300)
        assert idle.returncode == 0, idle.stdout + idle.stderr
        assert "warning: no agent listens to queue 'services': the controller will wait there" in idle.stdout
        assert "--queue services --services-mode" in idle.stdout
        assert "warning: no agent listens to queue 'gpu': the GPU steps will wait there" in idle.stdout
        assert "warning: no agent listens to queue 'cpu': the CPU steps will wait there" in idle.stdout
        launched = re.search(r"^pipeline (\w+) launched", idle.stdout, re.MULTILINE)
        assert launched and standin.queued("services") == [launched.group(1)]
        lookups = {("queues.get_by_id", "Invalid queue id: queue=services")}
        assert [e for e in standin.errors if e not in lookups] == []
