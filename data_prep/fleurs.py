"""FLEURS (google/fleurs) as an es -> zh test set: Spanish clips joined to Mandarin (and English) text by id.

FLEURS is n-way parallel: every language reads the same FLoRes sentences, and a TSV row's first column is the
sentence id shared across languages. The layout, as the hub ships it (`<root>` or `<root>/data`):

    <config>/<split>.tsv              no header; id, file name, raw transcription, transcription,
                                      characters, number of samples, gender
    <config>/audio/<split>/<file>     audio as a folder, or
    <config>/audio/<split>.tar.gz     the same files in an archive (members `<split>/<file>`)

Spanish clips come from `es_419`; `reference_zh` is the `cmn_hans_cn` raw transcription of the same id,
`reference_en` the `en_us` one (when that config is there). The raw transcription (cased, punctuated, digits as
written) is the FLoRes sentence itself: the reference translation systems are scored against. A clip whose id
has no Mandarin row is kept as a rejection ("no_reference_zh"), never dropped.

Archives are never extracted with tarfile's extract(): the members the selection needs are copied, in one
sequential pass, to paths this module builds with resources.paths (so no member name can write outside the
scratch folder), and links, devices and oversized members are refused.
"""

from __future__ import annotations

import csv
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from data_prep.sources import SourceClip, SourceError, clip_id, not_utf8
from resources.paths import UnsafePathError, safe_join

SPANISH, MANDARIN, ENGLISH = "es_419", "cmn_hans_cn", "en_us"
HF_NAME = "google/fleurs"
FLEURS_COLUMNS = ("id", "file", "raw_transcription", "transcription", "characters", "num_samples", "gender")
# FLEURS clips are under 30 s of 16 kHz WAV (~1 MB); anything far larger in an archive is not a clip.
MAX_MEMBER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FleursRow:
    id: str
    file: str
    raw_transcription: str
    gender: str | None
    line: int


def config_root(root: Path) -> Path:
    """The folder holding the config folders: `root` itself, or the hub repository's `data/`."""
    if (root / SPANISH).is_dir():
        return root
    if (root / "data" / SPANISH).is_dir():
        return root / "data"
    raise SourceError(f"{root} is not a FLEURS release: no {SPANISH}/ folder (nor data/{SPANISH}/)")


def read_fleurs_tsv(path: Path) -> list[FleursRow]:
    """A FLEURS TSV's rows; a line without the 7 columns means this is not a FLEURS TSV: say which line."""
    rows: list[FleursRow] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for line, cells in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if not cells or cells == [""]:
                    continue
                if len(cells) != len(FLEURS_COLUMNS):
                    raise SourceError(
                        f"{path}:{line}: {len(cells)} columns, a FLEURS TSV has {len(FLEURS_COLUMNS)} "
                        f"({', '.join(FLEURS_COLUMNS)}) and no header"
                    )
                gender = cells[6].strip() or None
                rows.append(FleursRow(cells[0].strip(), cells[1].strip(), cells[2].strip(), gender, line))
    except UnicodeDecodeError as exc:
        raise SourceError(not_utf8(path)) from exc
    return rows


def text_by_id(config_dir: Path, split: str) -> dict[str, str]:
    """id -> raw transcription for one language, the same split first, then the others present (a sentence id
    is in one split for every language, but a partial copy may hold other splits only)."""
    table: dict[str, str] = {}
    tsvs = [config_dir / f"{split}.tsv", *sorted(p for p in config_dir.glob("*.tsv") if p.stem != split)]
    for tsv in tsvs:
        if tsv.is_file():
            for row in read_fleurs_tsv(tsv):
                if row.raw_transcription:
                    table.setdefault(row.id, row.raw_transcription)
    return table


