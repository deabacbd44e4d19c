"""Source -> selected clips -> 16 kHz mono WAVs + manifest + report, in a local dataset folder.

Every selected clip ends up either as a manifest row or as a rejection with a reason, so
selected == accepted + rejected always holds and nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep.manifest import ManifestRow, Rejection, Report
from data_prep.sources import (
    HFLoader,
    SourceClip,
    SourceError,
    read_common_voice,
    read_folder,
    read_hf,
    read_tsv,
)
from steps.audio import WHISPER_SAMPLE_RATE, AudioError, load_audio, probe_seconds, speech_seconds, write_wav

SOURCES = ("common_voice", "hf", "folder")


@dataclass(frozen=True)
class IngestOptions:
    source: str
    splits: tuple[str, ...]
    out: Path
    name: str
    path: Path | None = None  # release folder (common_voice) or audio folder (folder)
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
    return unique_ids(ordered)


def unique_ids(clips: list[SourceClip]) -> list[SourceClip]:
    """Different paths can map to the same file-safe id ('a.mp3', 'a.wav'): suffix a hash of the path."""
    counts: dict[str, int] = {}
    for clip in clips:
        counts[clip.id] = counts.get(clip.id, 0) + 1
    return [
        replace(clip, id=f"{clip.id}_{hashlib.sha256(clip.source_path.encode()).hexdigest()[:8]}")
        if counts[clip.id] > 1
        else clip
        for clip in clips
    ]


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
    if opts.path is None:
        raise SourceError(f"--path is required for --source {opts.source}")
    if opts.source == "common_voice":
        rows = read_common_voice(opts.path, opts.splits)
    else:
        rows = read_folder(opts.path, opts.splits[0])
    selected = select_clips(rows, opts.limit, opts.seed)
    return iter(selected), len(selected)


def _first_per_path(clips: Iterable[SourceClip]) -> Iterator[SourceClip]:
    seen: set[str] = set()
    ids: set[str] = set()
    for clip in clips:
        if clip.source_path in seen:
            continue
        seen.add(clip.source_path)
        if clip.id in ids:
            clip = replace(clip, id=f"{clip.id}_{hashlib.sha256(clip.source_path.encode()).hexdigest()[:8]}")
        ids.add(clip.id)
        yield clip


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
    src = clip.file
    if clip.data is not None:
        # Streamed bytes: soundfile reads files, and the suffix tells it the container (mp3, wav, flac).
        src = scratch / f"{clip.id}{PurePosixPath(clip.source_path).suffix or '.bin'}"
        src.write_bytes(clip.data)
    try:
        return _normalize_file(clip, src, audio_dir, opts, covost)
    finally:
        if clip.data is not None and src is not None:
            src.unlink(missing_ok=True)


def _normalize_file(
    clip: SourceClip, src: Path | None, audio_dir: Path, opts: IngestOptions, covost: dict[str, str] | None
) -> Accepted | Rejection:
    if src is None or not src.is_file():
        return _reject(clip, "missing_file", f"audio file {clip.source_path!r} does not exist")
    if src.stat().st_size == 0:
        return _reject(clip, "empty_file", "the audio file is empty (0 bytes)")
    try:
        # The header's duration first: a multi-hour file is refused without decoding it. The margin absorbs
        # header estimates (mp3); the exact check follows the decode.
        header_seconds = probe_seconds(src)
        if header_seconds > opts.max_seconds + 1.0:
            return _reject(clip, "too_long", f"{header_seconds:.2f} s > --max-seconds {opts.max_seconds:g}")
        audio = load_audio(src, opts.sample_rate)
    except AudioError as exc:
        reason = "empty_file" if "no audio samples" in str(exc) else "corrupt"
        # libsndfile's messages name the absolute path: keep the report free of machine-specific paths.
        return _reject(clip, reason, str(exc).replace(str(src), src.name))
    seconds = audio.seconds
    if seconds < opts.min_seconds:
        return _reject(clip, "too_short", f"{seconds:.2f} s < --min-seconds {opts.min_seconds:g}")
    if seconds > opts.max_seconds:
        return _reject(clip, "too_long", f"{seconds:.2f} s > --max-seconds {opts.max_seconds:g}")
    if speech_seconds(audio, threshold_dbfs=opts.silence_dbfs) == 0.0:
        return _reject(clip, "silent", f"no 30 ms frame above {opts.silence_dbfs:g} dBFS")
    rel = f"audio/{clip.id}.wav"
    wav = audio_dir / f"{clip.id}.wav"
    write_wav(wav, audio.samples, opts.sample_rate)
    reference = covost.get(PurePosixPath(clip.source_path).name) if covost is not None else None
    row = ManifestRow(
        id=clip.id,
        audio=rel,
        duration_s=round(seconds, 3),
        sentence=clip.sentence,
        split=clip.split,
        source_path=clip.source_path,
        reference_en=reference,
        speaker=clip.speaker,
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
        result = normalize_clip(clip, audio_dir, scratch, opts, covost)
        if isinstance(result, Accepted):
            accepted.append(result)
        else:
            report.rejections.append(result)
        bar.set_postfix(ok=len(accepted), rejected=report.rejected, refresh=False)
    scratch.rmdir()
    report.accepted = len(accepted)
    report.rejections.sort(key=lambda r: (r.id, r.source_path))
    return accepted, report
