"""Ingestion: Common Voice fixture (real espeak-ng speech) -> local dataset folder, offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile as sf

from data_prep.__main__ import main
from data_prep.clearml_dataset import ClearMLTarget, content_tag, register
from data_prep.dataset import DATASET_JSON, DatasetResult, build_dataset
from data_prep.ingest import IngestOptions, select_clips
from data_prep.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    REPORT_JSON,
    REPORT_MD,
    ManifestRow,
    read_manifest,
    write_manifest,
)
from data_prep.sources import SourceClip, SourceError, check_hub, read_hf
from resources.audio import load_audio, speech_seconds, to_pcm16, write_wav
from resources.paths import ID_MAX_BYTES, UnsafePathError, is_safe_id, safe_join
from tests.cv_fixture import (
    BAD_ROWS,
    SENTENCES,
    covost_path,
    good_path,
    good_split,
    hf_dataset_from_release,
    make_common_voice_fixture,
    write_folder_fixture,
)
from tests.test_audio import lying_flac

N_GOOD = 6


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_common_voice_fixture(tmp_path_factory.mktemp("cv"), n_good=N_GOOD)


def options(release: Path, out: Path, **kw: Any) -> IngestOptions:
    base: dict[str, Any] = dict(
        source="common_voice", splits=("validated",), out=out, name="cv", path=release, show_progress=False
    )
    return IngestOptions(**(base | kw))


def rows_by_path(result: DatasetResult) -> dict[str, Any]:
    return {r.source_path: r for r in read_manifest(result.folder / MANIFEST_NAME)}


def report(result: DatasetResult) -> dict[str, Any]:
    return json.loads((result.folder / REPORT_JSON).read_text(encoding="utf-8"))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------------------------- Common Voice


def test_good_clips_become_16k_mono_wavs_listed_in_the_manifest(release: Path, tmp_path: Path) -> None:
    result = build_dataset(options(release, tmp_path, covost=covost_path(release)))
    assert result.folder == tmp_path / "cv" / result.content_hash[:12]
    assert not result.reused
    rows = rows_by_path(result)
    assert set(rows) == {good_path(i) for i in range(N_GOOD)}
    for i in range(N_GOOD):
        row = rows[good_path(i)]
        assert row.id == f"common_voice_es_{19600000 + i}"
        assert row.audio == f"audio/{row.id}.wav"
        assert row.sentence == SENTENCES[i][0]  # quotes and ¿ survive the unquoted TSV read
        assert row.split == "validated"
        info = sf.info(str(result.folder / row.audio))
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert abs(info.duration - row.duration_s) < 0.002
        assert 0.8 < row.duration_s < 6.0
        assert speech_seconds(load_audio(result.folder / row.audio)) > 0.5  # real speech, not silence

    # Each line carries every column, id first, in the contract's order.
    lines = (result.folder / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    assert [tuple(json.loads(line)) for line in lines] == [MANIFEST_COLUMNS] * N_GOOD


def test_demographics_are_kept_and_client_id_is_not(release: Path, tmp_path: Path) -> None:
    result = build_dataset(options(release, tmp_path))
    row = rows_by_path(result)[good_path(0)]
    assert (row.age, row.gender, row.accents, row.locale, row.variant) == (
        "twenties",
        "female_feminine",
        "España: Centro-Sur peninsular",
        "es",
        None,  # empty in the TSV -> null
    )
    assert (row.up_votes, row.down_votes) == (2, 0)
    client_id = hashlib.sha512(b"fixture-speaker-0").hexdigest()
    assert row.speaker == hashlib.sha256(client_id.encode()).hexdigest()[:16]
    for name in (MANIFEST_NAME, REPORT_JSON, REPORT_MD, DATASET_JSON):
        assert client_id not in (result.folder / name).read_text(encoding="utf-8")


def test_every_bad_row_is_reported_with_its_reason(release: Path, tmp_path: Path) -> None:
    result = build_dataset(options(release, tmp_path))
    rep = report(result)
    assert {r["source_path"]: r["reason"] for r in rep["rejections"]} == BAD_ROWS
    assert rep["selected"] == N_GOOD + len(BAD_ROWS) == rep["accepted"] + rep["rejected"]
    assert rep["accepted"] == N_GOOD
    assert sum(rep["reason_counts"].values()) == rep["rejected"]
    assert all(r["detail"] for r in rep["rejections"])
    assert str(release) not in (result.folder / REPORT_JSON).read_text(encoding="utf-8")  # no machine paths
    md = (result.folder / REPORT_MD).read_text(encoding="utf-8")
    assert all(path in md for path in BAD_ROWS)
    assert result.info["counts"]["selected"] == rep["selected"]


def test_path_escapes_are_rejected_not_read(release: Path, tmp_path: Path) -> None:
    rep = report(build_dataset(options(release, tmp_path)))
    details = {r["source_path"]: r["detail"] for r in rep["rejections"]}
    assert "climbs out" in details["../../etc/passwd"]
    assert "resolves outside" in details["common_voice_es_19700007.mp3"]  # a symlink to a real mp3 elsewhere


def test_safe_join(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.wav").write_bytes(b"x")
    (root / "sub" / "inside.wav").write_bytes(b"x")
    (root / "out_link.wav").symlink_to(tmp_path / "secret.wav")
    (root / "out_dir").symlink_to(tmp_path)
    (root / "in_link.wav").symlink_to(root / "sub" / "inside.wav")
    assert safe_join(root, "sub/inside.wav") == root / "sub" / "inside.wav"
    assert safe_join(root, "in_link.wav") == root / "in_link.wav"
    assert safe_join(root, "not/there/yet.wav") == root / "not" / "there" / "yet.wav"
    bad = [
        "/etc/passwd",
        "../secret.wav",
        "sub/../../secret.wav",
        "..\\secret.wav",
        "C:\\x.wav",
        "C:x.wav",
        "",
        "out_link.wav",
        "out_dir/secret.wav",
        "a\x00b",
    ]
    for rel in bad:
        with pytest.raises(UnsafePathError):
            safe_join(root, rel)


def test_manifest_audio_paths_cannot_escape_their_folder(tmp_path: Path) -> None:
    row = {c: None for c in MANIFEST_COLUMNS} | {
        "id": "x",
        "audio": "../x.wav",
        "duration_s": 1.0,
        "split": "t",
        "source_path": "x.mp3",
    }
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(UnsafePathError):
        read_manifest(tmp_path / MANIFEST_NAME, check_audio=False)


# --------------------------------------------------------------------------------------------- hash and reuse


def test_same_input_and_options_reuse_the_folder_untouched(release: Path, tmp_path: Path) -> None:
    first = build_dataset(options(release, tmp_path, covost=covost_path(release)))
    before = snapshot(first.folder)
    time.sleep(0.01)
    second = build_dataset(options(release, tmp_path, covost=covost_path(release)))
    assert second.reused and second.content_hash == first.content_hash and second.folder == first.folder
    assert snapshot(second.folder) == before  # nothing rewritten
    assert [p.name for p in (tmp_path / "cv").iterdir()] == [first.folder.name]  # no staging leftovers

    # The same release copied elsewhere is the same data: same hash (nothing machine-specific is hashed).
    moved = tmp_path / "elsewhere" / "es"
    shutil.copytree(release, moved, symlinks=True)
    third = build_dataset(options(moved, tmp_path, covost=covost_path(release)))
    assert third.reused and third.content_hash == first.content_hash


def test_limit_and_seed_select_a_deterministic_subset(release: Path, tmp_path: Path) -> None:
    a = build_dataset(options(release, tmp_path, limit=5, seed=0))
    b = build_dataset(options(release, tmp_path / "again", limit=5, seed=0))
    assert a.content_hash == b.content_hash and not b.reused  # rebuilt from scratch in another root
    chosen = {r["source_path"] for r in report(a)["rejections"]} | set(rows_by_path(a))
    # numpy's PCG64 stream is stable across versions and machines: this subset is part of the contract.
    assert chosen == EXPECTED_LIMIT5_SEED0
    assert report(a)["selected"] == 5 == report(a)["accepted"] + report(a)["rejected"]

    hashes = {a.content_hash}
    for kw in ({"limit": 5, "seed": 1}, {"limit": 4, "seed": 0}, {"limit": None}, {"min_seconds": 1.0}):
        hashes.add(build_dataset(options(release, tmp_path, **kw)).content_hash)
    assert len(hashes) == 5


EXPECTED_LIMIT5_SEED0 = {
    "../../etc/passwd",  # sorted index 0; default_rng(0).permutation(14)[:5] = {0, 2, 3, 4, 5}
    "common_voice_es_19600001.mp3",
    "common_voice_es_19600002.mp3",
    "common_voice_es_19600003.mp3",
    "common_voice_es_19600004.mp3",
}


def test_selection_dedupes_splits_and_ignores_input_order() -> None:
    clips = [
        SourceClip(id=f"c{i}", split=s, source_path=f"c{i}.mp3", sentence=None) for s in ("a", "b") for i in range(20)
    ]
    picked = select_clips(clips, limit=7, seed=3)
    assert len(picked) == 7 and {c.split for c in picked} == {"a"}  # first split wins for a repeated path
    assert [c.id for c in select_clips(list(reversed(clips[:20])), 7, 3)] == [c.id for c in picked]
    assert [c.id for c in select_clips(clips, 7, 4)] != [c.id for c in picked]
    same_id = [SourceClip(id="a", split="x", source_path=p, sentence=None) for p in ("a.mp3", "a.wav")]
    assert len({c.id for c in select_clips(same_id, None, 0)}) == 2


def test_covost_references_are_joined_by_clip_path(release: Path, tmp_path: Path) -> None:
    joined = build_dataset(options(release, tmp_path, covost=covost_path(release)))
    plain = build_dataset(options(release, tmp_path))
    for i in range(N_GOOD):
        assert rows_by_path(joined)[good_path(i)].reference_en == SENTENCES[i][1]
        assert rows_by_path(plain)[good_path(i)].reference_en is None
    assert joined.info["counts"]["with_reference_en"] == N_GOOD
    assert joined.content_hash != plain.content_hash
    wrong = tmp_path / "covost_wrong.tsv"
    wrong.write_text("path\tsentence\nx.mp3\thola\n", encoding="utf-8")
    with pytest.raises(SourceError, match="no translation column"):
        build_dataset(options(release, tmp_path, covost=wrong))


def test_split_selection(release: Path, tmp_path: Path) -> None:
    test = rows_by_path(build_dataset(options(release, tmp_path, splits=("test",))))
    assert set(test) == {good_path(i) for i in range(N_GOOD) if good_split(i) == "test"}
    assert {r.split for r in test.values()} == {"test"}
    both = rows_by_path(build_dataset(options(release, tmp_path, splits=("train", "dev"))))
    assert {r.split for r in both.values()} == {"train", "dev"}
    assert len(both) == sum(good_split(i) in ("train", "dev") for i in range(N_GOOD))
    with pytest.raises(SourceError, match=r"no other\.tsv"):
        build_dataset(options(release, tmp_path, splits=("other",)))


def test_older_release_columns(tmp_path: Path) -> None:
    legacy = make_common_voice_fixture(tmp_path / "old", n_good=2, legacy=True)
    rows = rows_by_path(build_dataset(options(legacy, tmp_path)))
    assert rows[good_path(1)].accents == "México" and rows[good_path(1)].variant is None


def test_a_dataset_can_extend_a_parent(release: Path, tmp_path: Path) -> None:
    parent = build_dataset(options(release, tmp_path, name="base", splits=("train",)))
    child = build_dataset(options(release, tmp_path, name="more", splits=("test",), parent=parent.folder))
    rows = rows_by_path(child)
    expected = {good_path(i) for i in range(N_GOOD) if good_split(i) in ("train", "test")}
    assert set(rows) == expected
    assert child.info["parent"]["content_hash"] == parent.content_hash
    assert child.info["counts"]["inherited"] == len(rows_by_path(parent))
    for path, row in rows_by_path(parent).items():
        assert (child.folder / rows[path].audio).read_bytes() == (parent.folder / row.audio).read_bytes()


# ----------------------------------------------------------------------------------------------- other sources


def test_folder_source_with_optional_transcripts(release: Path, tmp_path: Path) -> None:
    folder = write_folder_fixture(tmp_path, release)
    result = build_dataset(options(folder, tmp_path, source="folder", splits=("all",), name="rec"))
    rows = rows_by_path(result)
    assert {p: r.sentence for p, r in rows.items()} == {
        "uno.wav": SENTENCES[0][0],  # transcripts.tsv
        "session2/dos.flac": SENTENCES[1][0],  # transcripts.tsv (stereo 44.1 kHz flac)
        "session2/tres.mp3": SENTENCES[2][0],  # tres.txt sidecar
        "sin_texto.mp3": None,  # no transcript: kept, sentence null
    }
    assert rows["session2/dos.flac"].id == "session2_dos"
    for row in rows.values():
        info = sf.info(str(result.folder / row.audio))
        assert (info.samplerate, info.channels) == (16_000, 1)
    assert {r["source_path"]: r["reason"] for r in report(result)["rejections"]} == {
        "roto.wav": "corrupt",
        "../secret.wav": "unsafe_path",
    }


class RecordingLoader:
    """Stands in for datasets.load_dataset: serves the fixture as the hub would (streamed, Audio column)."""

    def __init__(self, release: Path) -> None:
        self.release = release
        self.calls: list[dict[str, Any]] = []

    def __call__(self, name: str, config: str | None, **kw: Any) -> Any:
        self.calls.append({"name": name, "config": config, **kw})
        return hf_dataset_from_release(self.release, kw["split"])


HF_NAME = "mozilla-foundation/common_voice_11_0"


def hf_options(tmp_path: Path, **kw: Any) -> IngestOptions:
    base: dict[str, Any] = dict(
        source="hf",
        splits=("test",),
        out=tmp_path,
        name="hf",
        hf_name=HF_NAME,
        hf_config="es",
        hf_token="hf_secret",
        show_progress=False,
    )
    return IngestOptions(**(base | kw))


def test_hf_source_through_an_injected_loader(release: Path, tmp_path: Path) -> None:
    loader = RecordingLoader(release)
    result = build_dataset(hf_options(tmp_path, covost=covost_path(release)), loader=loader)
    assert loader.calls == [
        {
            "name": "mozilla-foundation/common_voice_11_0",
            "config": "es",
            "split": "test",
            "streaming": True,
            "token": "hf_secret",
        }
    ]
    rows = rows_by_path(result)
    good = [i for i in range(N_GOOD) if good_split(i) == "test"]
    assert set(rows) == {good_path(i) for i in good}  # archive prefix "es_test_0/" dropped: CoVoST's key
    for i in good:
        row = rows[good_path(i)]
        assert (row.sentence, row.reference_en, row.split) == (SENTENCES[i][0], SENTENCES[i][1], "test")
    assert rows[good_path(5)].accents == "Rioplatense"  # the hub's `accent` column
    reasons = {r["source_path"]: r["reason"] for r in report(result)["rejections"]}
    assert reasons == {p: r for p, r in BAD_ROWS.items() if r not in ("missing_file", "unsafe_path")}
    # Same mp3 bytes as the release: the same normalized WAVs as the Common Voice reader makes.
    cv = build_dataset(options(release, tmp_path / "cv", splits=("test",)))
    for path, row in rows.items():
        assert (result.folder / row.audio).read_bytes() == (cv.folder / rows_by_path(cv)[path].audio).read_bytes()
    for name in (MANIFEST_NAME, REPORT_JSON, DATASET_JSON):
        assert "hf_secret" not in (result.folder / name).read_text(encoding="utf-8")


def test_hf_limit_and_seed_are_reproducible(release: Path, tmp_path: Path) -> None:
    runs = [
        build_dataset(hf_options(tmp_path / str(k), limit=3, seed=7), loader=RecordingLoader(release)) for k in range(2)
    ]
    assert runs[0].content_hash == runs[1].content_hash
    assert runs[0].report.selected == 3


def test_hf_failures_are_fast_and_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*args: Any, **kw: Any) -> Any:
        raise ConnectionError("Couldn't reach 'x' on the Hub")

    with pytest.raises(SourceError, match=r"cannot open Hugging Face dataset 'ds'.*ConnectionError"):
        read_hf("ds", "es", ["test"], limit=None, seed=0, loader=refuse)  # raises before any row is read

    # The default path asks the hub once (fails in milliseconds offline) before datasets' retry loop.
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, *a, **kw: refuse())
    monkeypatch.setattr("data_prep.sources.default_hf_loader", lambda *a, **kw: pytest.fail("loader called"))
    start = time.monotonic()
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE"):
        build_dataset(hf_options(tmp_path))
    assert time.monotonic() - start < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_hub("mozilla-foundation/common_voice_11_0", None)  # offline: the cache decides, no network check


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_ingest_and_summary(release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "ingest",
        "--source",
        "common_voice",
        "--path",
        str(release),
        "--split",
        "validated",
        "--covost",
        str(covost_path(release)),
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"selected {N_GOOD + len(BAD_ROWS)} = accepted {N_GOOD} + rejected {len(BAD_ROWS)}" in out
    assert f"{N_GOOD} with an English reference" in out and "(new)" in out
    folders = list((tmp_path / "common_voice-validated").iterdir())
    assert len(folders) == 1 and (folders[0] / DATASET_JSON).is_file()
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().out

    hf = ["ingest", "--source", "hf", "--hf-name", "cv", "--hf-config", "es", "--out", str(tmp_path), "--no-progress"]
    assert main(hf, loader=RecordingLoader(release)) == 0
    assert (tmp_path / "hf-test").is_dir()

    assert main(["ingest", "--source", "common_voice", "--out", str(tmp_path)]) == 2
    assert "--path is required" in capsys.readouterr().err


# --------------------------------------------------------------------------------- ClearML (no server here)


class FakeDataset:
    """Records what register() asks of clearml.Dataset; the stand-in server test will exercise the real SDK."""

    registry: ClassVar[list[FakeDataset]] = []

    def __init__(self, **kw: Any) -> None:
        self.kw, self.files, self.metadata, self.tables, self.state = kw, [], {}, [], "created"
        self.id, self.version = f"ds{len(self.registry)}", kw.get("dataset_version") or "1.0.0"

    @classmethod
    def create(cls, **kw: Any) -> FakeDataset:
        cls.registry.append(ds := cls(**kw))
        return ds

    @classmethod
    def list_datasets(cls, dataset_project: str, partial_name: str, tags: list[str], only_completed: bool) -> list:
        return [
            {"id": d.id, "name": d.kw["dataset_name"], "project": d.kw["dataset_project"], "version": d.version}
            for d in cls.registry
            if d.state == "final" and partial_name in d.kw["dataset_name"] and set(tags) <= set(d.kw["dataset_tags"])
        ]

    def add_files(self, path: str) -> int:
        self.files.append(path)
        return 1

    def set_metadata(self, metadata: Any, metadata_name: str, ui_visible: bool) -> None:
        self.metadata[metadata_name] = metadata

    def get_logger(self) -> Any:
        return self

    def report_table(self, **kw: Any) -> None:
        self.tables.append(kw)

    def upload(self) -> None:
        self.state = "uploaded"

    def finalize(self) -> None:
        self.state = "final"


def test_clearml_registration_reuses_identical_content(release: Path, tmp_path: Path) -> None:
    FakeDataset.registry = []
    result = build_dataset(options(release, tmp_path, covost=covost_path(release)))
    target = ClearMLTarget(project="s2st/datasets", name="cv")
    first = register(result, target, dataset_cls=FakeDataset)
    assert not first.reused and len(FakeDataset.registry) == 1
    ds = FakeDataset.registry[0]
    assert content_tag(result.content_hash) in ds.kw["dataset_tags"] and ds.files == [str(result.folder)]
    assert ds.metadata["ingest"]["counts"]["accepted"] == N_GOOD
    preview = ds.tables[0]["table_plot"]
    assert len(preview) == N_GOOD and "speaker" not in preview.columns
    again = register(result, target, dataset_cls=FakeDataset)
    assert again.reused and again.dataset_id == first.dataset_id and len(FakeDataset.registry) == 1
    other = build_dataset(options(release, tmp_path, limit=3))
    assert not register(other, target, dataset_cls=FakeDataset).reused
    assert not register(result, ClearMLTarget("s2st/datasets", "cv-copy"), dataset_cls=FakeDataset).reused


def test_wav_is_written_from_load_audio_not_resampled_twice(release: Path, tmp_path: Path) -> None:
    result = build_dataset(options(release, tmp_path, splits=("train",)))
    row = rows_by_path(result)[good_path(0)]
    expected = load_audio(release / "clips" / good_path(0)).samples
    written, sr = sf.read(str(result.folder / row.audio), dtype="int16")
    assert sr == 16_000
    np.testing.assert_array_equal(written, to_pcm16(expected))  # resources.audio's decode + resample, written once


# ------------------------------------------------------------------------------------ hostile ids and entries


def files_outside(root: Path, inside: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() and not p.is_relative_to(inside)}


def manifest_line(item_id: object, audio: str = "audio/x.wav") -> str:
    row = {c: None for c in MANIFEST_COLUMNS} | {"duration_s": 1.0, "split": "t", "source_path": "x.mp3"}
    return json.dumps(row | {"id": item_id, "audio": audio}, ensure_ascii=False) + "\n"


def test_a_traversal_id_in_a_manifest_is_made_safe_and_nothing_lands_outside(release: Path, tmp_path: Path) -> None:
    # A hand-edited (or fetched) dataset whose ids are paths: it was the parent of a new dataset, and the id
    # went on as it was into every manifest after it (and from there to OUT/audio/{id}.wav).
    hostile = tmp_path / "hostile"
    audio = load_audio(release / "clips" / good_path(0))
    write_wav(hostile / "audio" / "x.wav", audio.samples, 16_000)
    (hostile / DATASET_JSON).write_text(json.dumps({"name": "evil", "content_hash": "0" * 64}), encoding="utf-8")
    lines = [manifest_line("../../PWNED"), manifest_line("../../PWNED"), manifest_line("sub/../../../etc/x")]
    (hostile / MANIFEST_NAME).write_text("".join(lines), encoding="utf-8")
    assert [r.id for r in read_manifest(hostile / MANIFEST_NAME)] == ["PWNED", "PWNED-2", "sub_etc_x"]

    before = files_outside(tmp_path, tmp_path / "out")
    child = build_dataset(options(release, tmp_path / "out", splits=("train",), parent=hostile))
    assert files_outside(tmp_path, tmp_path / "out") == before  # nothing written outside the output folder
    rows = read_manifest(child.folder / MANIFEST_NAME)
    inherited = {r.id: r.audio for r in rows if r.source_path == "x.mp3"}
    assert inherited == {i: f"audio/{i}.wav" for i in ("PWNED", "PWNED-2", "sub_etc_x")}
    assert all((child.folder / a).is_file() for a in inherited.values())
    assert {p.parent for p in tmp_path.rglob("PWNED*")} == {child.folder / "audio"}
    # The manifest writer refuses what the reader would have had to repair.
    bad = ManifestRow(id="../x", audio="audio/x.wav", duration_s=1.0, sentence=None, split="t", source_path="x")
    with pytest.raises(ValueError, match="unique safe ids"):
        write_manifest(tmp_path / "m.jsonl", [bad])
    twice = [replace_id(rows[0], "a"), replace_id(rows[1], "a")]
    with pytest.raises(ValueError, match="repeated"):
        write_manifest(tmp_path / "m.jsonl", twice)


def replace_id(row: ManifestRow, item_id: str) -> ManifestRow:
    return ManifestRow(**(row.to_dict() | {"id": item_id}))


def test_manifest_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_text(manifest_line("ok") + "{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest\.jsonl:2: not a JSON line"):
        read_manifest(path, check_audio=False)
    path.write_text(manifest_line(None), encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest\.jsonl:1: .*text `id`"):
        read_manifest(path, check_audio=False)
    path.write_bytes(manifest_line("caf\u00e9").encode("latin-1"))
    with pytest.raises(ValueError, match=f"{path} is not UTF-8"):
        read_manifest(path, check_audio=False)
    # check_paths=False: an escaping audio path is the caller's per-row error, not the whole manifest's.
    path.write_text(manifest_line("a", "../outside.wav") + manifest_line("b"), encoding="utf-8")
    with pytest.raises(UnsafePathError):
        read_manifest(path, check_audio=False)
    assert [r.id for r in read_manifest(path, check_paths=False)] == ["a", "b"]


def test_a_hand_edited_manifest_row_is_named_with_what_is_wrong_in_it(tmp_path: Path) -> None:
    """A missing column or a value of the wrong type is the row's error, in words (the dataclass said
    "ManifestRow.__init__() missing 4 required positional arguments"; a text duration was read and failed later)."""
    path = tmp_path / MANIFEST_NAME
    path.write_text('{"id": "x", "audio": "audio/x.wav"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"^manifest\.jsonl:1: `duration_s` is missing; `sentence` is missing; "):
        read_manifest(path, check_audio=False)
    good = json.loads(manifest_line("a"))
    for column, value, message in (
        ("duration_s", "3 s", '`duration_s` is a number, not "3 s"'),
        ("sentence", 5, "`sentence` is text or null, not 5"),
        ("up_votes", True, "`up_votes` is a whole number or null, not true"),
        ("split", None, "`split` is text, not null"),
    ):
        path.write_text(manifest_line("ok") + json.dumps(good | {column: value}) + "\n", encoding="utf-8")
        with pytest.raises(ValueError) as raised:
            read_manifest(path, check_audio=False)
        assert str(raised.value) == f"manifest.jsonl:2: {message}"
    path.write_text(json.dumps(good | {"duration_s": 3, "up_votes": 2, "sentence": None}) + "\n", encoding="utf-8")
    assert read_manifest(path, check_audio=False)[0].duration_s == 3


def copy_clip(release: Path, i: int, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(release / "clips" / good_path(i), dst)
    return dst


def test_duplicate_ids_stay_distinct_and_are_reported(release: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dupes"
    copy_clip(release, 0, folder / "a.mp3")
    wav = load_audio(release / "clips" / good_path(1), 22_050)
    write_wav(folder / "a.wav", wav.samples, 22_050)
    copy_clip(release, 2, folder / "a-2.mp3")  # a real "a-2": the renamed "a.wav" must not take its id
    result = build_dataset(options(folder, tmp_path, source="folder", splits=("all",), name="dupes"))
    rows = rows_by_path(result)
    assert {p: r.id for p, r in rows.items()} == {"a-2.mp3": "a-2", "a.mp3": "a", "a.wav": "a-3"}
    digests = {hashlib.sha256((result.folder / r.audio).read_bytes()).hexdigest() for r in rows.values()}
    assert len(digests) == 3  # three clips, three WAVs: none replaced another
    rep = report(result)
    assert rep["renamed_ids"] == [{"id": "a-3", "original_id": "a", "source_path": "a.wav", "split": "all"}]
    assert "| a-3 | a | all | a.wav |" in (result.folder / REPORT_MD).read_text(encoding="utf-8")
    assert result.info["counts"]["renamed_ids"] == 1


def test_streamed_duplicate_ids_stay_distinct(release: Path, tmp_path: Path) -> None:
    def row(path: str, i: int) -> dict[str, Any]:
        return {"path": path, "audio": {"bytes": (release / "clips" / good_path(i)).read_bytes(), "path": path}}

    # Streamed rows: a.flac's id is also "a" (mp3 bytes: soundfile sniffs the container), a.mp3 comes twice.
    rows = [row("x/a.mp3", 0), row("y/a.flac", 1), row("z/a.mp3", 0)]
    result = build_dataset(hf_options(tmp_path), loader=lambda *a, **kw: rows)
    ids = {r.source_path: r.id for r in read_manifest(result.folder / MANIFEST_NAME)}
    assert ids == {"a.mp3": "a", "a.flac": "a-2"}  # the repeated a.mp3 row is the same clip: kept once
    assert [r.id for r in result.report.renamed] == ["a-2"]


def test_long_named_nested_files_get_ids_that_fit(release: Path, tmp_path: Path) -> None:
    # 200-character folder, 100-character file names (each legal): the joined id was over 255 bytes.
    folder = tmp_path / "long"
    names = [f"{'d' * 200}/{'f' * 95}{k}.mp3" for k in range(2)]
    for k, name in enumerate(names):
        copy_clip(release, k, folder / name)
    result = build_dataset(options(folder, tmp_path, source="folder", splits=("all",), name="long"))
    rows = rows_by_path(result)
    assert set(rows) == set(names) and report(result)["rejected"] == 0
    ids = [r.id for r in rows.values()]
    assert len(set(ids)) == 2
    for row in rows.values():
        assert is_safe_id(row.id) and len(row.id.encode()) <= ID_MAX_BYTES
        assert (result.folder / row.audio).is_file()


def test_every_entry_named_like_audio_is_reported_with_what_it_is(release: Path, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    copy_clip(release, 0, folder / "ok.mp3")
    copy_clip(release, 1, folder / "folder.wav" / "inside.mp3")  # a folder named like audio, with audio in it
    os.mkfifo(folder / "pipe.wav")  # must not block the ingest
    (folder / "dangling.wav").symlink_to(folder / "gone.wav")
    (folder / "notes.mp3").write_text("Lista de la compra: pan, leche\n" * 10, encoding="utf-8")
    lying_flac(folder / "fast.flac", 655_350, 1, 16_000)
    start = time.monotonic()
    result = build_dataset(options(folder, tmp_path, source="folder", splits=("all",), name="odd"))
    assert time.monotonic() - start < 60
    assert set(rows_by_path(result)) == {"ok.mp3", "folder.wav/inside.mp3"}
    rep = report(result)
    got = {r["source_path"]: (r["reason"], r["detail"]) for r in rep["rejections"]}
    assert {p: reason for p, (reason, _) in got.items()} == {
        "folder.wav": "not_a_file",
        "pipe.wav": "not_a_file",
        "dangling.wav": "missing_file",
        "notes.mp3": "corrupt",
        "fast.flac": "too_large",
    }
    assert "is a directory" in got["folder.wav"][1]
    assert "FIFO" in got["pipe.wav"][1]
    assert "dangling symlink" in got["dangling.wav"][1]
    assert "not decodable audio: it is a text file" in got["notes.mp3"][1]
    assert "possibly a pipe" not in got["notes.mp3"][1]
    assert "655350 Hz" in got["fast.flac"][1]
    assert rep["selected"] == rep["accepted"] + rep["rejected"] == 7
    assert str(tmp_path) not in (result.folder / REPORT_JSON).read_text(encoding="utf-8")


def test_a_file_name_that_is_not_utf8_is_ingested_and_reported(release: Path, tmp_path: Path) -> None:
    """A Latin-1 file name (lone surrogates once decoded) used to fail the manifest's and the report's writes."""
    folder = tmp_path / "latin1-names"
    copy_clip(release, 0, folder / os.fsdecode(b"ni\xf1o.mp3"))
    (folder / os.fsdecode(b"vac\xedo.wav")).write_bytes(b"")
    result = build_dataset(options(folder, tmp_path, source="folder", splits=("all",), name="latin1-names"))
    (row,) = read_manifest(result.folder / MANIFEST_NAME)
    assert os.fsencode(row.source_path) == b"ni\xf1o.mp3" and (result.folder / row.audio).is_file()
    (result.folder / MANIFEST_NAME).read_text(encoding="utf-8")  # strict: the manifest is UTF-8 text
    (rejected,) = report(result)["rejections"]
    assert os.fsencode(rejected["source_path"]) == b"vac\xedo.wav" and rejected["reason"] == "empty_file"
    assert "vac\\udcedo.wav" in (result.folder / "report.md").read_text(encoding="utf-8")


def test_non_utf8_text_files_are_named(release: Path, tmp_path: Path) -> None:
    folder = tmp_path / "latin1"
    copy_clip(release, 0, folder / "uno.mp3")
    tsv = folder / "transcripts.tsv"
    tsv.write_bytes("path\tsentence\nuno.mp3\tma\u00f1ana\n".encode("latin-1"))
    with pytest.raises(SourceError, match=rf"{tsv} is not UTF-8 text \(line 2: byte 0xf1\)"):
        build_dataset(options(folder, tmp_path, source="folder", splits=("all",), name="l1"))
    tsv.unlink()
    sidecar = folder / "uno.txt"
    sidecar.write_bytes("ma\u00f1ana".encode("latin-1"))
    with pytest.raises(SourceError, match=rf"{sidecar} is not UTF-8"):
        build_dataset(options(folder, tmp_path, source="folder", splits=("all",), name="l1"))
    covost = tmp_path / "covost.tsv"
    covost.write_bytes("path\tsentence\ttranslation\nx.mp3\tma\u00f1ana\tmorning\n".encode("latin-1"))
    with pytest.raises(SourceError, match=rf"{covost} is not UTF-8"):
        build_dataset(options(release, tmp_path, covost=covost))
