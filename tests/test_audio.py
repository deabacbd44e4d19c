from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from resources.audio import (
    BLOCK_FRAMES,
    Audio,
    AudioError,
    MissingAudioError,
    NotAFileError,
    OversizeAudioError,
    decode_budget,
    load_audio,
    probe,
    probe_seconds,
    resample,
    speech_seconds,
    split_long,
    to_pcm16,
    write_wav,
)
from tests.speech import speak, tone


@pytest.mark.parametrize(
    ("suffix", "rate", "channels"), [(".wav", 22050, 1), (".flac", 48000, 2), (".ogg", 44100, 1), (".mp3", 48000, 2)]
)
def test_any_format_rate_and_layout_becomes_16k_mono(tmp_path: Path, suffix: str, rate: int, channels: int) -> None:
    path = speak("Hola, buenos días.", tmp_path / f"clip{suffix}", rate=rate, channels=channels)
    audio = load_audio(path)
    assert audio.sample_rate == 16_000
    assert audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert 0.5 < audio.seconds < 5.0
    assert speech_seconds(audio) > 0.3


def test_resampling_keeps_a_tone_and_removes_what_cannot_be_represented() -> None:
    sr = 48_000
    t = np.arange(sr) / sr
    low = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    high = np.sin(2 * np.pi * 12_000 * t).astype(np.float32)  # above 8 kHz Nyquist of 16 kHz
    out_low, out_high = resample(low, sr, 16_000), resample(high, sr, 16_000)
    assert len(out_low) == 16_000
    assert np.sqrt(np.mean(out_low[1000:-1000] ** 2)) == pytest.approx(1 / np.sqrt(2), rel=0.02)
    # A naive decimator would alias 12 kHz down to 4 kHz at full level; a proper filter removes it.
    assert np.sqrt(np.mean(out_high[1000:-1000] ** 2)) < 0.01


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is not audio at all" * 10, "not decodable"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "not decodable"),
    ],
)
def test_bad_files_raise_a_readable_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=reason):
        load_audio(path)


