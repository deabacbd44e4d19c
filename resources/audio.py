"""Audio I/O shared by every stage: decode any file to mono float32 at a target rate.

soundfile (libsndfile >= 1.1) decodes wav, flac, ogg/vorbis/opus and mp3; soxr is the resampler
(a band-limited VHQ filter, not naive interpolation, so 48 kHz Common Voice mp3s reach Whisper's 16 kHz
without aliasing).
"""

from __future__ import annotations

import os
import re
import stat
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


# Decode limits. A header is data: a 3.7 MB FLAC can declare 1100 s of 8-channel 384 kHz audio (12.6 GiB as
# float32), which a duration limit alone lets through. So the decoded size is bounded too: at most
# `max_seconds` of 48 kHz stereo worth of samples (frames x channels), checked on the header before decoding
# and again while decoding (a header can under-state). 48 kHz stereo is what real speech recordings use at
# most (Common Voice: 48 kHz mono), so a normal file within the duration limit always fits; a 96 kHz mono or
# 5.1 file fits for a proportionally shorter time. With the pipeline's 1200 s default that is 115.2 M
# samples; decoding down-mixes each block to mono, so memory stays near 4 bytes x frames (<= 461 MB).
DEFAULT_MAX_SECONDS = 1200.0  # the pipeline's --max-audio-seconds default
BUDGET_SAMPLE_RATE = 48_000
BUDGET_CHANNELS = 2
MIN_SAMPLE_RATE = 1_000  # below this no speech survives; above the max, no recorder writes it
MAX_SAMPLE_RATE = 384_000
BLOCK_FRAMES = 1 << 16  # frames per decoded block: 2 MiB at 8 channels
_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's SF_COUNT_MAX: a header that does not give its length


class MissingAudioError(AudioError):
    """The path does not exist, or is a symlink whose target does not."""


class NotAFileError(AudioError):
    """A directory, FIFO, socket or device where an audio file was expected."""


class EmptyAudioError(AudioError):
    """0 bytes, or a valid header with no samples."""


