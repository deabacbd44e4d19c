"""Joining untrusted relative paths (from TSVs, transcripts and manifests) onto a trusted root, and item ids.

A Common Voice TSV or a manifest is data, not code: a row saying `../../etc/passwd` or pointing at a symlink
that leaves the release folder must never make us read (or upload) a file outside that folder. Likewise an
id (a manifest's `id`, a file's relative path) becomes a file name under OUT: safe_id makes it one harmless
name, and safe_output_path refuses, at the writer, any path that would leave OUT.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath


class UnsafePathError(ValueError):
    """A relative path that is absolute, climbs out of its root, or resolves (via symlinks) outside it."""


def safe_join(root: str | Path, relative: str | os.PathLike[str]) -> Path:
    """Return `root / relative` if, and only if, it stays inside `root` once symlinks are resolved.

    The returned path is the lexical join (not the resolved one) so callers keep the names they asked for;
    the file need not exist (a missing file is the caller's "missing_file", not an escape).
    """
    text = os.fspath(relative)
    if not text or "\x00" in text:
        raise UnsafePathError(f"invalid path {text!r}")
    # Reject both POSIX and Windows absolute forms: a manifest written on one OS may be read on another.
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise UnsafePathError(f"absolute path {text!r} is not allowed")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafePathError(f"path {text!r} climbs out of its folder ('..')")
    root_path = Path(root)
    joined = root_path.joinpath(*parts)
    # resolve() follows every symlink on the way (also on missing tails, strict=False), so a link inside the
    # root that points elsewhere is caught here.
    real_root = root_path.resolve()
    real = joined.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise UnsafePathError(f"path {text!r} resolves outside {root_path.name or root_path}")
    return joined


# ----------------------------------------------------------------------------------------------- item ids

# An id names files (OUT/audio/<id>.wav, a dataset's audio/<id>.wav) and result rows. 120 bytes leaves room for
# any suffix under the 255-byte file-name limit of ext4, XFS, APFS and NTFS, and keeps ids readable in tables.
ID_MAX_BYTES = 120
_HASH_CHARS = 8  # sha256 hex appended to a truncated id: 32 bits, so distinct long names stay distinct
_UNSAFE_CHARS = re.compile(r"[^\w.-]+")  # \w is Unicode-aware: "mañana" stays "mañana"
_DOT_RUNS = re.compile(r"\.{2,}")
_SUFFIX = re.compile(r"(\.[A-Za-z0-9_-]{1,16})*")


def safe_id(text: str, max_bytes: int = ID_MAX_BYTES, sep: str = "_") -> str:
    """Turn any text (a manifest id, a relative path) into an id that is a single, harmless file name.

    Path components are split on `/` and `\\`; empty, `.` and `..` components are dropped (so `../../PWNED` is
    `PWNED`, never a way out of a folder) and the rest joined with `sep`. Every run of characters outside
    [\\w.-] becomes `_`, dot runs become one dot, and leading/trailing dots go (no hidden files, no `..`).
    Never empty (`_`). An id longer than `max_bytes` UTF-8 bytes is cut at a character boundary and gets `-` and
    a short sha256 of the whole (NFC-normalized) text, so two long names that share a prefix stay distinct.
    The function is idempotent: a safe id maps to itself, so re-reading a manifest keeps its ids.
    """
    if not sep or _UNSAFE_CHARS.search(sep) or "." in sep:
        raise ValueError(f"separator {sep!r} must be made of letters, digits, '_' or '-'")
    # NFC: the same name typed on macOS (decomposed) and Linux (composed) gets the same id.
    normalized = unicodedata.normalize("NFC", str(text))
    parts = [p for p in re.split(r"[/\\]", normalized) if p not in ("", ".", "..")]
    cleaned = _DOT_RUNS.sub(".", _UNSAFE_CHARS.sub("_", sep.join(parts))).strip(".") or "_"
    if len(cleaned.encode("utf-8")) <= max_bytes:
        return cleaned
    digest = hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    keep = max(1, max_bytes - _HASH_CHARS - 1)
    head = cleaned.encode("utf-8")[:keep].decode("utf-8", "ignore").rstrip(".") or "_"
    return f"{head}-{digest}"


def safe_name(text: str, max_len: int = ID_MAX_BYTES) -> str:
    """The older name of safe_id (dataset names, clip ids): letters, digits, `-`, `_`, `.`; never empty or dotted."""
    return safe_id(text, max_len)


def is_safe_id(text: str, max_bytes: int = ID_MAX_BYTES) -> bool:
    """True when `text` is already what safe_id makes: usable as a file name as it is."""
    return isinstance(text, str) and bool(text) and safe_id(text, max_bytes) == text


class UniqueIds:
    """Hands out ids in arrival order, renaming repeats `id-2`, `id-3`, ... (the first keeps its id).

    For a stream whose ids are not all known up front (a streamed dataset); `reserved` ids (all of a list's, in
    unique_ids) are never given to a renamed repeat, so a real `a-2` keeps its name. Renamed ids stay within
    `max_bytes` (the base is cut to make room), so they are safe ids too.
    """

    def __init__(self, reserved: Iterable[str] = (), max_bytes: int = ID_MAX_BYTES) -> None:
        self._reserved = set(reserved)
        self._seen: set[str] = set()
        self._max_bytes = max_bytes

    def take(self, item_id: str) -> str:
        if item_id not in self._seen:
            self._seen.add(item_id)
            return item_id
        n = 2
        while True:
            tail = f"-{n}"
            room = max(1, self._max_bytes - len(tail))
            base = item_id.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(".") or "_"
            candidate = base + tail
            if candidate not in self._seen and candidate not in self._reserved:
                self._seen.add(candidate)
                return candidate
            n += 1


def unique_ids(ids: Iterable[str], max_bytes: int = ID_MAX_BYTES) -> list[str]:
    """The same ids, in order, with repeats renamed `id-2`, `id-3`, ...; deterministic for a given order."""
    given = list(ids)
    allocator = UniqueIds(reserved=given, max_bytes=max_bytes)
    return [allocator.take(item_id) for item_id in given]


def safe_output_path(out: str | Path, sub: str, item_id: str, suffix: str = "") -> Path:
    """`out/<sub>/<item_id><suffix>` (e.g. OUT/audio/<id>.wav), or UnsafePathError if that could leave `out`.

    The writer's own check, whatever made the id: the id must be a safe id (see safe_id; no separators, no
    `..`), the suffix a plain extension (`.wav`), and the joined path must stay inside `out` once symlinks are
    resolved (an `audio` folder that is a link elsewhere is refused too). Nothing is created.
    """
    if not is_safe_id(item_id):
        raise UnsafePathError(f"item id {item_id!r} is not a safe file name (make ids with resources.paths.safe_id)")
    if not _SUFFIX.fullmatch(suffix):
        raise UnsafePathError(f"file suffix {suffix!r} is not a plain extension like '.wav'")
    name = item_id + suffix
    if len(name.encode("utf-8")) > 255:
        raise UnsafePathError(f"file name {name!r} is over 255 bytes")
    return safe_join(out, f"{sub}/{name}" if sub else name)
