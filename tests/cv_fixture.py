"""A small Common Voice-layout release with real Spanish speech (espeak-ng), for ingestion and pipeline tests.

Layout, as Common Voice ships it (the folder returned is the language folder):
    <root>/cv-corpus-fixture/es/{validated,train,dev,test}.tsv
    <root>/cv-corpus-fixture/es/clips/*.mp3          48 kHz mono mp3
    <root>/covost_v2.es_en.tsv                       CoVoST 2 es->en references for the good clips
Good clips are spread over train/dev/test (i % 3); every bad row is in test; validated.tsv lists them all.
Everything is deterministic: espeak-ng and SoX's mp3 encoder give byte-identical files run after run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

# (Spanish sentence, English reference); the quotes in one of them check that TSVs are read unquoted.
SENTENCES: tuple[tuple[str, str], ...] = (
    ("hola, ¿cómo estás?", "hello, how are you?"),
    ("el gato duerme en la casa", "the cat sleeps in the house"),
    ("mañana vamos a la playa", "tomorrow we are going to the beach"),
    ('ella dijo "buenos días" y sonrió', 'she said "good morning" and smiled'),
    ("el tren sale a las ocho", "the train leaves at eight"),
    ("me gusta leer libros de historia", "i like reading history books"),
    ("¿dónde está la estación de autobuses?", "where is the bus station?"),
    ("hace mucho frío en invierno", "it is very cold in winter"),
)

COLUMNS = (
    "client_id",
    "path",
    "sentence",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
    "variant",
    "locale",
    "segment",
)
LEGACY_COLUMNS = (
    "client_id",
    "path",
    "sentence",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accent",
    "locale",
    "segment",
)
AGES = ("twenties", "thirties", "fourties", "fifties", "", "teens")
GENDERS = ("female_feminine", "male_masculine", "", "female_feminine", "male_masculine", "")
ACCENTS = ("España: Centro-Sur peninsular", "México", "", "Andino-Pacífico", "Caribe", "Rioplatense")

# Bad rows, by Common Voice path, with the rejection reason ingestion must report.
BAD_ROWS: dict[str, str] = {
    "common_voice_es_19700001.mp3": "corrupt",  # text bytes, not mp3
    "common_voice_es_19700002.mp3": "empty_file",  # 0 bytes
    "common_voice_es_19700003.mp3": "silent",  # 2 s of digital silence
    "common_voice_es_19700004.mp3": "too_long",  # speech padded to ~33 s (> 30 s default)
    "common_voice_es_19700005.mp3": "too_short",  # a 0.25 s beep (< 0.5 s default)
    "common_voice_es_19700006.mp3": "missing_file",  # listed, never written
    "common_voice_es_19700007.mp3": "unsafe_path",  # a symlink to a real mp3 outside the release
    "../../etc/passwd": "unsafe_path",  # climbs out of clips/
}


def good_path(i: int) -> str:
    return f"common_voice_es_{19600000 + i}.mp3"


def good_split(i: int) -> str:
    return ("train", "dev", "test")[i % 3]


def tools_available() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _to_mp3(wav: Path, mp3: Path, *effects: str) -> None:
    """48 kHz mono mp3 with SoX; libsndfile's MP3 writer when this SoX lacks an mp3 encoder."""
    try:
        _run("sox", str(wav), "-r", "48000", "-c", "1", str(mp3), *effects)
    except subprocess.CalledProcessError:
        if effects:
            raise
        from resources.audio import load_audio

        audio = load_audio(wav, 48000)
        sf.write(str(mp3), audio.samples, 48000, format="MP3")


