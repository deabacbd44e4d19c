"""The controller's watch over the agents running its steps.

ClearML's PipelineController waits for a step for as long as its task says `in_progress`. When the machine that
runs it dies (power, the container killed, the agent SIGKILLed with its children), nobody reports the task again:
the server drops the agent from its worker list once it has been silent for its registration timeout (600 s by
default), but the task itself stays `in_progress` until the server's watchdog stops it (2 h by default), and the
controller takes that stop for "an autoscaler will relaunch it" (ClearmlJob.is_stopped with
aborted_nonresponsive_as_running). The pipeline would hang. This watch fails such a task, saying why; the
controller's own retry (--step-retries) then relaunches it in place, and it resumes from its last checkpoint.
"""

from __future__ import annotations

import threading
from typing import Any

MISSES_TO_FAIL = 2  # checks in a row that find the agent gone: a worker re-registering is not a lost one


def lost_steps(running: list[Any], workers: set[str], misses: dict[str, int]) -> list[Any]:
    """Of the running step tasks, those whose agent has been missing from `workers` for MISSES_TO_FAIL checks;
    `misses` carries the counts from one check to the next."""
    lost = []
    for task in running:
        worker = getattr(task, "last_worker", None)
        if not worker or worker in workers:
            misses.pop(task.id, None)
            continue
        misses[task.id] = misses.get(task.id, 0) + 1
        if misses[task.id] >= MISSES_TO_FAIL:
            lost.append(task)
            del misses[task.id]
    return lost


def check_agents(client: Any, controller_id: str, misses: dict[str, int]) -> list[str]:
    """One check: fail the running steps of this controller whose agent is gone; returns what was said."""
    from clearml import Task

    running = client.tasks.get_all(parent=controller_id, status=["in_progress"],
                                   only_fields=["id", "name", "last_worker"])
    workers = {worker.id for worker in client.workers.get_all()}
    said = []
    for task in lost_steps(list(running), workers, misses):
        reason = f"its agent {task.last_worker} left the server's worker list while running it"
        Task.get_task(task_id=task.id).mark_failed(status_reason=reason, status_message="agent lost", force=True)
        said.append(f"step {task.name} ({task.id}): {reason}: failed, so that the pipeline relaunches it "
                    f"(it resumes from its last checkpoint)")
    return said


def watch_agents(controller_id: str, every_s: float) -> threading.Event:
    """Check every `every_s` seconds in a daemon thread until the returned event is set."""
    from clearml.backend_api.session.client import APIClient

    stop = threading.Event()

    def loop() -> None:
        client, misses = APIClient(), {}
        while not stop.wait(every_s):
            try:
                for line in check_agents(client, controller_id, misses):
                    print(f"warning: {line}", flush=True)
            except Exception as exc:  # noqa: BLE001 - a server hiccup must not end the watch; the next check retries
                print(f"warning: could not check the steps' agents: {exc}", flush=True)

    threading.Thread(target=loop, name="s2st-agent-watch", daemon=True).start()
    return stop
