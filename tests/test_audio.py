from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from steps.audio import Audio, AudioError, load_audio, resample, speech_seconds, split_long, to_pcm16, write_wav
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