def test_missing_and_sampleless_files(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(tmp_path / "nope.wav")
    sf.write(str(tmp_path / "zero.wav"), np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(tmp_path / "zero.wav")
    # A few samples at 192 kHz resample to none at 16 kHz: empty too, not a zero-length "ok" clip (whose level
    # was the mean of nothing: numpy's warning, and NaN).
    sf.write(str(tmp_path / "blip.wav"), np.full(4, 0.5, dtype=np.float32), 192_000)
    with pytest.raises(AudioError, match=r"^blip\.wav holds 4 sample\(s\) at 192000 Hz: none at 16000 Hz$"):
        load_audio(tmp_path / "blip.wav")
    assert speech_seconds(Audio(np.zeros(0, dtype=np.float32), 16_000)) == 0.0


def test_a_file_name_that_is_not_utf8_is_read_and_written(tmp_path: Path) -> None:
    """os.fsdecode gives such a name lone surrogates, which soundfile encoded strictly: the file could not be
    opened, nor a WAV written into an OUT so named."""
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    clip = folder / os.fsdecode(b"ni\xf1o.wav")
    samples = np.sin(np.arange(16_000) * 0.05).astype(np.float32) * 0.5
    write_wav(clip, samples, 16_000)
    assert os.listdir(os.fsencode(folder)) == [b"ni\xf1o.wav"]
    assert probe(clip).frames == 16_000
    np.testing.assert_allclose(load_audio(clip).samples, samples, atol=1 / 32767)


def test_silence_has_no_speech_and_a_tone_does(tmp_path: Path) -> None:
    assert speech_seconds(load_audio(tone(tmp_path / "silence.wav", 2.0))) == 0.0
    assert speech_seconds(load_audio(tone(tmp_path / "tone.wav", 2.0, amplitude=0.3))) == pytest.approx(2.0, abs=0.05)


def test_split_long_cuts_at_quiet_points_and_keeps_every_sample() -> None:
    sr = 16_000
    rng = np.random.default_rng(0)
    samples = (0.3 * rng.standard_normal(75 * sr)).astype(np.float32)
    samples[27 * sr : int(27.2 * sr)] = 0.0  # a pause inside the search window before 30 s
    chunks = split_long(Audio(samples, sr), max_seconds=30.0)
    assert [round(c.seconds) for c in chunks][:1] == [27]
    assert all(c.seconds <= 30.0 for c in chunks)
    assert sum(len(c.samples) for c in chunks) == len(samples)
    assert len(split_long(Audio(samples[: 10 * sr], sr))) == 1


def test_write_wav_is_16_bit_pcm_and_clips(tmp_path: Path) -> None:
    write_wav(tmp_path / "o.wav", np.array([0.0, 0.5, 2.0, -3.0], dtype=np.float32), 24_000)
    info = sf.info(str(tmp_path / "o.wav"))
    assert (info.samplerate, info.subtype) == (24_000, "PCM_16")
    assert to_pcm16(np.array([2.0, -3.0])).tolist() == [32767, -32767]


# ------------------------------------------------------------------------------------- bounded decoding


def lying_flac(path: Path, rate: int, channels: int, total_frames: int) -> Path:
    """A real 1 s FLAC whose STREAMINFO then claims `total_frames` at `rate` Hz and `channels` channels.

    STREAMINFO is the first metadata block ("fLaC", 4-byte block header, then 34 bytes); bytes 18..25 of the
    file pack sample rate (20 bits), channels - 1 (3), bits per sample - 1 (5) and total samples (36)."""
    sf.write(str(path), (0.3 * np.sin(np.arange(16_000) / 5.0)).astype(np.float32), 16_000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    packed = int.from_bytes(data[18:26], "big")
    bits = (packed >> 36) & 0x1F
    data[18:26] = ((rate << 44) | ((channels - 1) << 41) | (bits << 36) | total_frames).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def test_a_header_declaring_a_huge_decode_is_refused_before_decoding(tmp_path: Path) -> None:
    # The audit's file: 1100 s (under the 1200 s limit) of 8 channels at 384 kHz, i.e. a 12.6 GiB buffer.
    path = lying_flac(tmp_path / "huge.flac", 384_000, 8, 1100 * 384_000)
    assert path.stat().st_size < 100_000
    assert probe_seconds(path) == pytest.approx(1100.0)  # the duration limit alone lets it through
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(OversizeAudioError) as caught:
            load_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 2.0
    assert peak < 20 * 2**20  # nothing near the declared size was allocated (numpy reports to tracemalloc)
    message = str(caught.value)
    for declared in ("1100 s", "8 channel(s)", "384000 Hz", "12.6 GiB", "decode limit"):
        assert declared in message


def test_rates_outside_what_recorders_write_and_unknown_lengths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OversizeAudioError, match="655350 Hz"):
        load_audio(lying_flac(tmp_path / "fast.flac", 655_350, 1, 16_000))
    with pytest.raises(AudioError, match="does not give its length"):
        probe_seconds(lying_flac(tmp_path / "unknown.flac", 16_000, 1, 0))  # STREAMINFO total 0 = unknown


def test_the_decode_limit_is_samples_not_seconds(tmp_path: Path) -> None:
    t = np.arange(2 * 48_000) / 48_000
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1).astype(np.float32) * 0.3
    sf.write(str(tmp_path / "stereo48.wav"), stereo, 48_000)
    sf.write(str(tmp_path / "stereo96.wav"), np.repeat(stereo, 2, axis=0), 96_000)  # same 2 s, twice the rate
    assert decode_budget(2.0) == 2 * 48_000 * 2
    assert load_audio(tmp_path / "stereo48.wav", max_seconds=2.0).seconds == pytest.approx(2.0)
    assert probe(tmp_path / "stereo96.wav").seconds == pytest.approx(2.0)
    with pytest.raises(OversizeAudioError, match="over the decode limit"):
        load_audio(tmp_path / "stereo96.wav", max_seconds=2.0)
    assert load_audio(tmp_path / "stereo96.wav", max_seconds=4.0).seconds == pytest.approx(2.0)


def test_block_decoding_downmixes_exactly_like_a_whole_file_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = 3 * BLOCK_FRAMES + 123  # several blocks and a partial one
    data = (0.2 * rng.standard_normal((frames, 3))).astype(np.float32)
    sf.write(str(tmp_path / "three.wav"), data, 48_000, subtype="FLOAT")
    whole, _ = sf.read(str(tmp_path / "three.wav"), dtype="float32")
    got = load_audio(tmp_path / "three.wav", target_sr=48_000)
    assert got.samples.shape == (frames,)
    np.testing.assert_array_equal(got.samples, whole.mean(axis=1))


def no_hang(fn: Callable[[], object], seconds: float = 5.0) -> Exception | None:
    """Run `fn` in a thread; fail if it blocks (opening a FIFO blocks until a writer comes)."""
    caught: list[Exception] = []

    def run() -> None:
        try:
            fn()
        except (AudioError, OSError) as exc:  # handed back to the test
            caught.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "blocked"
    return caught[0] if caught else None


def test_special_files_named_like_audio_say_what_they_are(tmp_path: Path) -> None:
    (tmp_path / "folder.wav").mkdir()
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (tmp_path / "notes.mp3").write_text("Acta de la reunión del lunes\n" * 20, encoding="utf-8")
    expected = {
        "folder.wav": (NotAFileError, "folder.wav is a directory, not an audio file"),
        "pipe.wav": (NotAFileError, "pipe.wav is a FIFO (named pipe), not an audio file"),
        "dangling.wav": (MissingAudioError, "dangling.wav is a dangling symlink (its target 'gone.wav'"),
        "notes.mp3": (AudioError, "notes.mp3: not decodable audio: it is a text file"),
    }
    for name, (kind, text) in expected.items():
        for fn in (load_audio, probe_seconds):
            exc = no_hang(lambda fn=fn, name=name: fn(tmp_path / name))
            assert isinstance(exc, kind), (name, exc)
            assert text in str(exc)
            assert "possibly a pipe" not in str(exc)  # libsndfile's guess for a regular text file
