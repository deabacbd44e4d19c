"""One reader per source kind, each yielding `SourceClip`s: the clip's identity, text, metadata and where its
audio is. Readers never decode audio and never drop a row: a row they cannot place (an unsafe path) is yielded
with `unsafe` set, so ingestion can list it in the report.

- Common Voice release folder: `<lang>/{validated,train,dev,test,...}.tsv` + `<lang>/clips/*.mp3`.
- Hugging Face `datasets` (streamed): Common Voice's hub layout (path, audio, sentence, client_id, ...).
- FLEURS release as on the hub (data_prep.fleurs): es_419 clips joined to cmn_hans_cn/en_us text by sentence id.
- Plain folder of audio files, transcripts optional: a `transcripts.tsv` at the folder root (header
  `path<TAB>sentence`, paths relative to the folder, the Common Voice convention) and/or a `<name>.txt` next to
  each audio file (its whole content, stripped, is the sentence); the TSV wins when both name a file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from resources.audio import AUDIO_EXTENSIONS
from resources.paths import UnsafePathError, safe_id, safe_join

# Common Voice TSVs hold hundreds of thousands of rows and sentences with quotes in them: read them as raw TSV
# (no quoting), with the field size limit raised for the occasional very long sentence.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

COMMON_VOICE_SPLITS = ("validated", "train", "dev", "test", "other", "invalidated")
TRANSCRIPTS_TSV = "transcripts.tsv"


class SourceError(RuntimeError):
    """A source that cannot be read at all (missing folder or TSV, unreachable hub): fail before any work."""


@dataclass(frozen=True)
class SourceClip:
    id: str
    split: str
    source_path: str  # as the source names it; the report and the CoVoST join use it
    sentence: str | None
    file: Path | None = None  # the audio file on disk, or None when `data` holds it (or the path is unsafe)
    data: bytes | None = None  # encoded audio in memory (streamed datasets); format from source_path's suffix
    unsafe: str | None = None  # why the path was refused; such a clip is rejected as "unsafe_path"
    renamed_from: str | None = None  # the id it had before ingest made ids unique (listed in the report)
    speaker: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)  # demographic columns (manifest.DEMOGRAPHIC_COLUMNS)
    # References the source itself joins (FLEURS: by sentence id); CoVoST's --covost join fills reference_en later.
    reference_en: str | None = None
    reference_zh: str | None = None
    rejected: tuple[str, str] | None = None  # (reason, detail) the reader already knows, e.g. no Mandarin reference


def clip_id(source_path: str) -> str:
    """Stable, file-name-safe id from the source path: 'common_voice_es_123.mp3' -> 'common_voice_es_123',
    'session2/dos.flac' -> 'session2_dos', '../../x.mp3' -> 'x' (see resources.paths.safe_id)."""
    posix = PurePosixPath(source_path.replace("\\", "/"))
    return safe_id(str(posix.with_suffix("")) if posix.suffix else str(posix))


def speaker_pseudonym(client_id: str | None) -> str | None:
    # A one-way short hash: clips still group by speaker, the source's identifier is not repeated downstream.
    if not client_id:
        return None
    return hashlib.sha256(client_id.encode("utf-8")).hexdigest()[:16]


def _none_if_empty(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _to_int(value: Any) -> int | None:
    value = _none_if_empty(value)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def demographics(row: Mapping[str, Any]) -> dict[str, Any]:
    """Common Voice's metadata columns, under the manifest's names (older releases: `accent`)."""
    accents = row.get("accents", row.get("accent"))
    return {
        "age": _none_if_empty(row.get("age")),
        "gender": _none_if_empty(row.get("gender")),
        "accents": _none_if_empty(accents),
        "variant": _none_if_empty(row.get("variant")),
        "locale": _none_if_empty(row.get("locale")),
        "up_votes": _to_int(row.get("up_votes")),
        "down_votes": _to_int(row.get("down_votes")),
    }


def read_tsv(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of a header-first TSV; a file without the `required` columns is the wrong file: say so."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise SourceError(f"{path.name}: no {', '.join(missing)} column (header: {reader.fieldnames})")
            return list(reader)
    except UnicodeDecodeError as exc:
        raise SourceError(not_utf8(path)) from exc


def not_utf8(path: Path) -> str:
    """Which file, and which line: a decoder's message names neither (and its offset is within a buffer)."""
    try:
        raw = path.read_bytes()  # only on this error path
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return f"{path} is not UTF-8 text (line {line}: byte 0x{raw[exc.start]:02x}); re-save it as UTF-8"
    except OSError:
        pass
    return f"{path} is not UTF-8 text; re-save it as UTF-8"


