"""Source -> selected clips -> 16 kHz mono WAVs + manifest + report, in a local dataset folder.

Every selected clip ends up either as a manifest row or as a rejection with a reason, so
selected == accepted + rejected always holds and nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep.manifest import ManifestRow, Rejection, RenamedId, Report
from data_prep.sources import (
    HFLoader,
    SourceClip,
    SourceError,
    read_common_voice,
    read_folder,
    read_hf,
    read_tsv,
)
from resources.audio import (
    WHISPER_SAMPLE_RATE,
    AudioError,
    EmptyAudioError,
    MissingAudioError,
    NotAFileError,
    OversizeAudioError,
    check_file,
    load_audio,
    probe_seconds,
    speech_seconds,
    write_wav,
)
from resources.paths import UniqueIds, UnsafePathError, safe_id, safe_output_path

SOURCES = ("common_voice", "hf", "folder", "fleurs")


@dataclass(frozen=True)
class IngestOptions:
    source: str
    splits: tuple[str, ...]
    out: Path
    name: str
    path: Path | None = None  # release folder (common_voice, fleurs) or audio folder (folder)
    hf_name: str | None = None
    hf_config: str | None = None
    hf_token: str | None = field(default=None, repr=False)  # never printed, never hashed, never stored
    limit: int | None = None
    seed: int = 0
    min_seconds: float = 0.5
    max_seconds: float = 30.0
    covost: Path | None = None
    parent: Path | None = None  # a local dataset folder this one extends
    sample_rate: int = WHISPER_SAMPLE_RATE
    silence_dbfs: float = -40.0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if self.min_seconds < 0 or self.max_seconds <= self.min_seconds:
            raise ValueError("need 0 <= min_seconds < max_seconds")

    def content_options(self) -> dict[str, Any]:
        """The options that decide the content, hence the hash. Not the source's location (the same release
        copied elsewhere is the same data), not the token, not the output folder."""
        return {
            "source": self.source,
            "hf_name": self.hf_name,
            "hf_config": self.hf_config,
            "splits": list(self.splits),
            "limit": self.limit,
            "seed": self.seed,
            "min_seconds": self.min_seconds,
            "max_seconds": self.max_seconds,
            "covost": self.covost is not None,
            "sample_rate": self.sample_rate,
            "silence_dbfs": self.silence_dbfs,
        }


@dataclass(frozen=True)
class Accepted:
    row: ManifestRow
    wav_sha256: str


def select_clips(clips: Iterable[SourceClip], limit: int | None, seed: int) -> list[SourceClip]:
    """Deterministic subset: first occurrence per source path (splits in the order given), sorted by path, then
    numpy's seeded permutation picks `limit` of them. Same rows + options -> same subset on any machine."""
    first: dict[str, SourceClip] = {}
    for clip in clips:
        first.setdefault(clip.source_path, clip)
    ordered = [first[key] for key in sorted(first)]
    if limit is not None and limit < len(ordered):
        picked = np.random.default_rng(seed).permutation(len(ordered))[:limit]
        ordered = [ordered[i] for i in sorted(picked)]
    return list(with_unique_ids(ordered, reserved=[safe_id(c.id) for c in ordered]))


def with_unique_ids(clips: Iterable[SourceClip], reserved: Iterable[str] = ()) -> Iterator[SourceClip]:
    """The one gate every source's clips pass before a row or a file is made from them.

    Each id is made a safe id (a no-op for the readers' clip_id; a guard for any other source), then unique:
    different paths can map to the same id ('a.mp3' and 'a.wav' are both 'a'), and the later one in the
    (deterministic) selection order becomes 'a-2'; `renamed_from` keeps the id it had, for the report."""
    allocator = UniqueIds(reserved)
    for clip in clips:
        wanted = safe_id(clip.id)
        got = allocator.take(wanted)
        if got != clip.id:
            clip = replace(clip, id=got, renamed_from=wanted if got != wanted else None)
        yield clip


