"""FLEURS es -> zh: ingestion of both layouts (audio folder, tar.gz), the join by id and its rejections, safe
archive reading, and the end to end: FLEURS fixture -> `run --local --models fixtures` -> metrics.json."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from clearml_pipeline.evaluation import QUALITY_KEYS
from data_prep.dataset import DatasetResult, build_dataset
from data_prep.fleurs import read_fleurs
from data_prep.ingest import IngestOptions
from data_prep.manifest import ManifestRow, read_manifest
from data_prep.sources import SourceError
from tests.cli import ok
from tests.cli import python_m as cli
from tests.fleurs_fixture import (
    BY_ID,
    HOSTILE_ESCAPE,
    HOSTILE_LINK,
    MISSING_FILE,
    RECORDINGS,
    good_files,
    make_fleurs_fixture,
)


def ingest(path: Path | None, out: Path, **kw: Any) -> DatasetResult:
    opts = IngestOptions(
        source="fleurs", splits=kw.pop("splits", ("test", "dev")), out=out, name="fleurs", path=path, **kw
    )
    return build_dataset(opts.__class__(**{**opts.__dict__, "show_progress": False}))


def rows_by_file(result: DatasetResult) -> dict[str, ManifestRow]:
    return {Path(r.source_path).name: r for r in read_manifest(result.folder / "manifest.jsonl")}


@pytest.fixture(scope="module")
def folder_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fleurs_fixture(tmp_path_factory.mktemp("fleurs_folder"))


@pytest.fixture(scope="module")
def archive_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fleurs_fixture(tmp_path_factory.mktemp("fleurs_tar"), archive=True)


@pytest.fixture(scope="module")
def folder_dataset(folder_release: Path, tmp_path_factory: pytest.TempPathFactory) -> DatasetResult:
    return ingest(folder_release, tmp_path_factory.mktemp("ds_folder"))


def test_the_folder_layout_joins_spanish_clips_to_mandarin_and_english_by_id(folder_dataset: DatasetResult) -> None:
    rows = rows_by_file(folder_dataset)
    assert set(rows) == set(good_files())  # every recording with a Mandarin row, both readers of 1001 included
    for file, sentence in good_files().items():
        row = rows[file]
        assert row.reference_zh == sentence.zh and row.reference_en == sentence.en and row.sentence == sentence.es
        assert row.split == sentence.split and row.locale == "es_419"
        assert (folder_dataset.folder / row.audio).is_file() and 0.5 < row.duration_s < 10
    assert rows["10000000000000005.wav"].reference_en is None  # sentence 1004 has no en_us row: kept, no English
    assert rows["10000000000000001.wav"].gender == "female" and rows["10000000000000002.wav"].gender == "male"
    info = folder_dataset.info
    assert info["counts"]["with_reference_zh"] == len(good_files()) and info["format"] == "s2st-dataset/2"


def test_rows_without_a_mandarin_reference_or_audio_are_rejected_with_reasons(folder_dataset: DatasetResult) -> None:
    report = json.loads((folder_dataset.folder / "report.json").read_text(encoding="utf-8"))
    reasons = {Path(r["source_path"]).name: (r["reason"], r["detail"]) for r in report["rejections"]}
    no_zh = next(f for i, f, _, _ in RECORDINGS if i == "1099")
    assert reasons[no_zh] == ("no_reference_zh", "FLEURS id 1099: no cmn_hans_cn transcription")
    assert reasons[MISSING_FILE[1]][0] == "missing_file"
    assert len(reasons) == 2 and report["selected"] == report["accepted"] + report["rejected"] == len(RECORDINGS) + 1
    assert "no_reference_zh" in (folder_dataset.folder / "report.md").read_text(encoding="utf-8")


@pytest.fixture()
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp folder archive members are copied to, inside tmp_path so tests can see what is left there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_the_archive_layout_gives_the_same_dataset_as_the_folder(
    archive_release: Path, folder_dataset: DatasetResult, tmp_path: Path, scratch: Path
) -> None:
    result = ingest(archive_release, tmp_path / "out")
    # Same rows, same WAV bytes, same rejections: the content hash (location-free) is the folder's.
    assert result.content_hash == folder_dataset.content_hash
    assert rows_by_file(result).keys() == rows_by_file(folder_dataset).keys()
    assert list(scratch.iterdir()) == []  # the copied-out members are gone once ingested


def test_archive_members_never_write_outside_and_links_are_refused(tmp_path: Path, scratch: Path) -> None:
    release = make_fleurs_fixture(tmp_path / "hostile", archive=True, hostile=True)
    result = ingest(release, tmp_path / "out", splits=("test",))
    report = json.loads((result.folder / "report.json").read_text(encoding="utf-8"))
    reasons = {Path(r["source_path"]).name: (r["reason"], r["detail"]) for r in report["rejections"]}
    assert reasons[HOSTILE_ESCAPE][0] == "unsafe_path" and "climbs out" in reasons[HOSTILE_ESCAPE][1]
    assert reasons[HOSTILE_LINK] == ("unsafe_path", f"archive member 'test/{HOSTILE_LINK}' is a link, not a file")
    # '../../<name>' from the scratch folder (tmp_path/tmp/fleurs-*/test/) would land in tmp_path/tmp: nothing
    # by that name exists anywhere under tmp_path, and no link was created.
    assert list(tmp_path.rglob(HOSTILE_ESCAPE)) == [] and list(tmp_path.rglob(HOSTILE_LINK)) == []
    assert list(scratch.iterdir()) == []
    accepted = rows_by_file(result)
    assert HOSTILE_ESCAPE not in accepted and HOSTILE_LINK not in accepted and "10000000000000001.wav" in accepted


def test_the_hub_layout_under_data_and_a_split_subset(tmp_path: Path) -> None:
    release = make_fleurs_fixture(tmp_path, hub_layout=True)
    clips = read_fleurs(release, ["dev"]).clips
    assert [(c.split, c.reference_zh, c.reference_en) for c in clips] == [("dev", BY_ID["2001"].zh, BY_ID["2001"].en)]


def test_a_bad_release_fails_before_any_work(folder_release: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no es_419/ folder"):
        read_fleurs(tmp_path, ["test"])
    broken = tmp_path / "broken"
    shutil.copytree(folder_release, broken)
    (broken / "es_419" / "test.tsv").write_text("1001\tonly two columns\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"test.tsv:1: 2 columns, a FLEURS TSV has 7"):
        read_fleurs(broken, ["test"])
    with pytest.raises(SourceError, match="split 'train'"):
        read_fleurs(folder_release, ["train"])
    shutil.rmtree(broken / "cmn_hans_cn")
    with pytest.raises(SourceError, match="no cmn_hans_cn/ folder"):
        read_fleurs(broken, ["dev"])


def test_a_corrupt_archive_is_a_source_error(folder_release: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    shutil.copytree(folder_release, release)
    shutil.rmtree(release / "es_419" / "audio" / "dev")
    (release / "es_419" / "audio" / "dev.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(SourceError, match=r"cannot read FLEURS archive dev\.tar\.gz"):
        ingest(release, tmp_path / "out", splits=("dev",))


def test_the_hub_copy_downloads_only_what_the_splits_need(
    folder_release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    asked: dict[str, Any] = {}

    def fake_snapshot(repo_id: str, **kw: Any) -> str:
        asked.update(kw, repo_id=repo_id)
        return str(folder_release)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    result = ingest(None, tmp_path, splits=("dev",), hf_name="google/fleurs")
    assert asked["repo_id"] == "google/fleurs" and asked["repo_type"] == "dataset"
    assert sorted(asked["allow_patterns"]) == sorted(
        ["data/es_419/dev.tsv", "data/cmn_hans_cn/dev.tsv", "data/en_us/dev.tsv", "data/es_419/audio/dev.tar.gz"]
    )
    assert [r.reference_zh for r in read_manifest(result.folder / "manifest.jsonl")] == [BY_ID["2001"].zh]


def test_a_manifest_written_before_reference_zh_still_reads(tmp_path: Path) -> None:
    old = {"id": "a", "audio": "audio/a.wav", "duration_s": 1.0, "sentence": "hola", "split": "test",
           "source_path": "a.mp3", "reference_en": "hello"}  # fmt: skip
    (tmp_path / "manifest.jsonl").write_text(json.dumps(old) + "\n", encoding="utf-8")
    (row,) = read_manifest(tmp_path / "manifest.jsonl", check_audio=False)
    assert row.reference_zh is None and row.reference_en == "hello"


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def e2e(archive_release: Path, fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ingest (dev: one clip, to keep the fixture TTS short) -> `run --local --runtime inprocess` -> evaluate."""
    root = tmp_path_factory.mktemp("e2e")
    printed = ok(
        cli("data_prep", "ingest", "--source", "fleurs", "--path", str(archive_release), "--split", "dev",
            "--out", str(root / "datasets"), "--no-progress")
    )  # fmt: skip
    dataset = Path(re.search(r"^dataset\s+(\S+)", printed, re.MULTILINE).group(1))  # type: ignore[union-attr]
    out = root / "run"
    ok(cli("clearml_pipeline", "run", "--local", "--runtime", "inprocess", "--input", str(dataset), "--output",
           str(out), "--models", "fixtures", "--batch-size", "4"))  # fmt: skip
    evaluated = ok(cli("clearml_pipeline", "evaluate", "--run", str(out), "--manifest", str(dataset / "manifest.jsonl"),
                       "--tracking", "offline"))  # fmt: skip
    return {"printed": printed, "evaluated": evaluated, "dataset": dataset, "out": out}


