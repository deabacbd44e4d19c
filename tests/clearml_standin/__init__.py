"""Test-only stand-in for a ClearML server (API + files), driven by the real ClearML SDK. See README.md."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from .agent_api import agent_package_dir, register_agent_schemas
from .server import API_VERSION, StandinState, serve

__all__ = ["API_VERSION", "Standin", "start_standin"]

# Settings that keep SDK runs fast and self-contained; each one is there for a measured reason (see README.md).
_CONFIG_TEMPLATE = """
api {{
    api_server: "{api_url}"
    web_server: "{web_url}"
    files_server: "{files_url}"
    credentials {{
        access_key: "standin-access-key"
        secret_key: "standin-secret-key"
    }}
    http {{
        # A real outage should surface in seconds, not after urllib3's default backoff (see README.md).
        retries {{
            total: 2
            connect: 2
            read: 2
            redirect: 2
            status: 2
            backoff_factor: 0.1
        }}
    }}
}}
sdk {{
    storage {{
        cache {{
            # Keep downloads out of ~/.clearml so runs are isolated from each other and from the user.
            default_base_dir: "{cache_dir}"
        }}
    }}
    network {{
        # Default is 5 retries with a 10 s backoff on 5xx; a stand-in error should fail the test fast.
        iteration {{
            max_retries_on_server_error: 1
            retry_backoff_factor_sec: 0.1
        }}
    }}
    development {{
        # These two stop the multi-second (sometimes 300 s) hangs measured in the repository detection thread.
        report_use_subprocess: false
        vcs_repo_detect_async: false
        store_uncommitted_code_diff: false
        suppress_update_message: true
        worker {{
            report_period_sec: 1
            ping_period_sec: 30
        }}
    }}
}}
"""


class Standin:
    """A running stand-in: URLs, a clearml.conf, subprocess env, and read-only views of the recorded state."""

    def __init__(self, tmp_dir: str | os.PathLike[str]) -> None:
        self.root = Path(tmp_dir)
        self.files_root = self.root / "fileserver"
        self.files_root.mkdir(parents=True, exist_ok=True)
        self.state = StandinState(self.files_root)
        self._api, self._api_thread = serve("api", self.state)
        self._files, self._files_thread = serve("files", self.state)
        self.api_url = f"http://127.0.0.1:{self._api.server_address[1]}"
        self.files_url = f"http://127.0.0.1:{self._files.server_address[1]}"
        # No web UI is served; the SDK only formats links with this URL.
        self.web_url = f"http://127.0.0.1:{self._api.server_address[1]}/webapp"
        self.config_file = self.root / "clearml.conf"
        self.config_file.write_text(
            _CONFIG_TEMPLATE.format(
                api_url=self.api_url,
                web_url=self.web_url,
                files_url=self.files_url,
                cache_dir=(self.root / "cache").as_posix(),
            )
        )
        self.env: dict[str, str] = {
            "CLEARML_CONFIG_FILE": str(self.config_file),
            # Environment variables win over clearml.conf; pin them so a developer's own settings cannot leak in.
            "CLEARML_API_HOST": self.api_url,
            "CLEARML_WEB_HOST": self.web_url,
            "CLEARML_FILES_HOST": self.files_url,
            "CLEARML_API_ACCESS_KEY": "standin-access-key",
            "CLEARML_API_SECRET_KEY": "standin-secret-key",
            "CLEARML_OFFLINE_MODE": "0",
            "CLEARML_NO_DEFAULT_SERVER": "1",
            "CLEARML_CACHE_DIR": (self.root / "cache").as_posix(),
        }
        self._stopped = threading.Event()

    # ---------- lifecycle ----------

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        for server in (self._api, self._files):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Standin:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """os.environ (or base) without any CLEARML_*/TRAINS_* variables, plus the stand-in's env."""
        env = {
            k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(("CLEARML_", "TRAINS_"))
        }
        env.update(self.env)
        return env

    # ---------- inspection (deep copies, taken under the state lock) ----------

    def _copy(self, value: Any) -> Any:
        with self.state.lock:
            return copy.deepcopy(value)

    @property
    def calls(self) -> list[tuple[str, Any]]:
        return self._copy(self.state.calls)

    @property
    def errors(self) -> list[tuple[str, str]]:
        """Calls the stand-in rejected (endpoint, message): unknown endpoints, schema violations, bad ids."""
        return self._copy(self.state.errors)

    def tasks(self) -> list[dict]:
        return self._copy(list(self.state.tasks.values()))

    def task(self, task_id: str) -> dict:
        return self._copy(self.state.tasks[task_id])

    def projects(self) -> list[dict]:
        return self._copy(list(self.state.projects.values()))

    def project_name(self, project_id: str | None) -> str | None:
        with self.state.lock:
            p = self.state.projects.get(project_id or "")
            return p["name"] if p else None

    def events(self, task_id: str, event_type: str | None = None) -> list[dict]:
        with self.state.lock:
            evs = self.state.events.get(task_id, [])
            return copy.deepcopy([e for e in evs if event_type is None or e.get("type") == event_type])

    def scalars(self, task_id: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """{metric: {variant: [(iteration, value), ...]}} from the task's reported scalar events."""
        out: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for e in self.events(task_id, "training_stats_scalar"):
            out.setdefault(e["metric"], {}).setdefault(e["variant"], []).append((e.get("iter") or 0, e["value"]))
        return out

    def models(self) -> list[dict]:
        return self._copy(list(self.state.models.values()))

    def queues(self) -> list[dict]:
        return self._copy(list(self.state.queues.values()))

    def add_queue(self, name: str, default: bool = False) -> str:
        """Create a queue as an administrator would on a real server (the SDK never creates execution queues)."""
        with self.state.lock:
            body = {"name": name, "system_tags": ["default"] if default else []}
            return self.state.queues__create(None, body)["id"]

    def queued(self, queue_name: str) -> list[str]:
        """Ids of the tasks currently waiting in the named queue."""
        with self.state.lock:
            q = next((q for q in self.state.queues.values() if q["name"] == queue_name), None)
            return [e["task"] for e in q["entries"]] if q else []

    def dispatches(self) -> list[dict]:
        """{task, queue, worker, at} for every task a worker took from a queue (queues.get_next_task), in order."""
        return self._copy(self.state.dispatches)

    def workers(self) -> list[dict]:
        """The registered workers (agents), as workers.register/status_report left them, less those timed out."""
        with self.state.lock:
            return copy.deepcopy(self.state._live_workers())

    def serve_agents(self, agent_python: str | os.PathLike[str]) -> None:
        """Accept clearml-agent's requests (its own v2.5 schema classes, from the venv of `agent_python`)."""
        register_agent_schemas(agent_package_dir(Path(agent_python)))

    def on_call(self, endpoint: str, callback: Callable[[Any], None]) -> None:
        """Run `callback(body)` after each accepted `endpoint` call is applied and before it is answered (the
        caller still waits for the reply): where a test injects a fault at an exact point of a client's work."""
        with self.state.lock:
            self.state.hooks.setdefault(endpoint, []).append(callback)

    def artifacts(self, task_id: str) -> dict[str, dict]:
        """{key: artifact entry} as the task's execution.artifacts records them."""
        with self.state.lock:
            arts = (self.state.tasks[task_id].get("execution") or {}).get("artifacts") or []
            return {a["key"]: copy.deepcopy(a) for a in arts}

    def uploads(self) -> list[str]:
        return self._copy(self.state.uploads)

    def file_path(self, url: str) -> Path:
        """Local path of a files-server URL (for comparing uploaded bytes)."""
        if not url.startswith(self.files_url):
            raise ValueError(f"{url} is not on the stand-in's files server {self.files_url}")
        return self.files_root / unquote(url[len(self.files_url) :].lstrip("/"))


def start_standin(tmp_dir: str | os.PathLike[str]) -> Standin:
    """Start the API and files listeners on free 127.0.0.1 ports; use as a context manager or call .stop()."""
    return Standin(tmp_dir)