def read_sidecar(sidecar: Path) -> str | None:
    try:
        return _none_if_empty(sidecar.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SourceError(not_utf8(sidecar)) from exc


def parse_splits(text: str) -> list[str]:
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits:
        raise SourceError("no split given")
    return splits


def _located(root: Path, rel: str) -> tuple[Path | None, str | None]:
    try:
        return safe_join(root, rel), None
    except UnsafePathError as exc:
        return None, str(exc)


# ---------------------------------------------------------------------------------------------- Common Voice


def read_common_voice(release: str | Path, splits: Iterable[str]) -> list[SourceClip]:
    """Rows of `<release>/<split>.tsv`, audio under `<release>/clips/`."""
    release = Path(release)
    clips_dir = release / "clips"
    if not clips_dir.is_dir():
        raise SourceError(f"{release} is not a Common Voice release folder (no clips/ folder)")
    out: list[SourceClip] = []
    for split in splits:
        tsv = safe_join(release, f"{split}.tsv") if "/" not in split else None
        if tsv is None or not tsv.is_file():
            found = sorted(p.stem for p in release.glob("*.tsv"))
            raise SourceError(f"split {split!r}: no {split}.tsv in {release} (found: {', '.join(found) or 'none'})")
        for row in read_tsv(tsv, required=("path", "sentence")):
            rel = (row.get("path") or "").strip()
            file, unsafe = _located(clips_dir, rel)
            out.append(
                SourceClip(
                    id=clip_id(rel),
                    split=split,
                    source_path=rel,
                    sentence=_none_if_empty(row.get("sentence")),
                    file=file,
                    unsafe=unsafe,
                    speaker=speaker_pseudonym(_none_if_empty(row.get("client_id"))),
                    meta=demographics(row),
                )
            )
    return out


# ---------------------------------------------------------------------------------------------- plain folder


def read_folder(folder: str | Path, split: str) -> list[SourceClip]:
    """Every audio file under `folder` (recursively, symlinked folders not followed) plus transcripts.tsv rows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    transcripts: dict[str, str | None] = {}
    tsv = folder / TRANSCRIPTS_TSV
    if tsv.is_file():
        for row in read_tsv(tsv, required=("path", "sentence")):
            rel = (row.get("path") or "").strip().replace("\\", "/")
            if rel:
                transcripts[rel] = _none_if_empty(row.get("sentence"))
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        # Every entry named like audio is a row: FIFOs, sockets and dangling symlinks come in `filenames`, and a
        # folder named x.wav is listed too (then walked as a folder), so each is rejected with what it is.
        for name in sorted(filenames) + dirnames:
            if name.lower().endswith(AUDIO_EXTENSIONS):
                found.append((Path(dirpath) / name).relative_to(folder).as_posix())
    # Rows named only by transcripts.tsv (missing or unsafe files) are kept so the report can list them.
    rels = sorted(set(found) | set(transcripts))
    out: list[SourceClip] = []
    for rel in rels:
        file, unsafe = _located(folder, rel)
        sentence = transcripts.get(rel)
        if sentence is None and file is not None:
            sidecar = file.with_suffix(".txt")
            if sidecar.is_file():
                try:
                    safe_join(folder, sidecar.relative_to(folder).as_posix())
                    sentence = read_sidecar(sidecar)
                except UnsafePathError:
                    sentence = None
        out.append(
            SourceClip(id=clip_id(rel), split=split, source_path=rel, sentence=sentence, file=file, unsafe=unsafe)
        )
    return out


# ---------------------------------------------------------------------------------------------- Hugging Face

# (name, config, split=..., streaming=True, token=...) -> an iterable of rows; datasets.load_dataset by default.
HFLoader = Callable[..., Any]


def _offline_env() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_hub(name: str, token: str | None, timeout: float = 10.0) -> None:
    """Fail in well under a second when the hub cannot be reached (datasets itself retries for ~25 s), and say
    why: no network, a gated dataset whose terms were not accepted, a bad token, a misspelt name."""
    if _offline_env() or Path(name).exists():
        return  # a cached copy or a local dataset folder: nothing to reach
    from huggingface_hub import HfApi  # imported here: the other sources do not need it

    try:
        HfApi().dataset_info(name, token=token, timeout=timeout)
    except Exception as exc:  # any failure means "cannot stream it"
        kind = type(exc).__name__
        hint = {
            "GatedRepoError": "gated dataset: accept its terms on the hub and pass a token (--hf-token/HF_TOKEN)",
            "RepositoryNotFoundError": "no such dataset, or it is private and the token cannot see it",
        }.get(kind, "check the network/proxy, or set HF_HUB_OFFLINE=1 to use a copy already in the cache")
        raise SourceError(f"cannot reach Hugging Face dataset {name!r} ({kind}: {exc}); {hint}") from exc


def default_hf_loader(name: str, config: str | None, *, split: str, streaming: bool, token: str | None) -> Any:
    import datasets

    return datasets.load_dataset(name, config, split=split, streaming=streaming, token=token)


def _undecoded(ds: Any) -> Any:
    """Ask for the audio column as stored bytes: datasets 4+ would otherwise decode it with torchcodec (not in
    our stack); we decode with soundfile like every other source."""
    features = getattr(ds, "features", None)
    if features is None or "audio" not in features or not hasattr(ds, "cast_column"):
        return ds
    import datasets

    feature = features["audio"]
    if isinstance(feature, datasets.Audio) and feature.decode:
        return ds.cast_column("audio", datasets.Audio(decode=False))
    return ds


def _audio_payload(audio: Any, source_path: str) -> tuple[Path | None, bytes | None, str]:
    """(file, data, source_path) from a row's audio value: {bytes, path}, {array, sampling_rate}, or a path."""
    if isinstance(audio, (str, os.PathLike)):
        return Path(audio), None, source_path
    if not isinstance(audio, Mapping):
        return None, None, source_path
    if audio.get("bytes") is not None:  # b"" too: an empty file is reported as such, not as missing
        return None, bytes(audio["bytes"]), source_path
    if audio.get("array") is not None:  # an already decoded row (e.g. a loader that decodes): re-encode losslessly
        import numpy as np
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(
            buf, np.asarray(audio["array"], dtype="float32"), int(audio["sampling_rate"]), format="WAV", subtype="FLOAT"
        )
        return None, buf.getvalue(), str(PurePosixPath(source_path).with_suffix(".wav"))
    if audio.get("path"):
        return Path(audio["path"]), None, source_path
    return None, None, source_path


def read_hf(
    name: str,
    config: str | None,
    splits: Iterable[str],
    *,
    limit: int | None,
    seed: int,
    token: str | None = None,
    loader: HFLoader | None = None,
    shuffle_buffer: int = 1000,
) -> Iterator[SourceClip]:
    """Stream rows of each split. With `limit`, the selection is datasets' own seeded shuffle (shard order +
    a `shuffle_buffer` window) then `take(limit)`: reproducible for one dataset revision without downloading
    the whole split, which a sort-then-permute selection would need.

    The hub check and every split's opening happen here, eagerly, so failures come before any work starts;
    rows are then read lazily."""
    if loader is None:
        check_hub(name, token)
        loader = default_hf_loader
    streams = []
    for split in splits:
        try:
            ds = loader(name, config, split=split, streaming=True, token=token)
        except Exception as exc:  # any loader failure is a SourceError
            raise SourceError(
                f"cannot open Hugging Face dataset {name!r} config {config!r} split {split!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        ds = _undecoded(ds)
        if limit is not None:
            if hasattr(ds, "shuffle"):
                ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
            ds = ds.take(limit) if hasattr(ds, "take") else _first(ds, limit)
        streams.append((split, ds))
    return (_hf_clip(row, split, index) for split, ds in streams for index, row in enumerate(ds))


def _first(rows: Iterable[Any], n: int) -> Iterator[Any]:
    for i, row in enumerate(rows):
        if i >= n:
            return
        yield row


def _hf_clip(row: Mapping[str, Any], split: str, index: int) -> SourceClip:
    audio = row.get("audio")
    raw_path = row.get("path") or (audio.get("path") if isinstance(audio, Mapping) else None) or f"{split}-{index}"
    # Streamed Common Voice paths look like "es_test_0/common_voice_es_123.mp3" (archive member): the file name
    # alone is the clip's Common Voice path, which is also CoVoST's key.
    source_path = PurePosixPath(str(raw_path).replace("\\", "/")).name
    file, data, source_path = _audio_payload(audio, source_path)
    return SourceClip(
        id=clip_id(source_path),
        split=split,
        source_path=source_path,
        sentence=_none_if_empty(row.get("sentence")),
        file=file,
        data=data,
        speaker=speaker_pseudonym(_none_if_empty(row.get("client_id"))),
        meta=demographics(row),
    )