def test_fleurs_runs_end_to_end_to_metrics_with_the_mandarin_keys(e2e: dict[str, Any]) -> None:
    assert "1 with a Mandarin one" in e2e["printed"]
    metrics = json.loads((e2e["out"] / "metrics.json").read_text(encoding="utf-8"))
    quality = metrics["quality"]
    assert quality["items"] == metrics["counts"]["items"] == 1 and metrics["dataset"]["matched_items"] == 1
    assert quality["split"] == "dev" and quality["dataset"] == f"{e2e['dataset'].parent.name}@{e2e['dataset'].name}"
    for key, _, _, signature in QUALITY_KEYS:
        assert key in quality and quality[key] is not None, key  # the one clip is scored by every metric
        assert quality["scored_items"][key] == 1
        if signature:
            assert quality["signatures"][key], key
    for key in ("zh_bleu", "zh_chrf", "asr_bleu", "asr_chrf", "en_bleu", "en_chrf"):
        assert 0 <= quality[key] <= 100  # fixture weights: noise, never a quality figure
    for key in ("zh_bleu", "asr_bleu"):
        assert "tok:char" in quality["signatures"][key]
    asr_signature = quality["signatures"]["asr_bleu"]
    assert "norm:nfkc+casefold+numbers+t2s+nopunct" in asr_signature and "asr:openai/whisper-large" in asr_signature
    assert "asr_beam:1" in asr_signature and "asr_temp:0.0" in asr_signature
    assert "tok:13a" in quality["signatures"]["en_bleu"]
    (item,) = metrics["items"]
    assert item["reference_zh"] == BY_ID["2001"].zh and item["reference_en"] == BY_ID["2001"].en
    assert item["zh_translation_reason"] is None and item["asr_translation_reason"] is None
    assert item["asr_zh_normalized"] is not None
    assert metrics["asr"]["temperature"] == 0.0 and metrics["asr"]["num_beams"] == 1 and not metrics["asr"]["fallback"]
    report = (e2e["out"] / "report.md").read_text(encoding="utf-8")
    assert "## Quality" in report and asr_signature in report and f"| {quality['dataset']} | dev | 1/1 |" in report
    assert "ASR-BLEU" in e2e["evaluated"]


def test_the_evaluation_logged_the_quality_scalars(e2e: dict[str, Any]) -> None:
    import zipfile

    metrics = json.loads((e2e["out"] / "metrics.json").read_text(encoding="utf-8"))
    zips = sorted((e2e["out"] / "clearml").glob("*.zip"))
    assert len(zips) == 1, zips
    with zipfile.ZipFile(zips[0]) as archive:
        lines = archive.read("metrics.jsonl").decode().splitlines()
    events = [e for line in lines if line.strip() for e in json.loads(line)]
    scalars = {(e["metric"], e["variant"]): e["value"] for e in events if e["type"] == "training_stats_scalar"}
    for key in ("zh_bleu", "zh_chrf", "asr_bleu", "asr_chrf", "en_bleu", "en_chrf"):
        assert scalars[("quality", key)] == pytest.approx(metrics["quality"][key])
    assert scalars[("scored items", "zh_translation")] == scalars[("scored items", "asr_translation")] == 1
