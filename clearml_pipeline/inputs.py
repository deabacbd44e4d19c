"""The user's own input: an audio file, or a folder of them, listed as items with unique, file-safe ids.

A folder the user passes is trusted the way their shell trusts it: symlinks are followed (linking clips in is a
normal habit), into linked folders too, once each. Dataset manifests are not trusted that way: their paths are
joined with resources.paths.safe_join and must stay inside the dataset folder. Every entry with an audio suffix
becomes an item, whatever it turns out to be (a folder, a FIFO, a dangling link, a text file named .mp3): it
gets an error row saying what it is rather than vanishing. Entries with other suffixes are not inputs, and
neither is a run's output folder inside the input folder (it holds OUTPUT_MARKER): a second run into
`--output clips/out` must not translate the first run's WAVs.

Ids do not depend on what else the folder holds: an id is its relative path made safe, and a path whose id
another path already has (`x.wav` beside `x.mp3`) gets `-` and a short hash of its own path, not a number that
shifts when a file is added.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from resources.audio import AUDIO_EXTENSIONS
from resources.paths import ID_MAX_BYTES, safe_id, unique_ids

OUTPUT_MARKER = ".s2st-output"  # written into every run's OUT (clearml_pipeline.execution.start_outputs)


@dataclass(frozen=True)
class InputItem:
    id: str
    path: Path  # absolute, as the user can find it (links not resolved)


def _walk(root: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Every audio-suffixed entry under `root`, following symlinked folders; each real folder visited once; run
    output folders (and `exclude`) skipped."""
    found: list[Path] = []
    seen: set[Path] = {path.resolve() for path in exclude}
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = Path(folder).resolve()
        if real in seen or (real != root.resolve() and OUTPUT_MARKER in files):  # a cycle, a run's output
            subfolders.clear()
            continue
        seen.add(real)
        entries = [*files, *(d for d in subfolders if Path(folder, d).suffix.lower() in AUDIO_EXTENSIONS)]
        found.extend(Path(folder, name) for name in entries if Path(name).suffix.lower() in AUDIO_EXTENSIONS)
    return sorted(found)


def discover_inputs(source: Path, exclude: Iterable[Path] = ()) -> list[InputItem]:
    """Audio entries under `source` (or `source` itself), sorted, each with a unique, filesystem-safe id;
    folders in `exclude` (this run's output) and run output folders are not read."""
    source = source.absolute()
    if source.is_dir():
        paths, root = _walk(source, exclude), source
    elif source.exists() or source.is_symlink():
        paths, root = [source], source.parent
    else:
        raise FileNotFoundError(f"input {source} does not exist")
    # Ids are made once, here: file-safe, at most ID_MAX_BYTES (a hash keeps long names apart).
    relative = [path.relative_to(root).as_posix() for path in paths]
    ids = _own_ids([safe_id(str(Path(rel).with_suffix("")), sep="__") for rel in relative], relative)
    return [InputItem(item_id, path) for item_id, path in zip(ids, paths, strict=True)]


def _own_ids(ids: list[str], relative: list[str]) -> list[str]:
    """Repeats renamed with a hash of their own relative path (stable whatever else is in the folder); the first
    in path order keeps the plain id. unique_ids then settles the (never yet seen) case of a hash clash."""
    seen: set[str] = set()
    own = []
    for item_id, rel in zip(ids, relative, strict=True):
        if item_id in seen:
            tail = "-" + hashlib.sha256(rel.encode("utf-8", "surrogatepass")).hexdigest()[:6]
            head = item_id.encode("utf-8")[: ID_MAX_BYTES - len(tail)].decode("utf-8", "ignore").rstrip(".") or "_"
            item_id = head + tail
        seen.add(item_id)
        own.append(item_id)
    return unique_ids(own)
