"""Audio I/O shared by every stage: decode any file to mono float32 at a target rate.

soundfile (libsndfile >= 1.1) decodes wav, flac, ogg/vorbis/opus and mp3; soxr is the resampler
(a band-limited VHQ filter, not naive interpolation, so 48 kHz Common Voice mp3s reach Whisper's 16 kHz
without aliasing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
WHISPER_SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """An input file that cannot be used as speech: unreadable, empty or out of bounds."""


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples in [-1, 1] at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array; 1-D input is returned as is."""
    if samples.ndim == 1:
        return samples
    return samples.mean(axis=1)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples.astype(np.float32, copy=False), orig_sr, target_sr, quality="VHQ")


def check_file(path: Path) -> None:
    """Missing and empty files get their own messages (libsndfile would call both 'format not recognised')."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if size == 0:
        raise AudioError(f"{path.name} is an empty file (0 bytes)")


def load_audio(path: str | Path, target_sr: int = WHISPER_SAMPLE_RATE) -> Audio:
    """Decode `path` to mono float32 at `target_sr`, or raise AudioError with a reason a person can act on."""
    path = Path(path)
    check_file(path)
    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path.name} is not decodable audio ({exc})") from exc
    samples = to_mono(np.asarray(samples, dtype=np.float32))
    if samples.size == 0:
        raise AudioError(f"{path.name} holds no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path.name} holds non-finite samples (NaN or Inf)")
    return Audio(resample(samples, int(sr), target_sr), target_sr)


def probe_seconds(path: str | Path) -> float:
    """Duration from the file header, without decoding (cheap enough for manifests and length limits)."""
    check_file(Path(path))
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{Path(path).name} is not decodable audio ({exc})") from exc
    return float(info.frames) / float(info.samplerate) if info.samplerate else 0.0


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples -> int16 with clipping (the int16 conversion every playback tool expects)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM WAV."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), to_pcm16(samples), sample_rate, subtype="PCM_16")


def frame_rms_dbfs(samples: np.ndarray, sample_rate: int, frame_ms: float = 30.0) -> np.ndarray:
    """Per-frame RMS level in dBFS (non-overlapping frames)."""
    frame = max(1, int(sample_rate * frame_ms / 1000))
    n = len(samples) // frame
    frames = samples[None, :] if n == 0 else samples[: n * frame].reshape(n, frame)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def speech_seconds(audio: Audio, threshold_dbfs: float = -40.0, frame_ms: float = 30.0) -> float:
    """Seconds of frames louder than `threshold_dbfs`: an energy gate, cheap and model-independent.

    Whisper hallucinates text on silence ("Thank you.", "Subtitles by ..."); gating before the model
    means silence never reaches it, whatever its weights.
    """
    levels = frame_rms_dbfs(audio.samples, audio.sample_rate, frame_ms)
    return float((levels > threshold_dbfs).sum()) * frame_ms / 1000.0


def split_long(audio: Audio, max_seconds: float = 30.0, search_seconds: float = 5.0) -> list[Audio]:
    """Cut audio longer than `max_seconds` into chunks of at most `max_seconds`.

    Each cut lands on the quietest 30 ms frame in the last `search_seconds` before the limit, so words are
    rarely split; chunks are then translated in one batch and their texts joined.
    """
    sr = audio.sample_rate
    limit = int(max_seconds * sr)
    samples = audio.samples
    chunks: list[Audio] = []
    start = 0
    frame = int(0.03 * sr)
    while len(samples) - start > limit:
        window_start = start + limit - int(search_seconds * sr)
        window = samples[window_start : start + limit]
        levels = frame_rms_dbfs(window, sr, 30.0)
        cut = window_start + int(np.argmin(levels)) * frame + frame // 2
        cut = min(max(cut, start + frame), start + limit)
        chunks.append(Audio(samples[start:cut], sr))
        start = cut
    chunks.append(Audio(samples[start:], sr))
    return chunks
