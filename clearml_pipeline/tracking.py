"""ClearML tracking: every bench (and, next, every stage) is a real ClearML Task.

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


class Tracker:
    """A ClearML task for one run; scalar names are stable so runs compare side by side in the UI."""

    def __init__(self, name: str, out: Path, offline: bool, task_type: str = "testing") -> None:
        self.out, self.offline = out, offline
        if offline:
            folder = out / "clearml"
            folder.mkdir(parents=True, exist_ok=True)
            if "CLEARML_CONFIG_FILE" not in os.environ:
                config = folder / "clearml.conf"
                config.write_text(_OFFLINE_CONFIG.format(cache=(folder / "cache").as_posix()), encoding="utf-8")
                os.environ["CLEARML_CONFIG_FILE"] = str(config)
            os.environ["CLEARML_OFFLINE_MODE"] = "1"
        from clearml import Task

        if offline:
            Task.set_offline(True)
        self.task = Task.init(
            project_name=PROJECT,
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
        target = self.out / "clearml" / zip_path.name
        shutil.copy2(zip_path, target)
        return target
