"""Running the project's commands as a user does (`python -m ...` from the repository root) in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_m(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS` in the repository root; by default with no ClearML settings of the caller's."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout, after asserting it succeeded (showing its output tails when it did not)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout
