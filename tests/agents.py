"""Real `clearml-agent daemon` processes serving the ClearML stand-in, and the git origin they clone from.

The agent lives in its own virtualenv, `.venv-agent` (./setup.sh makes it: clearml-agent 3.0.3 pins requests and
filelock below what the product's stack installs). It runs tasks in venv mode with the product's interpreter
(CLEARML_AGENT_SKIP_PIP_VENV_INSTALL), from a fresh clone of the task's repository at the task's commit.
Every process an agent starts inherits a marker variable; teardown ends all processes carrying it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil

from tests.cli import REPO

AGENT_VENV = REPO / ".venv-agent"
MARKER = "S2ST_AGENT_TEST"

_AGENT_SECTION = """
agent {{
    package_manager {{ type: pip }}
    venvs_dir: "{root}/venvs"
    vcs_cache {{ enabled: true, path: "{root}/vcs-cache" }}
    pip_download_cache {{ enabled: false, path: "{root}/pip-cache" }}
    docker_pip_cache: "{root}/docker-pip-cache"
    docker_apt_cache: "{root}/docker-apt-cache"
    translate_ssh: false
}}
"""


def agent_python() -> Path:
    """The agent venv's interpreter; a clear failure (not a skip) when ./setup.sh has not made it."""
    python = Path(os.environ.get("S2ST_AGENT_PYTHON") or AGENT_VENV / "bin" / "python")
    if not (python.parent / "clearml-agent").is_file():
        raise RuntimeError(f"no clearml-agent next to {python}: run ./setup.sh (it makes {AGENT_VENV})")
    return python


def git(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com", GIT_COMMITTER_NAME="test",
               GIT_COMMITTER_EMAIL="test@example.com")
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def checkout_with_origin(root: Path) -> tuple[Path, str]:
    """A user's checkout of this working tree (tracked and untracked-but-not-ignored files, as committed here),
    whose `origin` is a bare repository the agents clone through file://. Returns (checkout, origin URL)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, timeout=60, check=True).stdout.split(b"\0")
    checkout = root / "checkout"
    for name in filter(None, (f.decode() for f in files)):
        source = REPO / name
        if source.is_file():  # a file deleted but not yet committed is listed and absent
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    origin = root / "origin.git"
    git("init", "-q", "--bare", str(origin), cwd=root)
    git("init", "-q", "-b", "main", cwd=checkout)
    git("add", "-A", cwd=checkout)
    git("commit", "-q", "-m", "snapshot of the working tree under test", cwd=checkout)
    url = origin.as_uri()
    git("remote", "add", "origin", url, cwd=checkout)
    git("push", "-q", "origin", "main", cwd=checkout)
    git("branch", "-q", "--set-upstream-to=origin/main", cwd=checkout)
    return checkout, url


class AgentPool:
    """`clearml-agent daemon` processes, one per queue, started and ended by the test."""

    def __init__(self, root: Path, env: dict[str, str], config_file: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        conf = root / "agent.conf"
        conf.write_text(config_file.read_text() + _AGENT_SECTION.format(root=root.as_posix()))
        self.env = {
            **env,
            "CLEARML_CONFIG_FILE": str(conf),
            # venv mode without installing anything: tasks run with the product's interpreter and its packages.
            "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL": sys.executable,
            # ... and install nothing into it: without this the agent installs the task's requirements (and its
            # own pip version, <22.3) into that interpreter's environment.
            "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "1",
            MARKER: self.marker,
            # The agents write each task's console log (and the config they hand it) to temporary files: here.
            "TMPDIR": str(root / "tmp"),
        }
        (root / "tmp").mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, queue: str, worker: str, services_mode: bool = False) -> None:
        cmd = [str(agent_python().parent / "clearml-agent"), "daemon", "--queue", queue, "--cpu-only",
               "--foreground", "--polling-interval", "1"]
        if services_mode:
            cmd.append("--services-mode")
        log = open(self.root / f"{worker.replace(':', '_')}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.procs[worker] = subprocess.Popen(
            cmd, env={**self.env, "CLEARML_WORKER_ID": worker}, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, worker: str) -> str:
        path = self.root / f"{worker.replace(':', '_')}.log"
        return path.read_text(errors="replace") if path.is_file() else "(never started)"

    def task_logs(self) -> str:
        """The console logs of the tasks the agents ran (.clearml_agent_out.*.txt in their TMPDIR), each's end."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((self.root / "tmp").glob(".clearml_agent_out*")))

    def dead(self) -> dict[str, int]:
        return {w: p.returncode for w, p in self.procs.items() if p.poll() is not None}

    def stop(self) -> list[int]:
        """End every agent and every process carrying this pool's marker (SIGTERM, then SIGKILL after 20 s);
        returns the pids that were still alive at the end (expected empty)."""
        ours = self._marked()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for p in ours:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(ours, timeout=20)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for p in alive + self._marked():
            with contextlib.suppress(psutil.Error):
                p.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()
        time.sleep(0.5)
        return [p.pid for p in self._marked()]

    def kill_task(self, task_id: str, script: str = "step_task.py") -> list[int]:
        """SIGKILL the processes an agent runs task `task_id` in (their CLEARML_TASK_ID, running `script`), as the
        kernel's OOM killer would; the agent's own processes live on. Returns the pids killed."""
        return self._kill_marked(lambda p: p.environ().get("CLEARML_TASK_ID") == task_id
                                 and any(script in a for a in p.cmdline()))

    def kill_agent(self, worker: str) -> list[int]:
        """SIGKILL an agent and every process it started (the task it runs included), as when its machine dies;
        it is no longer one of the pool's live agents. Returns the pids killed."""
        killed = self._kill_marked(lambda p: p.environ().get("CLEARML_WORKER_ID") == worker)
        self.procs.pop(worker).wait(timeout=10)
        return killed

    def _kill_marked(self, match: Callable[[psutil.Process], bool]) -> list[int]:
        """SIGKILL this pool's processes that `match`; returns their pids (one that ended meanwhile is skipped)."""
        killed = []
        for p in self._marked():
            with contextlib.suppress(psutil.Error):
                if match(p):
                    p.kill()
                    killed.append(p.pid)
        return killed

    def _marked(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.pid != os.getpid() and p.environ().get(MARKER) == self.marker:
                    found.append(p)
        return found
