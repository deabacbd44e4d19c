"""What clearml-agent and the web UI need from the stand-in: the agent's own schema classes, the queue and worker
endpoints, and the UI's "run pipeline" call (pipelines.start_pipeline).

The agent (3.0.3) ships a copy of the API schemas (``clearml_agent.backend_api.services.v2_5``) and sends its
requests as ``/v2.5/<service>.<action>``; the task processes it starts use the SDK (``/v2.23/``). Loading the
agent's package here lets every agent request be checked against the classes it was built from, exactly as SDK
requests are checked against the SDK's. The agent lives in its own virtualenv (its pins conflict with the
product's, see setup.sh), so its package is imported from that venv's site-packages by file location, without
putting the rest of that site-packages on sys.path.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

AGENT_API_VERSION = "2.5"
_AGENT_PACKAGE = "clearml_agent.backend_api.services.v2_5"
# The agent's hand-made calls name their version (2.13, 2.14, 2.15, 2.20): those the SDK ships a schema package
# for are checked against it; 2.14 and 2.15 (tasks.get_all with search_hidden, added in 2.14) against v2_20, the
# oldest shipped schema that has what they send.
_SDK_PACKAGES = {v: "clearml.backend_api.services.v" + v.replace(".", "_") for v in ("2.13", "2.20")}
_VERSION_ALIASES = {"2.14": "2.20", "2.15": "2.20"}

# Fields the agent sends on hand-made calls (session.get(service, action, **fields), not schema classes) that no
# schema it or the SDK ships declares; the stand-in drops them, as it drops the SDK's `method`. Nothing else the
# agent sends is exempt.
AGENT_EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "workers.status_report": ("is_daemon",),  # helper/resource_monitor.py send_report
    "workers.unregister": ("queues",),  # commands/worker.py _unregister(queues)
    # commands/worker.py execute: dequeue with new_status "in_progress"; the stand-in dequeues to `created` as
    # without it, and the agent's tasks.started right after sets in_progress anyway.
    "tasks.dequeue": ("new_status",),
}


def agent_compat(endpoint: str, body: Any, req_cls: type) -> Any:
    """The narrow exceptions for the agent's hand-made calls: its undeclared fields are dropped, a null `tags` in
    status reports is dropped, and their machine_stats, which it computes as floats (MB, MB/s) where the schema
    says integer, are rounded (the server's MachineStats model takes them as they come)."""
    if not isinstance(body, dict):
        return body
    for key in AGENT_EXTRA_FIELDS.get(endpoint, ()):
        body.pop(key, None)
    for key in ("tags", "machine_stats"):  # None for a worker without tags, and in the final report on exit
        if endpoint == "workers.status_report" and key in body and body[key] is None:
            del body[key]
    stats = body.get("machine_stats")
    if endpoint == "workers.status_report" and isinstance(stats, dict):
        declared = req_cls._schema.get("definitions", {}).get("machine_stats", {}).get("properties", {})
        for key, value in stats.items():
            types = declared.get(key, {}).get("type", [])
            if "integer" in types:
                stats[key] = round(value) if isinstance(value, float) else value
            elif "array" in types and declared[key].get("items", {}).get("type") == "integer":
                stats[key] = [round(v) if isinstance(v, float) else v for v in value or []]
    return body


def agent_package_dir(agent_python: Path) -> Path:
    """The clearml_agent package folder of the venv whose interpreter is `agent_python`."""
    proc = subprocess.run(
        [str(agent_python), "-c", "import clearml_agent, os; print(os.path.dirname(clearml_agent.__file__))"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return Path(proc.stdout.strip())


def register_agent_schemas(package_dir: Path) -> str:
    """Import the agent's schema package (once per process) and serve its URL version; returns that version."""
    from . import server

    if "clearml_agent" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "clearml_agent", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["clearml_agent"] = module
        spec.loader.exec_module(module)
    importlib.import_module(_AGENT_PACKAGE)
    server.SCHEMA_PACKAGES[AGENT_API_VERSION] = _AGENT_PACKAGE
    server.SCHEMA_PACKAGES.update(_SDK_PACKAGES)
    server.VERSION_ALIASES.update(_VERSION_ALIASES)
    return AGENT_API_VERSION


class WorkerEndpoints:
    """Workers and the queue endpoints agents use, mixed into StandinState (which holds `queues`, `tasks`).

    As on the server: a worker registers with the queue ids it listens to, reports its status (the task it runs)
    every few seconds, and pops tasks with queues.get_next_task, which removes the queue's first entry. Every pop
    is kept in `dispatches` (task, queue name, worker) so tests can say which agent ran which task; the server
    keeps that only as the task's `last_worker`, which the stand-in sets too."""

    queues: dict[str, dict]
    tasks: dict[str, dict]
    workers: dict[str, dict]
    dispatches: list[dict]
    # The server drops a worker silent for longer than the timeout it registered with (600 s when it gave none,
    # as clearml-agent does); a test that kills an agent shortens the default.
    worker_timeout_s: float = 600.0

    def _queue(self, queue_id: str | None, name: str | None = None) -> dict:
        raise NotImplementedError

    def _task(self, task_id: str) -> dict:
        raise NotImplementedError

    projects: dict[str, dict]

    def tasks__clone(self, req: Any, body: dict) -> dict:
        raise NotImplementedError

    def tasks__enqueue(self, req: Any, body: dict) -> dict:
        raise NotImplementedError

    def queues__get_default(self, req: Any, body: dict) -> dict:
        default = next((q for q in self.queues.values() if "default" in q.get("system_tags", [])), None)
        if default is None:
            from .server import ApiError

            raise ApiError(400, 0, "No default queue found")  # the server's answer when no queue is tagged default
        return {"id": default["id"], "name": default["name"]}

    def queues__get_next_task(self, req: Any, body: dict) -> dict:
        queue = self._queue(body["queue"])
        if not queue["entries"]:
            return {}
        entry = queue["entries"].pop(0)
        worker = self._caller_worker(queue["id"])
        task = self.tasks.get(entry["task"])
        if task is not None:
            task["last_worker"] = worker
            task["last_worker_report"] = _now()
        self.dispatches.append({"task": entry["task"], "queue": queue["name"], "worker": worker, "at": time.time()})
        return {"entry": entry}

    def _caller_worker(self, queue_id: str) -> str:
        # get_next_task carries no worker id; the agent polling a queue is the registered worker listening to it.
        # Each test queue has one agent, so that is unambiguous (several would be reported joined).
        names = sorted(w["id"] for w in self._live_workers() if queue_id in w["queues"])
        return ",".join(names) or "?"

    def tasks__dequeue(self, req: Any, body: dict) -> dict:
        task = self._task(body["task"])
        if task.get("status") != "queued":
            return {"updated": 0, "dequeued": 0}
        for queue in self.queues.values():
            queue["entries"][:] = [e for e in queue["entries"] if e["task"] != task["id"]]
        task["status"] = "created"
        return {"updated": 1, "dequeued": 1, "fields": {"status": "created"}}

    def queues__add_task(self, req: Any, body: dict) -> dict:
        queue = self._queue(body["queue"])
        queue["entries"].append({"task": body["task"], "added": _now()})
        return {"added": 1}

    def queues__remove_task(self, req: Any, body: dict) -> dict:
        queue = self._queue(body["queue"])
        before = len(queue["entries"])
        queue["entries"][:] = [e for e in queue["entries"] if e["task"] != body["task"]]
        return {"removed": before - len(queue["entries"])}

    def workers__register(self, req: Any, body: dict) -> dict:
        self.workers[body["worker"]] = {
            "id": body["worker"],
            "queues": list(body.get("queues") or []),
            "registered": _now(),
            "last_activity": _now(),
            "seen": time.monotonic(),
            "timeout": body.get("timeout"),
            "task": None,
        }
        return {}

    def _live_workers(self) -> list[dict]:
        """The registered workers, less (and forgetting) those silent for longer than their timeout."""
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if now - worker.get("seen", now) > (worker.get("timeout") or self.worker_timeout_s):
                del self.workers[worker["id"]]
        return list(self.workers.values())

    def workers__unregister(self, req: Any, body: dict) -> dict:
        self.workers.pop(body["worker"], None)
        return {}

    def workers__status_report(self, req: Any, body: dict) -> dict:
        worker = self.workers.setdefault(body["worker"], {"id": body["worker"], "queues": [], "registered": _now()})
        worker["last_activity"], worker["seen"] = _now(), time.monotonic()
        worker["task"] = body.get("task")
        if body.get("queues"):
            worker["queues"] = list(body["queues"])
        return {}

    def workers__get_all(self, req: Any, body: dict) -> dict:
        return {"workers": [self._worker_doc(w) for w in self._live_workers()]}

    def pipelines__start_pipeline(self, req: Any, body: dict) -> dict:
        """The web UI's "Run" on a pipeline, as the server's services/pipelines.py does it: clone the given run with
        its hyperparameters replaced by an `Args` section made of `args` (the dialog sends every pipeline
        parameter, edited or not), name the clone "<project basename> #N", and enqueue it."""
        args = body.get("args")
        hyperparams = None
        if args:
            hyperparams = {"Args": {str(a["name"]): {"section": "Args", "name": str(a["name"]),
                                                     "value": str(a.get("value"))} for a in args}}
        clone = self.tasks__clone(req, {"task": body["task"], **({"new_task_hyperparams": hyperparams}
                                                                  if hyperparams else {})})
        task = self._task(clone["id"])
        task["system_tags"] = []  # clone_task(system_tags=None) -> []: the controller tags itself when it runs
        project = self.projects.get(task.get("project") or "")
        if project:
            prefix = project["name"].rpartition("/")[2]
            pattern = re.compile(rf"{re.escape(prefix)}( #\d+)?$")
            count = sum(1 for t in self.tasks.values() if t.get("project") == task["project"]
                        and "pipeline" in t.get("system_tags", []) and pattern.match(t["name"]))
            task["name"] = f"{prefix} #{count}" if count else prefix
        enqueued = False
        if body.get("queue"):
            enqueued = bool(self.tasks__enqueue(req, {"task": task["id"], "queue": body["queue"]})["queued"])
        return {"pipeline": task["id"], "enqueued": enqueued}

    def _worker_doc(self, worker: dict) -> dict:
        queues = [{"id": q, "name": self.queues[q]["name"]} for q in worker["queues"] if q in self.queues]
        task = {"id": worker["task"]} if worker.get("task") else None
        return {"id": worker["id"], "register_time": worker["registered"], "last_activity_time":
                worker["last_activity"], "queues": queues, "task": task}


def _now() -> str:
    from .server import _now as now

    return now()
