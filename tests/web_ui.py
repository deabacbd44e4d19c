"""What the ClearML web UI sends when a user presses "Run" on a pipeline and edits its parameters, as raw REST calls.

The UI's "new run" dialog reads the pipeline run's `Args` (its parameters), lets the user edit them, and sends one
`pipelines.start_pipeline` with the run's id, the chosen queue's id and every parameter as `args`; the server
clones the run with those `Args` and enqueues the clone. This module makes the same calls through the SDK's
Session (credentials and server from the environment), so a test drives the path a user's click takes:

    python -m tests.web_ui RUN_ID QUEUE_NAME mt_num_beams=1 ...   -> prints the new run's id
"""

from __future__ import annotations

import sys
from typing import Any


def call(session: Any, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    service, action = endpoint.split(".")
    reply = session.send_request(service, action, json=body)
    data = reply.json()
    if reply.status_code != 200:
        raise RuntimeError(f"{endpoint}: {data['meta']['result_msg']}")
    return data["data"]


def start_pipeline(run_id: str, queue_name: str, changes: dict[str, str]) -> str:
    from clearml.backend_api import Session

    session = Session()
    run = call(session, "tasks.get_by_id", {"task": run_id})["task"]
    params = {name: p.get("value", "") for name, p in run["hyperparams"]["Args"].items()}
    unknown = set(changes) - set(params)
    if unknown:
        raise ValueError(f"not pipeline parameters of {run_id}: {sorted(unknown)}")
    params.update(changes)
    queues = call(session, "queues.get_all", {"name": f"^{queue_name}$"})["queues"]
    started = call(session, "pipelines.start_pipeline", {
        "task": run_id, "queue": queues[0]["id"], "args": [{"name": k, "value": v} for k, v in params.items()],
    })
    if not started["enqueued"]:
        raise RuntimeError(f"the new run {started['pipeline']} was not enqueued")
    return str(started["pipeline"])


if __name__ == "__main__":
    edits = dict(arg.split("=", 1) for arg in sys.argv[3:])
    print(start_pipeline(sys.argv[1], sys.argv[2], edits))
