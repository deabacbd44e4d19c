"""A small FLEURS-layout release with Spanish speech (espeak-ng), for the es -> zh ingestion and evaluation tests.

Layout, as google/fleurs ships it (configs under `<root>/fleurs/`, or `<root>/fleurs/data/` with hub_layout):
    es_419/{test,dev}.tsv                      no header: id, file, raw, transcription, characters, samples, gender
    es_419/audio/{test,dev}/<file>.wav         16 kHz mono WAV        (archive=False)
    es_419/audio/{test,dev}.tar.gz             members <split>/<file> (archive=True)
    cmn_hans_cn/{test,dev}.tsv, en_us/{test,dev}.tsv   text only: the references joined by id
The sentences are made up for the tests (not FLoRes text). Sentence 1001 is read twice (two "speakers"), 1099
has no Mandarin row (rejected: no_reference_zh), 1004 no English row, 3001 is Mandarin only (ignored), and
MISSING_FILE is a test row whose audio is nowhere.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf


@dataclass(frozen=True)
class Sentence:
    id: str
    split: str
    es: str
    zh: str | None
    en: str | None


SENTENCES: tuple[Sentence, ...] = (
    Sentence(
        "1001", "test", "El tren sale a las ocho de la mañana.", "火车早上八点出发。", "The train leaves at eight."
    ),
    Sentence("1002", "test", "Me gusta leer libros de historia.", "我喜欢读历史书。", "I like reading history books."),
    Sentence("1003", "test", "Hace mucho frío en invierno.", "冬天很冷。", "It is very cold in winter."),
    Sentence("1004", "test", "La ciudad tiene 300 parques.", "这座城市有300个公园。", None),
    Sentence("1099", "test", "Esta frase no tiene traducción.", None, "This sentence has no translation."),
    Sentence("2001", "dev", "El gato duerme en la casa.", "猫在房子里睡觉。", "The cat sleeps in the house."),
)
MANDARIN_ONLY = Sentence("3001", "test", "", "孤立的句子。", "A lone sentence.")
# (sentence id, file name, espeak speed, gender): the Spanish recordings; 1001 twice, as FLEURS has several readers.
RECORDINGS: tuple[tuple[str, str, int, str], ...] = (
    ("1001", "10000000000000001.wav", 175, "FEMALE"),
    ("1001", "10000000000000002.wav", 140, "MALE"),
    ("1002", "10000000000000003.wav", 175, "MALE"),
    ("1003", "10000000000000004.wav", 160, "FEMALE"),
    ("1004", "10000000000000005.wav", 175, "FEMALE"),
    ("1099", "10000000000000006.wav", 175, "MALE"),
    ("2001", "10000000000000007.wav", 175, "FEMALE"),
)
MISSING_FILE = ("1002", "10000000000000099.wav")  # a test.tsv row whose audio was never written
BY_ID = {s.id: s for s in SENTENCES}


def good_files() -> dict[str, Sentence]:
    """file name -> sentence, for the recordings that ingest must accept (those with a Mandarin reference)."""
    return {f: BY_ID[i] for i, f, _, _ in RECORDINGS if BY_ID[i].zh is not None}


def tools_available() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def _speak(text: str, wav: Path, speed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", "es", "-s", str(speed), "-w", str(raw), text], check=True, capture_output=True
        )
        # FLEURS's audio: 16 kHz mono 16-bit WAV; -D (no dither): the same bytes every time, so hashes compare.
        subprocess.run(
            ["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True, capture_output=True
        )


def _normalized(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum() or c == " ").strip()


def _tsv(path: Path, rows: list[tuple[str, str, str, int, str]]) -> None:
    """FLEURS TSV lines: no header, 7 columns."""
    lines = []
    for sid, file, raw, samples, gender in rows:
        norm = _normalized(raw)
        lines.append("\t".join([sid, file, raw, norm, "|".join(norm.replace(" ", "|")), str(samples), gender]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_fleurs_fixture(root: Path, archive: bool = False, hub_layout: bool = False, hostile: bool = False) -> Path:
    """Write the release under `root`; returns the folder `--path` takes.

    archive=True packs each split's audio as <split>.tar.gz; hostile=True (archives only) adds members that must
    never be written where they say: `../../escape.wav` and a symlink, both named like rows of test.tsv."""
    if not tools_available():
        raise RuntimeError("espeak-ng and sox are needed for the FLEURS fixture (apt-get install espeak-ng sox)")
    top = Path(root) / "fleurs"
    base = top / "data" if hub_layout else top
    es = base / "es_419"
    audio: dict[str, dict[str, bytes]] = {"test": {}, "dev": {}}
    es_rows: dict[str, list[tuple[str, str, str, int, str]]] = {"test": [], "dev": []}
    with tempfile.TemporaryDirectory() as tmp:
        for sid, file, speed, gender in RECORDINGS:
            s = BY_ID[sid]
            wav = Path(tmp) / file
            _speak(s.es, wav, speed)
            audio[s.split][file] = wav.read_bytes()
            es_rows[s.split].append((sid, file, s.es, sf.info(str(wav)).frames, gender))
    es_rows["test"].append((MISSING_FILE[0], MISSING_FILE[1], BY_ID[MISSING_FILE[0]].es, 16000, "MALE"))
    for split, rows in es_rows.items():
        _tsv(es / f"{split}.tsv", rows)
        if archive:
            _write_archive(es / "audio" / f"{split}.tar.gz", split, audio[split], hostile and split == "test")
        else:
            for file, data in audio[split].items():
                (es / "audio" / split).mkdir(parents=True, exist_ok=True)
                (es / "audio" / split / file).write_bytes(data)
    for config, lang in (("cmn_hans_cn", "zh"), ("en_us", "en")):
        for split in ("test", "dev"):
            rows = [
                (s.id, f"{config}_{s.id}.wav", getattr(s, lang), 16000, "FEMALE")
                for s in (*SENTENCES, MANDARIN_ONLY)
                if s.split == split and getattr(s, lang)
            ]
            _tsv(base / config / f"{split}.tsv", rows)
    return top


HOSTILE_ESCAPE = "10000000000000003.wav"  # a good row's name: the archive's first member by that name escapes
HOSTILE_LINK = "10000000000000004.wav"  # a good row's name: the archive's first member by that name is a link


def _write_archive(path: Path, split: str, files: dict[str, bytes], hostile: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        if hostile:
            evil = tarfile.TarInfo(f"../../{HOSTILE_ESCAPE}")
            evil.size = len(files[HOSTILE_ESCAPE])
            tar.addfile(evil, io.BytesIO(files[HOSTILE_ESCAPE]))
            link = tarfile.TarInfo(f"{split}/{HOSTILE_LINK}")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{split}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
