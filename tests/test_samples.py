"""The Spanish clips shipped in samples/: reproducible from data_prep.samples, usable audio, and listed exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import soundfile as sf

from data_prep import samples as samples_module
from data_prep.__main__ import main
from data_prep.samples import DEFAULT_OUTPUT, README_NAME, SAMPLES, espeak_version
from data_prep.sources import TRANSCRIPTS_TSV, read_folder, read_tsv
from resources.audio import load_audio, probe_seconds, speech_seconds

SHIPPED_WAVS = sorted(DEFAULT_OUTPUT.glob("*.wav"))


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The samples made again, through the CLI a maintainer would use."""
    out = tmp_path_factory.mktemp("samples")
    assert main(["samples", "--output", str(out)]) == 0
    return out


def shipped_version() -> str | None:
    match = re.search(r"espeak-ng (\S+), voice", (DEFAULT_OUTPUT / README_NAME).read_text(encoding="utf-8"))
    return match.group(1) if match else None


def test_regenerating_gives_the_shipped_file_names(regenerated: Path) -> None:
    assert sorted(p.name for p in regenerated.iterdir()) == sorted(p.name for p in DEFAULT_OUTPUT.iterdir())


def test_regenerating_gives_the_shipped_audio(regenerated: Path) -> None:
    if shipped_version() == espeak_version():  # espeak-ng is deterministic: the very same bytes
        for wav in SHIPPED_WAVS:
            assert (regenerated / wav.name).read_bytes() == wav.read_bytes(), f"{wav.name} differs"
        assert (regenerated / README_NAME).read_bytes() == (DEFAULT_OUTPUT / README_NAME).read_bytes()
    else:  # another espeak-ng release may pronounce a little differently, but not at another length
        for wav in SHIPPED_WAVS:
            assert probe_seconds(regenerated / wav.name) == pytest.approx(probe_seconds(wav), rel=0.01), wav.name


def test_regenerating_gives_the_shipped_texts(regenerated: Path) -> None:
    assert (regenerated / TRANSCRIPTS_TSV).read_bytes() == (DEFAULT_OUTPUT / TRANSCRIPTS_TSV).read_bytes()


def test_every_sample_is_shipped() -> None:
    assert [p.name for p in SHIPPED_WAVS] == sorted(s.file for s in SAMPLES)
    assert 4 <= len(SHIPPED_WAVS) <= 5
    assert sum(p.stat().st_size for p in DEFAULT_OUTPUT.iterdir()) < 600_000  # a few hundred KB in the repository


@pytest.mark.parametrize("wav", SHIPPED_WAVS, ids=lambda p: p.name)
def test_shipped_clip_is_short_speech(wav: Path) -> None:
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
    audio = load_audio(wav)
    assert 1.0 <= audio.seconds <= 8.0
    assert speech_seconds(audio) >= 0.5 * audio.seconds  # speech most of the time, not silence or a click


def test_texts_list_exactly_the_shipped_clips() -> None:
    rows = read_tsv(DEFAULT_OUTPUT / TRANSCRIPTS_TSV, required=("path", "sentence", "english"))
    assert [r["path"] for r in rows] == [p.name for p in SHIPPED_WAVS]
    assert [(r["sentence"], r["english"]) for r in rows] == [(s.spanish, s.english) for s in SAMPLES]
    readme = (DEFAULT_OUTPUT / README_NAME).read_text(encoding="utf-8")
    assert shipped_version() is not None  # else the byte comparison above would silently never run
    assert set(re.findall(r"`([^`]+\.wav)`", readme)) == {p.name for p in SHIPPED_WAVS}


def test_folder_ingest_reads_the_spanish_transcripts() -> None:
    clips = read_folder(DEFAULT_OUTPUT, "all")
    assert {c.source_path: c.sentence for c in clips} == {s.file: s.spanish for s in SAMPLES}


def test_missing_espeak_is_one_sentence_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["samples", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: espeak-ng is not installed") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_missing_voice_is_one_sentence_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(samples_module, "VOICE", "xx-none")
    assert main(["samples", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no 'xx-none' voice" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
