"""A real `clearml-agent daemon` against the ClearML stand-in: it registers, pulls a task from its queue, clones the
task's repository (a bare origin, file://) at the task's commit and runs it with this interpreter, installing
nothing. Every agent request is checked against the agent's own schema classes (tests/clearml_standin/agent_api.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from importlib.metadata import distributions
from pathlib import Path

from tests.agents import AgentPool, agent_python, git
from tests.clearml_standin import start_standin

# Endpoints no schema either client ships declares (runtime properties); refused, and the agent carries on.
EXPECTED_REFUSALS = {"workers.get_runtime_properties", "workers.set_runtime_properties"}
SCRIPT = 'from clearml import Task\nt = Task.init(project_name="p", task_name="hello")\nprint("ran on agent", t.id)\n'
CREATE = (
    "from clearml import Task\n"
    "t = Task.create(project_name='p', task_name='hello', script='hello.py', repo='.', working_directory='.',"
    " task_type='controller')\n"  # a type the agent's own 2.5 schema does not list: the server returns it anyway
    "Task.enqueue(t, queue_name='cpu')\nprint(t.id)\n"
)


def packages() -> list[str]:
    return sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())


def test_an_agent_pulls_a_task_clones_its_commit_and_runs_it(tmp_path: Path) -> None:
    repo, origin = tmp_path / "repo", tmp_path / "origin.git"
    repo.mkdir()
    (repo / "hello.py").write_text(SCRIPT)
    git("init", "-q", "--bare", str(origin), cwd=tmp_path)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "hello", cwd=repo)
    git("remote", "add", "origin", origin.as_uri(), cwd=repo)
    git("push", "-q", "-u", "origin", "main", cwd=repo)
    before = packages()
    with start_standin(tmp_path / "standin") as standin:
        standin.serve_agents(agent_python())
        standin.add_queue("cpu")
        created = subprocess.run([sys.executable, "-c", CREATE], cwd=repo, env=standin.subprocess_env(),
                                 capture_output=True, text=True, timeout=180)
        assert created.returncode == 0, created.stderr[-3000:]
        task_id = created.stdout.split()[-1]
        pool = AgentPool(tmp_path / "agent", standin.subprocess_env(), standin.config_file)
        try:
            pool.start("cpu", "agent:cpu", services_mode=True)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and standin.task(task_id)["status"] not in ("completed", "failed"):
                assert not pool.dead(), pool.log("agent:cpu")[-3000:]
                time.sleep(1)
            errors = standin.errors  # before stopping: an agent ended mid-request leaves a broken pipe
            status = standin.task(task_id)["status"]  # before stopping: a services agent that is ended marks
            logs = pool.log("agent:cpu") + pool.task_logs()  # the tasks it served as stopped
        finally:
            leftovers = pool.stop()
        task = standin.task(task_id)
        assert status == "completed", logs[-6000:]
        assert task["script"]["repository"] == origin.as_uri()
        assert f"ran on agent {task_id}" in logs
        assert [(d["task"], d["queue"], d["worker"]) for d in standin.dispatches()] == [(task_id, "cpu", "agent:cpu")]
        assert task["last_worker"] == "agent:cpu"
        # queues.get_by_id: the SDK's Task.enqueue tries the name as an id first, then looks it up by name.
        # events.add_batch: the agent's log reporter may flush an empty batch, which the server refuses too.
        refused = [e for e in errors if e[0] not in EXPECTED_REFUSALS and e[0] != "queues.get_by_id"
                   and e != ("events.add_batch", "Batch request requires a non-empty json-lines body")]
        assert refused == [], refused
        assert standin.workers() == []  # unregistered on exit
    assert leftovers == []
    assert packages() == before  # nothing was installed into this environment
