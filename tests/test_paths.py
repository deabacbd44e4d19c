"""Item ids and the OUT writer's check: hostile ids never name a path outside OUT, long names still fit."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest

from resources.audio import write_wav
from resources.paths import (
    ID_MAX_BYTES,
    UniqueIds,
    UnsafePathError,
    is_safe_id,
    safe_id,
    safe_output_path,
    unique_ids,
)

HOSTILE = [
    "../../PWNED",
    "..\\..\\PWNED",
    "/etc/passwd",
    "C:\\Windows\\x",
    "a/../../b",
    "..",
    ".",
    "",
    "...",
    ".hidden",
    "a..b",
    "tab\tnew\nline",
    "nul\x00byte",
    "bad\udcffbytes",  # a non-UTF-8 file name as os.walk returns it
]


@pytest.mark.parametrize("text", HOSTILE)
def test_any_text_becomes_one_harmless_file_name(text: str) -> None:
    item_id = safe_id(text)
    assert item_id and "/" not in item_id and "\\" not in item_id and ".." not in item_id
    assert not item_id.startswith(".")
    assert all(ch.isalnum() or ch in "_.-" for ch in item_id)
    item_id.encode("utf-8")  # encodable: no lone surrogates left
    assert safe_id(item_id) == item_id and is_safe_id(item_id)  # idempotent: re-reading keeps ids


def test_readable_ids_are_kept() -> None:
    assert safe_id("../../PWNED") == "PWNED"  # `..` components are dropped, not turned into a name
    assert safe_id("session2/dos") == "session2_dos"
    assert safe_id("common_voice_es_19600000") == "common_voice_es_19600000"
    assert safe_id("sesión 1/mañana") == "sesión_1_mañana"
    # The same name composed (Linux) and decomposed (macOS) is one id.
    assert safe_id(unicodedata.normalize("NFD", "mañana")) == safe_id("mañana") == "mañana"
    assert safe_id("a/b", sep="__") == "a__b"
    with pytest.raises(ValueError, match="separator"):
        safe_id("a/b", sep="/")


def test_long_names_are_cut_with_a_hash_so_they_stay_distinct() -> None:
    folder = "carpeta_" + "x" * 192
    a, b = safe_id(f"{folder}/{'y' * 99}1"), safe_id(f"{folder}/{'y' * 99}2")
    assert a != b
    for item_id in (a, b):
        assert len(item_id.encode("utf-8")) <= ID_MAX_BYTES
        assert item_id.startswith("carpeta_xxx") and safe_id(item_id) == item_id
    # Multi-byte characters are never cut in half.
    wide = safe_id("ñ" * 200)
    assert len(wide.encode("utf-8")) <= ID_MAX_BYTES and wide.startswith("ñ" * 50)
    assert safe_id("ñ" * 200) == wide  # stable: the hash is of the text, not of the run


def test_repeats_get_numbered_and_real_names_are_not_taken() -> None:
    assert unique_ids(["a", "b", "a", "a-2", "a"]) == ["a", "b", "a-3", "a-2", "a-4"]
    long = "z" * ID_MAX_BYTES
    renamed = unique_ids([long, long])
    assert renamed[0] == long and renamed[1].endswith("-2") and len(renamed[1]) == ID_MAX_BYTES
    assert all(is_safe_id(i) for i in renamed)
    stream = UniqueIds()
    assert [stream.take(i) for i in ("x", "x", "x")] == ["x", "x-2", "x-3"]


def test_the_writer_refuses_any_path_that_leaves_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert safe_output_path(out, "audio", "clip_1", ".wav") == out / "audio" / "clip_1.wav"
    for bad_id in ("../../PWNED", "a/b", "..", ".hidden", "", "x" * 300, "a\\b"):
        with pytest.raises(UnsafePathError):
            safe_output_path(out, "audio", bad_id, ".wav")
    for bad_suffix in ("/../../x.wav", ".wav/..", "\\x"):
        with pytest.raises(UnsafePathError):
            safe_output_path(out, "audio", "ok", bad_suffix)
    with pytest.raises(UnsafePathError):
        safe_output_path(out, "../elsewhere", "ok", ".wav")
    # OUT/audio as a link to somewhere else is refused too: the check is on the resolved path.
    (tmp_path / "elsewhere").mkdir()
    out.mkdir()
    (out / "audio").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="resolves outside"):
        safe_output_path(out, "audio", "ok", ".wav")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_hostile_id_made_safe_is_written_inside_out(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    path = safe_output_path(out, "audio", safe_id("../../PWNED"), ".wav")
    write_wav(path, np.zeros(160, dtype=np.float32), 16_000)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["deep/out/audio/PWNED.wav"]


def test_a_real_long_named_nested_file_gets_an_id_that_fits(tmp_path: Path) -> None:
    # Each name is legal on its own (200 and 100 characters); joined as one id they were 301 bytes, over the
    # 255-byte file-name limit, and writing OUT/audio/<id>.wav failed.
    folder = tmp_path / "in" / ("d" * 200)
    folder.mkdir(parents=True)
    names = ["f" * 96 + f"{k}.wav" for k in range(2)]
    for name in names:
        write_wav(folder / name, np.zeros(160, dtype=np.float32), 16_000)
    rels = sorted(p.relative_to(tmp_path / "in").with_suffix("").as_posix() for p in folder.iterdir())
    assert all(len(r.encode()) > 255 for r in rels)
    ids = unique_ids(safe_id(r) for r in rels)
    assert len(set(ids)) == 2
    for item_id in ids:
        target = safe_output_path(tmp_path / "out", "audio", item_id, ".wav")
        write_wav(target, np.zeros(160, dtype=np.float32), 16_000)  # raised OSError (name too long) before
        assert target.is_file() and len(target.name.encode()) <= ID_MAX_BYTES + 4


def test_a_rows_audio_path_is_read_inside_its_folder_only(tmp_path: Path) -> None:
    """A row read back from results.jsonl names its audio relative to OUT; a path that leaves OUT is refused
    (audio_path) or no audio at all (audio_inside), and a step's audio is never copied out of OUT."""
    from clearml_pipeline.local_pipeline import _copy_audio
    from steps.results import ItemResult

    out, step = tmp_path / "out", tmp_path / "out" / "steps" / "speech_synthesis"
    (step / "audio").mkdir(parents=True)
    write_wav(step / "audio" / "a.wav", np.zeros(160, dtype=np.float32), 16000)
    (tmp_path / "x.wav").write_bytes((step / "audio" / "a.wav").read_bytes())
    good = ItemResult("a", "a.wav", zh_audio="audio/a.wav")
    assert good.audio_path(out) == out / "audio" / "a.wav" and ItemResult("n", "n.wav").audio_path(out) is None
    hostile = ["../x.wav", str(tmp_path / "x.wav"), "audio/../../x.wav", "..\\x.wav"]
    for path in hostile:
        with pytest.raises(UnsafePathError):
            ItemResult("b", "b.wav", zh_audio=path).audio_path(out)
        assert ItemResult("b", "b.wav", zh_audio=path).audio_inside(out) is None
    rows = [good, *(ItemResult(f"h{i}", "h.wav", zh_audio=path) for i, path in enumerate(hostile))]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _copy_audio(rows, [step], out) is True
    assert (out / "audio" / "a.wav").is_file() and good.ok
    assert all(row.status == "error" and row.zh_audio is None and "not inside" in str(row.error) for row in rows[1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # x.wav untouched, nothing written beside OUT


def test_only_audio_inside_out_is_uploaded_as_a_debug_sample(tmp_path: Path) -> None:
    """report_audio_samples uploads the files the rows name: never one outside OUT (ClearML would store it)."""
    from clearml_pipeline.reporting import report_audio_samples
    from steps.results import ItemResult

    (tmp_path / "out" / "audio").mkdir(parents=True)
    write_wav(tmp_path / "out" / "audio" / "a.wav", np.zeros(160, dtype=np.float32), 16000)
    (tmp_path / "secret.wav").write_bytes(b"not for the server")
    uploaded: list[str] = []

    class Logger:
        def report_media(self, title: str, series: str, iteration: int, local_path: str) -> None:
            uploaded.append(local_path)

        def report_table(self, *args: object, **kwargs: object) -> None:
            pass

    rows = [ItemResult("h", "h.wav", zh_audio="../secret.wav"), ItemResult("a", "a.wav", zh_audio="audio/a.wav")]
    assert report_audio_samples(Logger(), rows, tmp_path / "out", limit=5) == 1
    assert uploaded == [str(tmp_path / "out" / "audio" / "a.wav")]