def read_source(opts: IngestOptions, loader: HFLoader | None = None) -> tuple[Iterator[SourceClip], int | None]:
    """(clips, how many when known). File sources are selected here; the HF reader selects while streaming."""
    if opts.source == "hf":
        if not opts.hf_name:
            raise SourceError("--hf-name is required for --source hf")
        clips = read_hf(
            opts.hf_name,
            opts.hf_config,
            opts.splits,
            limit=opts.limit,
            seed=opts.seed,
            token=opts.hf_token,
            loader=loader,
        )
        total = opts.limit * len(opts.splits) if opts.limit is not None else None
        # Several splits can name the same clip: keep the first, as select_clips does for files.
        return _first_per_path(clips), total
    if opts.source == "fleurs":
        return _read_fleurs(opts)
    if opts.path is None:
        raise SourceError(f"--path is required for --source {opts.source}")
    if opts.source == "common_voice":
        rows = read_common_voice(opts.path, opts.splits)
    else:
        rows = read_folder(opts.path, opts.splits[0])
    selected = select_clips(rows, opts.limit, opts.seed)
    return iter(selected), len(selected)


def _read_fleurs(opts: IngestOptions) -> tuple[Iterator[SourceClip], int]:
    """A local FLEURS release (--path), or the hub copy's files (--hf-name google/fleurs) downloaded first."""
    from data_prep.fleurs import download_fleurs, read_fleurs

    root = opts.path
    if root is None:
        if not opts.hf_name:
            raise SourceError("--source fleurs needs --path (a FLEURS release) or --hf-name google/fleurs")
        root = download_fleurs(opts.splits, opts.hf_token, opts.hf_name)
    release = read_fleurs(root, opts.splits)
    selected = select_clips(release.clips, opts.limit, opts.seed)
    return release.materialize(selected), len(selected)


def _first_per_path(clips: Iterable[SourceClip]) -> Iterator[SourceClip]:
    """Streamed clips, first per source path, with unique ids in stream order (ids are not known up front)."""
    seen: set[str] = set()

    def first(stream: Iterable[SourceClip]) -> Iterator[SourceClip]:
        for clip in stream:
            if clip.source_path not in seen:
                seen.add(clip.source_path)
                yield clip

    return with_unique_ids(first(clips))


def load_covost(path: Path) -> dict[str, str]:
    """CoVoST 2 TSV (path, sentence, translation, client_id) -> {clip file name: English translation}."""
    if not Path(path).is_file():
        raise SourceError(f"CoVoST file {path} not found")
    table: dict[str, str] = {}
    for row in read_tsv(Path(path), required=("path", "translation")):
        key = PurePosixPath((row.get("path") or "").strip()).name
        text = (row.get("translation") or "").strip()
        if key and text:
            table[key] = text
    if not table:
        raise SourceError(f"CoVoST file {path} has no (path, translation) rows")
    return table


def _reject(clip: SourceClip, reason: str, detail: str) -> Rejection:
    return Rejection(id=clip.id, source_path=clip.source_path, split=clip.split, reason=reason, detail=detail)


def normalize_clip(
    clip: SourceClip, audio_dir: Path, scratch: Path, opts: IngestOptions, covost: dict[str, str] | None
) -> Accepted | Rejection:
    """Decode, check and write one clip as audio/<id>.wav; or say why not."""
    if clip.unsafe:
        return _reject(clip, "unsafe_path", clip.unsafe)
    if clip.rejected:
        return _reject(clip, *clip.rejected)
    src = clip.file
    try:
        if clip.data is not None:
            # Streamed bytes: soundfile reads files, and the suffix tells it the container (mp3, wav, flac).
            suffix = PurePosixPath(clip.source_path).suffix
            src = safe_output_path(scratch, "", clip.id, suffix if _PLAIN_SUFFIX.fullmatch(suffix) else ".bin")
            src.write_bytes(clip.data)
        return _normalize_file(clip, src, audio_dir, opts, covost)
    except UnsafePathError as exc:  # only an id that bypassed with_unique_ids: the writers refuse it
        return _reject(clip, "unsafe_path", str(exc))
    finally:
        if clip.data is not None and src is not None:
            src.unlink(missing_ok=True)