@dataclass
class FleursRelease:
    """The clips of the chosen splits, and the archives their audio still has to come out of."""

    clips: list[SourceClip]
    archives: dict[str, Path] = field(default_factory=dict)  # split -> <es_419>/audio/<split>.tar.gz

    def materialize(self, selected: Sequence[SourceClip]) -> Iterator[SourceClip]:
        """The selected clips, archive members copied out first to a scratch folder removed once the clips are
        consumed (or the generator is closed)."""
        from_archive = [c for c in selected if c.split in self.archives and c.file is None and not c.rejected]
        if not from_archive:
            yield from selected
            return
        scratch = Path(tempfile.mkdtemp(prefix="fleurs-"))
        try:
            found: dict[str, SourceClip] = {}
            for split, archive in self.archives.items():
                wanted = [c for c in from_archive if c.split == split]
                if wanted:
                    found.update(extract_members(archive, scratch / split, wanted))
            yield from (found.get(c.source_path, c) for c in selected)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def extract_members(archive: Path, dest: Path, clips: Iterable[SourceClip]) -> dict[str, SourceClip]:
    """Copy each clip's archive member (matched by file name) to dest/<file>; the clips with `file` set, or with
    `unsafe`/`rejected` saying why not. Clips whose member is absent stay without a file (missing_file)."""
    by_name = {PurePosixPath(c.source_path).name: c for c in clips}
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, SourceClip] = {}
    try:
        # "r|*": one sequential pass over the (gzip) stream; random access would decompress again per member.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                name = PurePosixPath(member.name.replace("\\", "/")).name
                clip = by_name.get(name)
                if clip is None or clip.source_path in out:
                    continue
                out[clip.source_path] = _copy_member(tar, member, clip, dest, name)
                if len(out) == len(by_name):
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"cannot read FLEURS archive {archive.name}: {type(exc).__name__}: {exc}") from exc
    return out


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, clip: SourceClip, dest: Path, name: str) -> SourceClip:
    try:
        safe_join(dest, member.name)  # lexical check only (dest is ours): refuses absolute and '..' member names
        target = safe_join(dest, name)  # what is written: a single file name inside dest
    except UnsafePathError as exc:
        return replace(clip, unsafe=f"archive member: {exc}")
    if not member.isreg():
        kind = "link" if member.issym() or member.islnk() else "special file"
        return replace(clip, unsafe=f"archive member {member.name!r} is a {kind}, not a file")
    if member.size > MAX_MEMBER_BYTES:
        return replace(clip, rejected=("too_large", f"archive member {member.name!r} is {member.size} bytes"))
    source = tar.extractfile(member)
    if source is None:
        return replace(clip, unsafe=f"archive member {member.name!r} has no data")
    with source, open(target, "wb") as f:
        shutil.copyfileobj(source, f)
    return replace(clip, file=target)


def read_fleurs(root: str | Path, splits: Iterable[str]) -> FleursRelease:
    """Every es_419 row of `splits`, each joined by id to its Mandarin (and English) raw transcription."""
    base = config_root(Path(root))
    es_dir, zh_dir, en_dir = base / SPANISH, base / MANDARIN, base / ENGLISH
    if not zh_dir.is_dir():
        raise SourceError(f"{base} has no {MANDARIN}/ folder: the Mandarin references are what FLEURS is for")
    release = FleursRelease(clips=[])
    for split in splits:
        tsv = es_dir / f"{split}.tsv" if "/" not in split and split not in ("", ".", "..") else None
        if tsv is None or not tsv.is_file():
            found = sorted(p.stem for p in es_dir.glob("*.tsv"))
            raise SourceError(f"split {split!r}: no {SPANISH}/{split}.tsv (found: {', '.join(found) or 'none'})")
        audio_dir, archive = es_dir / "audio" / split, es_dir / "audio" / f"{split}.tar.gz"
        if not audio_dir.is_dir():
            if not archive.is_file():
                raise SourceError(f"no audio for split {split!r}: neither {SPANISH}/audio/{split}/ nor {archive.name}")
            release.archives[split] = archive
        zh = text_by_id(zh_dir, split)
        en = text_by_id(en_dir, split) if en_dir.is_dir() else {}
        for row in read_fleurs_tsv(tsv):
            release.clips.append(_clip(row, split, audio_dir if split not in release.archives else None, zh, en))
    return release


def _clip(row: FleursRow, split: str, audio_dir: Path | None, zh: dict[str, str], en: dict[str, str]) -> SourceClip:
    source_path = f"{split}/{row.file}"
    file, unsafe = None, None
    # The TSV names one file in audio/<split>/: a name with separators or dots is refused, a folder's entry must
    # also resolve inside it (no symlink out).
    if not row.file or row.file in (".", "..") or any(c in row.file for c in "/\\\x00"):
        unsafe = f"file name {row.file!r} is not a single file name"
    elif audio_dir is not None:
        try:
            file = safe_join(audio_dir, row.file)
        except UnsafePathError as exc:
            unsafe = str(exc)
    reference_zh = zh.get(row.id)
    rejected = None if reference_zh else ("no_reference_zh", f"FLEURS id {row.id}: no {MANDARIN} transcription")
    return SourceClip(
        id=clip_id(source_path),
        split=split,
        source_path=source_path,
        sentence=row.raw_transcription or None,
        file=file,
        unsafe=unsafe,
        meta={"gender": (row.gender or "").lower() or None, "locale": SPANISH},
        reference_en=en.get(row.id),
        reference_zh=reference_zh,
        rejected=rejected,
    )


def download_fleurs(splits: Iterable[str], token: str | None, name: str = HF_NAME) -> Path:
    """The hub copy's files for `splits` (the TSVs of es_419/cmn_hans_cn/en_us and es_419's audio archives only,
    not FLEURS's 100 other languages) in the Hugging Face cache; returns the folder read_fleurs takes."""
    from huggingface_hub import snapshot_download

    patterns = []
    for split in splits:
        patterns += [f"data/{c}/{split}.tsv" for c in (SPANISH, MANDARIN, ENGLISH)]
        patterns.append(f"data/{SPANISH}/audio/{split}.tar.gz")
    try:
        return Path(snapshot_download(name, repo_type="dataset", allow_patterns=patterns, token=token))
    except Exception as exc:  # any hub failure means the source cannot be read
        raise SourceError(f"cannot download FLEURS from {name!r}: {type(exc).__name__}: {exc}") from exc
