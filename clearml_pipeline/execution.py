"""The execution core that every runtime calls: groups of rows through stages, into a results sink.

The in-process runtime, a pipeline step task and the bench's sequential baseline are thin schedulers over
`run_groups`; streaming workers call `run_group` for their one stage. What is decided here, once:
- a group's rows go through the given stages in order (each stage's `step` picks the rows it takes);
- finished rows are appended to the sink and flushed group by group, so a crash keeps what was done, and the
  sink is checkpointed every few groups (a retried ClearML task resumes from it);
- busy time is the stages' own (`Stage.stats`), plus the input decoding time the rows carry;
- an interrupted run (Ctrl-C, or SIGTERM turned into KeyboardInterrupt: clearml_pipeline.interrupts) still
  writes a row for every item: the ones not finished are marked `interrupted`;
- what OUT holds is this run's alone: `start_outputs` removes what an earlier run into the same OUT wrote
  (results, summary, scores, plots, audio) before this one writes, and marks OUT so that a later run whose input
  folder holds it does not read it as input.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from clearml_pipeline.inputs import OUTPUT_MARKER
from clearml_pipeline.memory import objects_frozen
from resources.json_text import dumps
from steps.base import Stage
from steps.results import ItemResult, write_rows
from steps.stages import AUDIO_DIR, INPUT, StageSpec, StepContext, finish

T = TypeVar("T")
INTERRUPTED = "interrupted"
RESULTS = "results.jsonl"
PIPELINE_CONFIG = "pipeline.json"  # the steps runtime's config, what `reproduce OUT` reruns
# What a finished run leaves in OUT. pipeline.json too: left beside a later in-process run's summary, `reproduce`
# would rerun the earlier run's config as if it were this one's.
RUN_FILES = ("results.jsonl", "summary.json", "metrics.json", "report.md", PIPELINE_CONFIG)
RUN_FOLDERS = ("plots",)
Built = Sequence[tuple[StageSpec, Stage[Any, Any]]]  # the stages to run, in order, with their built backends


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + max(size, 1)]


class ResultsSink:
    """A .jsonl file that rows are appended to as they finish, flushed per group, checkpointed every `every`.

    The file is opened at the first append, so a run that stops before any row leaves none. `extra` adds fields
    to each written line (a resume key) that are not part of the row."""

    def __init__(
        self,
        path: Path,
        append: bool = False,
        checkpoint: Callable[[Path], None] | None = None,
        every: int = 0,
        extra: Callable[[ItemResult], dict[str, Any]] | None = None,
    ) -> None:
        self.path, self.checkpoint, self.every, self.extra = path, checkpoint, every, extra
        self.groups = 0
        self._mode = "a" if append else "w"
        self._file: IO[str] | None = None

    def _line(self, row: ItemResult) -> str:
        if self.extra is None:
            return row.to_json() + "\n"
        return dumps(asdict(row) | self.extra(row)) + "\n"

    def append(self, rows: Sequence[ItemResult]) -> None:
        if self._file is None:
            self._file = self.path.open(self._mode, encoding="utf-8")
        self._file.write("".join(self._line(row) for row in rows))  # one write: no line is left half-written
        self._file.flush()
        self.groups += 1
        if self.checkpoint is not None and self.every > 0 and self.groups % self.every == 0:
            self.checkpoint(self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ResultsSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def run_group(stages: Built, rows: list[ItemResult], ctx: StepContext, close: bool = True) -> list[ItemResult]:
    """`rows` through `stages` in order; closed (their total latency set) unless more stages follow elsewhere."""
    for spec, stage in stages:
        spec.step(stage, rows, ctx)
    return [finish(row) for row in rows] if close else rows


def mark_interrupted(rows: Sequence[ItemResult], why: str = "run interrupted before this item finished") -> None:
    for row in rows:
        row.fail(INTERRUPTED, why)
        finish(row)


def run_groups(
    stages: Built,
    rows: Sequence[ItemResult],
    ctx: StepContext,
    sink: ResultsSink,
    group_size: int,
    progress: Callable[[int], object] = lambda n: None,
) -> bool:
    """Every row through `stages`, `group_size` at a time, each group appended to `sink` when it is done.

    Returns True when interrupted: then the rows not finished are in the sink too, marked interrupted."""
    done = 0
    try:
        with objects_frozen():  # the loaded stages stay out of the collector's walks while they work
            for group in batched(rows, group_size):
                finished = run_group(stages, list(group), ctx)
                done += len(finished)  # counted before it is written: an interrupt while writing keeps it finished
                sink.append(finished)
                progress(len(finished))
    except KeyboardInterrupt:
        rest = list(rows[done:])
        mark_interrupted(rest)
        sink.append(rest)
        return True
    return False


def busy_seconds(stages: Mapping[str, Stage[Any, Any]], rows: Sequence[ItemResult]) -> dict[str, float]:
    """Seconds each stage spent working (its own count), and the rows' input decoding time."""
    busy = {name: stage.stats.busy_s for name, stage in stages.items()}
    busy[INPUT] = sum(r.latency_s.get(INPUT, 0.0) for r in rows)
    return busy


def start_outputs(out: Path) -> None:
    """OUT made ready for a run: created, marked as a run's output (never read as input), and emptied of what an
    earlier run wrote there, so that every file in it is this run's (no WAV of an item this run does not have).

    Only the files a run writes are removed; an `audio` that is a link is left alone (the writer refuses it)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text("an s2st run's output folder: never read as input\n", encoding="utf-8")
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
    audio = out / AUDIO_DIR
    if audio.is_dir() and not audio.is_symlink():
        for wav in audio.glob("*.wav"):
            wav.unlink(missing_ok=True)


def read_rows_leniently(path: Path) -> dict[str, ItemResult]:
    """The rows of a .jsonl written by a sink, by id (the last one wins); a torn last line (a crash while
    writing) and fields the row does not have (a resume key) are skipped."""
    rows: dict[str, ItemResult] = {}
    if not path.is_file():
        return rows
    known = set(ItemResult.__dataclass_fields__)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            data = json.loads(line)
            row = ItemResult(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError):
            continue
        rows[row.id] = row
    return rows


def complete_results(path: Path, given: Sequence[ItemResult], why: str) -> list[ItemResult]:
    """The last resort after an interruption that escaped a runtime: every given row, in order, as `path` has it,
    or marked interrupted (`why`) when it is not there; written back to `path` at once."""
    found = read_rows_leniently(path)
    rows = [found.get(row.id) or row for row in given]
    mark_interrupted([row for row in rows if row.id not in found], why)
    write_rows(path, rows)
    return rows