_PLAIN_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
# Typed audio errors -> the report's reasons; any other AudioError is "corrupt".
_AUDIO_REASONS: tuple[tuple[type[AudioError], str], ...] = (
    (MissingAudioError, "missing_file"),
    (NotAFileError, "not_a_file"),
    (EmptyAudioError, "empty_file"),
    (OversizeAudioError, "too_large"),
)


def _normalize_file(
    clip: SourceClip, src: Path | None, audio_dir: Path, opts: IngestOptions, covost: dict[str, str] | None
) -> Accepted | Rejection:
    if src is None:
        return _reject(clip, "missing_file", f"no audio for {clip.source_path!r}")
    try:
        # What the path is (a directory, a FIFO, a dangling link, 0 bytes) before anything opens it; then the
        # header's duration: a multi-hour file is refused without decoding it. The margin absorbs header
        # estimates (mp3); the exact check follows the decode, which load_audio bounds by decoded size too.
        check_file(src)
        header_seconds = probe_seconds(src)
        if header_seconds > opts.max_seconds + 1.0:
            return _reject(clip, "too_long", f"{header_seconds:.2f} s > --max-seconds {opts.max_seconds:g}")
        audio = load_audio(src, opts.sample_rate)
    except AudioError as exc:
        reason = next((r for kind, r in _AUDIO_REASONS if isinstance(exc, kind)), "corrupt")
        # libsndfile's messages name the absolute path: keep the report free of machine-specific paths.
        return _reject(clip, reason, str(exc).replace(str(src), src.name))
    seconds = audio.seconds
    if seconds < opts.min_seconds:
        return _reject(clip, "too_short", f"{seconds:.2f} s < --min-seconds {opts.min_seconds:g}")
    if seconds > opts.max_seconds:
        return _reject(clip, "too_long", f"{seconds:.2f} s > --max-seconds {opts.max_seconds:g}")
    if speech_seconds(audio, threshold_dbfs=opts.silence_dbfs) == 0.0:
        return _reject(clip, "silent", f"no 30 ms frame above {opts.silence_dbfs:g} dBFS")
    wav = safe_output_path(audio_dir, "", clip.id, ".wav")  # refuses any id that would leave audio/
    rel = f"audio/{wav.name}"
    write_wav(wav, audio.samples, opts.sample_rate)
    reference = clip.reference_en
    if covost is not None:
        reference = covost.get(PurePosixPath(clip.source_path).name, reference)
    row = ManifestRow(
        id=clip.id,
        audio=rel,
        duration_s=round(seconds, 3),
        sentence=clip.sentence,
        split=clip.split,
        source_path=clip.source_path,
        reference_en=reference,
        speaker=clip.speaker,
        reference_zh=clip.reference_zh,
        **dict(clip.meta),
    )
    return Accepted(row, hashlib.sha256(wav.read_bytes()).hexdigest())


def normalize_all(
    clips: Iterator[SourceClip], total: int | None, staging: Path, opts: IngestOptions, covost: dict[str, str] | None
) -> tuple[list[Accepted], Report]:
    audio_dir = staging / "audio"
    scratch = staging / ".src"
    audio_dir.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(exist_ok=True)
    report = Report()
    accepted: list[Accepted] = []
    bar = tqdm(clips, total=total, unit="clip", desc="ingest", disable=not opts.show_progress)
    for clip in bar:
        report.selected += 1
        if clip.renamed_from is not None:
            report.renamed.append(RenamedId(clip.id, clip.renamed_from, clip.source_path, clip.split))
        result = normalize_clip(clip, audio_dir, scratch, opts, covost)
        if isinstance(result, Accepted):
            accepted.append(result)
        else:
            report.rejections.append(result)
        bar.set_postfix(ok=len(accepted), rejected=report.rejected, refresh=False)
    scratch.rmdir()
    report.accepted = len(accepted)
    report.rejections.sort(key=lambda r: (r.id, r.source_path))
    report.renamed.sort(key=lambda r: r.id)
    return accepted, report
