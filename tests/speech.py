"""Real speech for tests, made with espeak-ng (Spanish in, Mandarin for TTS checks) and converted with sox."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

SPANISH_SENTENCES = (
    "Hola, ¿cómo estás? Hoy hace buen tiempo.",
    "El gato duerme en la casa de mi abuela.",
    "Mañana vamos a la playa con nuestros amigos.",
)


def require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"tests need {', '.join(missing)}: run ./setup.sh (it installs them with apt-get)")


def speak(text: str, path: Path, voice: str = "es", rate: int | None = None, channels: int = 1) -> Path:
    """Speak `text` into `path`; the suffix picks the format (wav, flac, mp3, ogg); sox sets rate and channels."""
    require_tools()
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.stem + ".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    args = ["sox", str(raw)]
    args += ["-r", str(rate)] if rate else []
    args += ["-c", str(channels), str(path)]
    if path.suffix == ".mp3" or raw == path:
        # soundfile writes MP3 itself (libsndfile >= 1.1), so no sox mp3 handler is needed.
        data, sr = sf.read(str(raw), dtype="float32")
        if channels == 2:
            data = np.stack([data, data], axis=1)
        sf.write(str(path), data, sr, format="MP3")
    else:
        subprocess.run(args, check=True, capture_output=True)
    raw.unlink(missing_ok=True)
    return path


def tone(path: Path, seconds: float, sample_rate: int = 16_000, amplitude: float = 0.0) -> Path:
    """A sine at 220 Hz (amplitude 0: digital silence)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    sf.write(str(path), (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)
    return path
