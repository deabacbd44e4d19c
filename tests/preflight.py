"""Proves, before any test runs, that the external tools the tests use work: one sentence per missing package.

Without this, a machine missing (say) sox's mp3 handler fails 30 tests with 30 tracebacks from inside fixtures.
Each check does the real thing the tests do (speak a Spanish and a Mandarin word, write and read each audio
format) rather than only looking for a binary, because a binary can be present while a voice or format is not.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

SETUP_HINT = "run ./setup.sh (as root it installs the system packages) or apt-get install"


def _ok(*cmd: str) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 44  # more than a WAV header


def problems() -> list[str]:
    """One sentence per missing piece, naming the Debian package that brings it; empty when all is well."""
    found: list[str] = []
    with tempfile.TemporaryDirectory(prefix="s2st-preflight-") as tmp:
        folder = Path(tmp)
        if shutil.which("espeak-ng") is None:
            found.append(f"espeak-ng is not installed (package espeak-ng): {SETUP_HINT} espeak-ng")
        else:
            for voice, word in (("es", "hola"), ("cmn", "你好")):
                wav = folder / f"{voice}.wav"
                if not (_ok("espeak-ng", "-v", voice, "-w", str(wav), word) and _nonempty(wav)):
                    found.append(f"espeak-ng cannot speak with the {voice!r} voice (package espeak-ng-data)")
        if shutil.which("sox") is None:
            found.append(f"sox is not installed (package sox): {SETUP_HINT} sox")
        else:
            packages = {"wav": "sox", "flac": "libsox-fmt-base", "ogg": "libsox-fmt-base", "mp3": "libsox-fmt-mp3"}
            for fmt, package in packages.items():
                made, back = folder / f"tone.{fmt}", folder / f"tone-{fmt}.wav"
                wrote = _ok("sox", "-n", "-r", "48000", "-c", "1", str(made), "synth", "0.2", "sine", "440")
                if not (wrote and _ok("sox", str(made), str(back)) and _nonempty(back)):
                    found.append(f"sox cannot write and read {fmt} (package {package}): {SETUP_HINT} {package}")
        if shutil.which("git") is None:
            found.append(f"git is not installed (package git): {SETUP_HINT} git")
    return found
