"""ClearML tracking: every bench and every pipeline step is a real ClearML Task.

With a server configured (clearml.conf or CLEARML_API_* variables) the task goes there; with `offline` it
is recorded as an offline session under OUT/clearml/, which `clearml-task --import-offline-session ZIP`
(or `Task.import_offline_session`) uploads to a server later. The settings written for offline runs stop the
multi-second hangs measured in the SDK's repository detection (see shared notes) and bound its retries.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

PROJECT = "s2st"
_OFFLINE_CONFIG = """
api { http { retries { total: 2, connect: 2, read: 2, redirect: 2, status: 2, backoff_factor: 0.1 } } }
sdk {
    development {
        report_use_subprocess: false
        vcs_repo_detect_async: false
        store_uncommitted_code_diff: false
        suppress_update_message: true
    }
}
"""


def offline_environment(folder: Path) -> dict[str, str]:
    """Environment for offline ClearML tasks whose sessions go under `folder`: our fast settings (written once to
    folder/clearml.conf) and the SDK's cache in folder/cache, unless the user points CLEARML_CONFIG_FILE at their
    own configuration (then their cache too)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "clearml.conf"
    if not config.exists():
        config.write_text(_OFFLINE_CONFIG, encoding="utf-8")
    chosen = os.environ.get("CLEARML_CONFIG_FILE", str(config))
    env = {"CLEARML_CONFIG_FILE": chosen, "CLEARML_OFFLINE_MODE": "1"}
    if chosen == str(config):  # ours (a step process inherits it from its run)
        # As a plain path in the environment. In clearml.conf a quote in it ended the HOCON string, a name that is
        # not UTF-8 could not be written, and its JSON escape ("o\\udce9") was read as a folder "o/udce9" beside OUT.
        env["CLEARML_CACHE_DIR"] = str(check_session_folder(folder) / "cache")
    return env


def check_offline_folder(folder: Path) -> None:
    """What offline_environment would refuse for `folder`, checked before a command touches its OUT."""
    if "CLEARML_CONFIG_FILE" not in os.environ:  # else the user's configuration says where the cache is
        check_session_folder(folder)


def check_session_folder(folder: Path) -> Path:
    """`folder` (absolute) if ClearML's SDK reads it back as the same folder, else ValueError. The SDK expands $VARS
    in its cache setting, and its storage helper turns backslashes into slashes: under `d$HOME` and `b\\s`, parts of
    the offline sessions went to `d/root/` and `b/s/` beside OUT. (`#`, `?` and `%` were tried too: the
    sessions stayed in OUT.)"""
    path = str(folder.absolute() / "cache")
    if "\\" in path or os.path.expandvars(path) != path:
        raise ValueError(
            f"ClearML cannot keep its offline sessions under {folder}: its SDK would read that path as another "
            "folder (it expands $VARS and reads a backslash as /); choose an output folder (--output, or --run for "
            "evaluate) without $ or \\ in its path"
        )
    return folder.absolute()


class Tracker:
    """A ClearML task for one run; scalar names are stable so runs compare side by side in the UI.

    Offline, the session zip is copied to `sessions` (OUT/clearml) when the task closes."""

    def __init__(
        self, name: str, sessions: Path, offline: bool, task_type: str = "testing", project: str = PROJECT
    ) -> None:
        self.sessions, self.offline = sessions, offline
        if offline:
            os.environ.update(offline_environment(sessions))
        from clearml import Task

        if offline:
            Task.set_offline(True)
        self.task = Task.init(
            project_name=project,
            task_name=name,
            task_type=task_type,
            reuse_last_task_id=False,
            auto_connect_frameworks=False,
            auto_connect_arg_parser=False,
            auto_resource_monitoring=False,
        )
        self.logger = self.task.get_logger()

    def connect(self, params: dict[str, Any], name: str) -> None:
        self.task.connect(params, name=name)

    def scalar(self, title: str, series: str, value: float | None, iteration: int = 0) -> None:
        if value is not None:
            self.logger.report_scalar(title, series, float(value), iteration=iteration)

    def artifact(self, name: str, path: Path) -> None:
        self.task.upload_artifact(name, artifact_object=str(path))

    def close(self) -> Path | None:
        """Finish the task; offline, returns the session zip copied under OUT/clearml/."""
        folder = self.task.get_offline_mode_folder() if self.offline else None
        self.task.close()
        if folder is None:
            return None
        zip_path = Path(f"{folder}.zip")
        target = self.sessions / zip_path.name
        shutil.copy2(zip_path, target)
        return target
