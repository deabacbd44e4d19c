"""Joining untrusted relative paths (from TSVs, transcripts and manifests) onto a trusted root.

A Common Voice TSV or a manifest is data, not code: a row saying `../../etc/passwd` or pointing at a symlink
that leaves the release folder must never make us read (or upload) a file outside that folder.
"""

from __future__ import annotations

import os
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


def safe_name(text: str, max_len: int = 120) -> str:
    """A file-name-safe id (letters, digits, `-`, `_`, `.`), e.g. for audio/<id>.wav; never empty or dotted."""
    cleaned = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_" for ch in text)
    cleaned = cleaned.strip(".")[:max_len]
    return cleaned or "_"
