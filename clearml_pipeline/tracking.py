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
api {{ http {{ retries {{ total: 2, connect: 2, read: 2, redirect: 2, status: 2, backoff_factor: 0.1 }} }} }}
sdk {{
    storage {{ cache {{ default_base_dir: "{cache}" }} }}
    development {{
        report_use_subprocess: false
        vcs_repo_detect_async: false
        store_uncommitted_code_diff: false
        suppress_update_message: true
    }}
}}
"""


def offline_environment(folder: Path) -> dict[str, str]:
    """Environment for offline ClearML tasks whose sessions go under `folder`: our fast settings (written once to
    folder/clearml.conf) unless the user points CLEARML_CONFIG_FILE at their own."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "clearml.conf"
    if not config.exists():
        config.write_text(_OFFLINE_CONFIG.format(cache=(folder / "cache").as_posix()), encoding="utf-8")
    return {"CLEARML_CONFIG_FILE": os.environ.get("CLEARML_CONFIG_FILE", str(config)), "CLEARML_OFFLINE_MODE": "1"}


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