def _speak(text: str, mp3: Path, *effects: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        _run("espeak-ng", "-v", "es", "-w", str(wav), text)
        _to_mp3(wav, mp3, *effects)


def _client_id(i: int) -> str:
    return hashlib.sha512(f"fixture-speaker-{i % 4}".encode()).hexdigest()


def _tsv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    lines = ["\t".join(columns)] + ["\t".join(row.get(c, "") for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _row(i: int, path: str, sentence: str, legacy: bool) -> dict[str, str]:
    accent = ACCENTS[i % len(ACCENTS)]
    return {
        "client_id": _client_id(i),
        "path": path,
        "sentence": sentence,
        "up_votes": str(2 + i % 3),
        "down_votes": str(i % 2),
        "age": AGES[i % len(AGES)],
        "gender": GENDERS[i % len(GENDERS)],
        "accent" if legacy else "accents": accent,
        "variant": "",
        "locale": "es",
        "segment": "",
    }


def make_common_voice_fixture(root: Path, n_good: int = 6, legacy: bool = False) -> Path:
    """Write the release under `root` and return its language folder (what `--path` takes).

    `legacy=True` writes an older release's columns (`accent`, no `variant`)."""
    if not 1 <= n_good <= len(SENTENCES):
        raise ValueError(f"n_good must be 1..{len(SENTENCES)}")
    if not tools_available():
        raise RuntimeError("espeak-ng and sox are needed for the Common Voice fixture (apt-get install espeak-ng sox)")
    release = Path(root) / "cv-corpus-fixture" / "es"
    clips = release / "clips"
    clips.mkdir(parents=True, exist_ok=True)

    good_rows: list[dict[str, str]] = []
    for i in range(n_good):
        sentence, _ = SENTENCES[i]
        _speak(sentence, clips / good_path(i))
        good_rows.append(_row(i, good_path(i), sentence, legacy) | {"_split": good_split(i)})

    bad = list(BAD_ROWS)
    (clips / bad[0]).write_bytes(b"this is not an mp3 file\n" * 40)
    (clips / bad[1]).write_bytes(b"")
    _run("sox", "-n", "-r", "48000", "-c", "1", str(clips / bad[2]), "trim", "0", "2.0")
    _speak("esta grabación es demasiado larga", clips / bad[3], "pad", "0", "31")
    _run("sox", "-n", "-r", "48000", "-c", "1", str(clips / bad[4]), "synth", "0.25", "sine", "440")
    # bad[5] is never written: the row's file is missing.
    outside = Path(root) / "outside.mp3"
    shutil.copyfile(clips / good_path(0), outside)
    link = clips / bad[6]
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(outside.resolve(), link)
    bad_rows = [
        _row(100 + k, path, f"frase mala número {k}", legacy) | {"_split": "test"} for k, path in enumerate(bad)
    ]

    columns = LEGACY_COLUMNS if legacy else COLUMNS
    everything = good_rows + bad_rows
    _tsv(release / "validated.tsv", columns, everything)
    for split in ("train", "dev", "test"):
        _tsv(release / f"{split}.tsv", columns, [r for r in everything if r["_split"] == split])

    covost = [
        {"path": good_path(i), "sentence": SENTENCES[i][0], "translation": SENTENCES[i][1], "client_id": _client_id(i)}
        for i in range(n_good)
    ]
    # A reference for a clip the release does not hold: the join must ignore it.
    covost.append({"path": "common_voice_es_1.mp3", "sentence": "x", "translation": "x", "client_id": _client_id(0)})
    _tsv(covost_path(release), ("path", "sentence", "translation", "client_id"), covost)
    return release


def covost_path(release: Path) -> Path:
    return release.parent.parent / "covost_v2.es_en.tsv"


def hf_dataset_from_release(release: Path, split: str) -> object:
    """The release's `split` as the hub serves Common Voice: a streamed `datasets.IterableDataset` with an
    undecoded-on-disk Audio(48 kHz) column of mp3 bytes, `accent` (hub naming) and archive-style paths.
    Rows whose file is missing or outside the release are left out, as they would not exist on the hub."""
    import datasets

    from data_prep.sources import read_tsv

    rows = [
        r for r in read_tsv(release / f"{split}.tsv") if BAD_ROWS.get(r["path"]) not in ("missing_file", "unsafe_path")
    ]
    columns = ("client_id", "sentence", "up_votes", "down_votes", "age", "gender", "locale", "segment")
    data: dict[str, list[object]] = {c: [r.get(c, "") for r in rows] for c in columns}
    data["accent"] = [r.get("accents", r.get("accent", "")) for r in rows]
    data["up_votes"] = [int(v) for v in data["up_votes"]]
    data["down_votes"] = [int(v) for v in data["down_votes"]]
    data["path"] = [f"es_{split}_0/{r['path']}" for r in rows]
    data["audio"] = [{"bytes": (release / "clips" / r["path"]).read_bytes(), "path": r["path"]} for r in rows]
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in data if c not in ("audio", "up_votes", "down_votes")},
            "up_votes": datasets.Value("int64"),
            "down_votes": datasets.Value("int64"),
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        }
    )
    ds = datasets.Dataset.from_dict(data, features=features)
    # Cast (no encoding) to the hub's feature type: decoding it would need torchcodec, which ingestion avoids.
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=48000))
    return ds.to_iterable_dataset()


def write_folder_fixture(root: Path, release: Path) -> Path:
    """A plain folder source: wav/flac/mp3 files in nested folders, transcripts from transcripts.tsv and .txt
    sidecars, one file with no transcript, one corrupt file, and a transcripts.tsv row escaping the folder."""
    from resources.audio import load_audio

    folder = Path(root) / "recordings"
    (folder / "session2").mkdir(parents=True, exist_ok=True)
    a = load_audio(release / "clips" / good_path(0), 22050)
    sf.write(str(folder / "uno.wav"), a.samples, 22050, subtype="PCM_16")
    b = load_audio(release / "clips" / good_path(1), 44100)
    sf.write(str(folder / "session2" / "dos.flac"), np.stack([b.samples, b.samples], axis=1), 44100)  # stereo
    shutil.copyfile(release / "clips" / good_path(2), folder / "session2" / "tres.mp3")
    (folder / "session2" / "tres.txt").write_text(SENTENCES[2][0] + "\n", encoding="utf-8")
    shutil.copyfile(release / "clips" / good_path(3), folder / "sin_texto.mp3")
    (folder / "roto.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (folder / "notes.md").write_text("not audio", encoding="utf-8")
    lines = [
        "path\tsentence",
        f"uno.wav\t{SENTENCES[0][0]}",
        f"session2/dos.flac\t{SENTENCES[1][0]}",
        "../secret.wav\tfuera de la carpeta",
    ]
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