class OversizeAudioError(AudioError):
    """A header (or the decoded stream) over the decode limits: too many samples, or an implausible rate."""


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header declares, before any decoding."""

    frames: int
    channels: int
    sample_rate: int
    format: str

    @property
    def seconds(self) -> float:
        return float(self.frames) / float(self.sample_rate) if self.sample_rate else 0.0

    @property
    def samples(self) -> int:
        return self.frames * self.channels


def decode_budget(max_seconds: float) -> int:
    """The most samples (frames x channels) a file may decode to: `max_seconds` of 48 kHz stereo."""
    return int(max_seconds * BUDGET_SAMPLE_RATE * BUDGET_CHANNELS)


def check_file(path: Path) -> None:
    """What the path is, before libsndfile opens it: its messages say 'format not recognised' or 'possibly a
    pipe?' for a missing, empty or special file, and opening a FIFO would block until something writes to it."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        if path.is_symlink():
            target = Path(os.readlink(path)).name  # the name only: reports stay free of machine paths
            raise MissingAudioError(
                f"{path.name} is a dangling symlink (its target {target!r} does not exist)"
            ) from exc
        raise MissingAudioError(f"cannot read {path.name}: it does not exist") from exc
    except OSError as exc:  # permission on a parent, a symlink loop, a name too long
        raise AudioError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise NotAFileError(f"{path.name} is a directory, not an audio file")
    if stat.S_ISFIFO(mode):
        raise NotAFileError(f"{path.name} is a FIFO (named pipe), not an audio file; pipes are not read")
    if not stat.S_ISREG(mode):
        kind = "socket" if stat.S_ISSOCK(mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special"
        raise NotAFileError(f"{path.name} is a {kind} file, not an audio file")
    if st.st_size == 0:
        raise EmptyAudioError(f"{path.name} is an empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"cannot read {path.name}: permission denied")


_MAGIC = ((b"fLaC", "FLAC"), (b"RIFF", "WAV"), (b"OggS", "Ogg"), (b"ID3", "MP3"), (b"FORM", "AIFF"))


def _not_decodable(path: Path, exc: Exception) -> AudioError:
    """'not decodable audio', with what the file looks like instead of libsndfile's guess.

    libsndfile says "File does not exist or is not a regular file (possibly a pipe?)" for a text file named
    .mp3; check_file has already ruled all of that out, so the message describes the contents instead."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        head = b""
    reason = str(exc).replace(str(path), path.name).split("\n")[0].strip()
    reason = re.sub(r"^Error opening '[^']*': ", "", reason)
    if "possibly a pipe" in reason:
        reason = ""
    container = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if container is not None:
        what = f"a {container} header, but the data cannot be decoded"
    elif _looks_like_text(head):
        what = f"it is a text file (starts {head[:24].decode('utf-8', 'replace')!r})"
    else:
        what = f"unrecognised contents (starts {head[:8]!r})"
    suffix = path.suffix.lower()
    if suffix and container is None:
        what += f", not {suffix[1:]} audio"
    return AudioError(f"{path.name}: not decodable audio: {what}" + (f" ({reason})" if reason else ""))


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the 512-byte boundary
            return False
        text = head[: exc.start].decode("utf-8")
    return sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text)


def _header(f: sf.SoundFile, name: str) -> AudioHeader:
    header = AudioHeader(int(f.frames), int(f.channels), int(f.samplerate), str(f.format))
    if header.frames >= _UNKNOWN_FRAMES or header.frames < 0:
        # e.g. a FLAC whose STREAMINFO total is 0; libsndfile cannot decode those reliably anyway.
        raise AudioError(f"{name}: its header does not give its length; re-encode it")
    return header


def probe(path: str | Path) -> AudioHeader:
    """The header's frames, channels and rate, without decoding (cheap enough for manifests and limits)."""
    path = Path(path)
    check_file(path)
    try:
        with sf.SoundFile(os.fsencode(path)) as f:  # bytes: a file name that is not UTF-8 opens too
            return _header(f, path.name)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _not_decodable(path, exc) from exc


def check_header(header: AudioHeader, name: str, max_seconds: float = DEFAULT_MAX_SECONDS) -> None:
    """Refuse, before decoding, a header whose decoded size is over decode_budget(max_seconds)."""
    declared = f"{header.channels} channel(s) at {header.sample_rate} Hz"
    if not MIN_SAMPLE_RATE <= header.sample_rate <= MAX_SAMPLE_RATE:
        raise OversizeAudioError(
            f"{name}: its header declares {declared}, outside the {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz accepted"
        )
    budget = decode_budget(max_seconds)
    if header.samples > budget:
        raise OversizeAudioError(
            f"{name}: its header declares {header.seconds:.0f} s of {declared} = {header.samples / 1e6:.1f} M "
            f"samples ({header.samples * 4 / 2**30:.1f} GiB as float32), over the decode limit of "
            f"{budget / 1e6:.1f} M samples ({max_seconds:g} s of 48 kHz stereo)"
        )


def _decode_mono(f: sf.SoundFile, header: AudioHeader, name: str, budget: int) -> np.ndarray:
    """Read block by block, down-mixing each block, so memory is the mono length plus one block.

    f.read in a loop rather than SoundFile.blocks: read returns only the frames actually decoded, while blocks()
    ignores that and keeps yielding its whole (stale) buffer up to the header's count when a header over-states
    the length. soundfile stops at the header's count on seekable files; the running count guards the rest."""
    mono = np.empty(header.frames, dtype=np.float32)  # header.samples <= budget was checked
    extra: list[np.ndarray] = []
    filled = decoded = 0
    while True:
        block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        if not len(block):
            break
        decoded += block.size
        if decoded > budget:
            raise OversizeAudioError(f"{name} decodes to more than its header declares, over the decode limit")
        down = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
        if not np.isfinite(down).all():
            raise AudioError(f"{name} holds non-finite samples (NaN or Inf)")
        take = min(len(down), len(mono) - filled)
        mono[filled : filled + take] = down[:take]
        filled += take
        if take < len(down):
            extra.append(down[take:])
    return np.concatenate([mono[:filled], *extra]) if extra else mono[:filled]


def load_audio(
    path: str | Path, target_sr: int = WHISPER_SAMPLE_RATE, max_seconds: float = DEFAULT_MAX_SECONDS
) -> Audio:
    """Decode `path` to mono float32 at `target_sr`, or raise AudioError with a reason a person can act on.

    `max_seconds` sets the decode limit (decode_budget): pass the caller's duration limit when it is over the
    default. The duration limit itself stays the caller's (it reports it in its own words)."""
    path = Path(path)
    check_file(path)
    try:
        with sf.SoundFile(os.fsencode(path)) as f:  # bytes: a file name that is not UTF-8 opens too
            header = _header(f, path.name)
            check_header(header, path.name, max_seconds)
            samples = _decode_mono(f, header, path.name, decode_budget(max_seconds))
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _not_decodable(path, exc) from exc
    if samples.size == 0:
        raise EmptyAudioError(f"{path.name} holds no audio samples")
    resampled = resample(samples, header.sample_rate, target_sr)
    if resampled.size == 0:  # e.g. one sample at 192 kHz: nothing is left at 16 kHz
        raise EmptyAudioError(
            f"{path.name} holds {samples.size} sample(s) at {header.sample_rate} Hz: none at {target_sr} Hz"
        )
    return Audio(resampled, target_sr)


def probe_seconds(path: str | Path) -> float:
    """Duration from the file header, without decoding (cheap enough for manifests and length limits)."""
    return probe(path).seconds


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples -> int16 with clipping (the int16 conversion every playback tool expects)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM WAV."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # A bytes path (soundfile encodes a str one strictly, so an OUT whose name is not UTF-8 failed); the format
    # named, as a bytes path's suffix is not read.
    sf.write(os.fsencode(path), to_pcm16(samples), sample_rate, subtype="PCM_16", format="WAV")


def frame_rms_dbfs(samples: np.ndarray, sample_rate: int, frame_ms: float = 30.0) -> np.ndarray:
    """Per-frame RMS level in dBFS (non-overlapping frames)."""
    frame = max(1, int(sample_rate * frame_ms / 1000))
    if len(samples) == 0:
        return np.zeros(0)  # no frames (numpy's mean of nothing would warn and give NaN)
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
