"""Run the three stages over a folder of audio on this machine and write the output contract.

Items travel in groups of `batch_size` through speech translation, machine translation and speech synthesis;
each group's rows are appended to results.jsonl as soon as it is done, so a long run keeps what it finished.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clearml_pipeline.config import RunConfig
from clearml_pipeline.results import ItemResult, summarize
from clearml_pipeline.stages import MACHINE_TRANSLATION, SPEECH_SYNTHESIS, SPEECH_TRANSLATION, STAGES, build_stage
from steps.audio import AUDIO_EXTENSIONS, Audio, AudioError, load_audio, probe_seconds, write_wav
from steps.base import ModelInfo, Stage

log = logging.getLogger(__name__)
AUDIO_DIR = "audio"


@dataclass(frozen=True)
class InputItem:
    id: str
    path: Path


def discover_inputs(source: Path) -> list[InputItem]:
    """Audio files under `source` (or `source` itself), sorted, each with a unique, filesystem-safe id."""
    if source.is_file():
        paths, root = [source], source.parent
    elif source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        root = source
    else:
        raise FileNotFoundError(f"input {source} does not exist")
    items: list[InputItem] = []
    seen: set[str] = set()
    for path in paths:
        base = re.sub(r"[^\w.-]+", "_", str(path.relative_to(root).with_suffix("")).replace("/", "__")) or "item"
        item_id, n = base, 1
        while item_id in seen:
            n += 1
            item_id = f"{base}-{n}"
        seen.add(item_id)
        items.append(InputItem(item_id, path))
    return items


def batched(items: Sequence[InputItem], size: int) -> Iterator[Sequence[InputItem]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + max(size, 1)]


class LocalRunner:
    """The whole pipeline in this process: stages built once, then item groups streamed through them."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.stages: dict[str, Stage[Any, Any]] = {
            spec.name: build_stage(spec, config.stage_options(spec)) for spec in STAGES
        }

    def setup(self) -> None:
        """Load every model before the first item, so a missing model fails the run at once."""
        if self.config.runner.threads > 0:
            torch.set_num_threads(self.config.runner.threads)
        for stage in self.stages.values():
            stage.ensure_ready()

    def models(self) -> list[ModelInfo]:
        return [info for stage in self.stages.values() for info in stage.models()]

    def run(self, items: Sequence[InputItem], out: Path) -> dict[str, Any]:
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.setup()
        rows: list[ItemResult] = []
        input_busy = 0.0
        with (
            (out / "results.jsonl").open("w", encoding="utf-8") as sink,
            tqdm(total=len(items), unit="clip", desc="translating") as progress,
        ):
            for group in batched(items, self.config.runner.batch_size):
                group_rows = self.run_group(group, out)
                input_busy += sum(r.latency_s.get("input", 0.0) for r in group_rows)
                for row in group_rows:
                    sink.write(row.to_json() + "\n")
                sink.flush()
                rows.extend(group_rows)
                progress.update(len(group))
        busy = {name: stage.stats.busy_s for name, stage in self.stages.items()} | {"input": input_busy}
        device = getattr(self.stages[SPEECH_TRANSLATION.name], "device", "cpu")
        summary = summarize(rows, self.models(), busy, time.perf_counter() - started, self.config.to_dict(), device)
        return summary

    def run_group(self, group: Sequence[InputItem], out: Path) -> list[ItemResult]:
        rows = [ItemResult(item.id, str(item.path)) for item in group]
        audios = {row.id: audio for row, item in zip(rows, group, strict=True) if (audio := self.load(row, item))}
        self.translate_speech(rows, audios)
        self.translate_text(rows)
        self.synthesize(rows, out)
        for row in rows:
            row.latency_s["total"] = sum(v for k, v in row.latency_s.items() if k != "total")
        return rows

    def load(self, row: ItemResult, item: InputItem) -> Audio | None:
        start = time.perf_counter()
        try:
            limit = self.config.runner.max_audio_seconds
            if (seconds := probe_seconds(item.path)) > limit:
                raise AudioError(
                    f"{item.path.name} is {seconds:.0f} s long, over the {limit:.0f} s limit (--max-audio-seconds)"
                )
            audio = load_audio(item.path)
            row.audio_seconds = round(audio.seconds, 3)
            return audio
        except AudioError as exc:
            row.fail("input", str(exc))
            return None
        finally:
            row.latency_s["input"] = time.perf_counter() - start

    def translate_speech(self, rows: list[ItemResult], audios: dict[str, Audio]) -> None:
        live = [r for r in rows if r.ok]
        results = self.stages[SPEECH_TRANSLATION.name].run([audios[r.id] for r in live])
        for row, result in zip(live, results, strict=True):
            row.latency_s[SPEECH_TRANSLATION.name] = result.latency_s
            if not result.ok:
                row.fail(SPEECH_TRANSLATION.name, result.error or "failed")
                continue
            row.en_text = result.output.text
            # An empty translation of audible input also means the model heard no speech.
            row.no_speech = result.output.no_speech or not row.en_text.strip()

    def translate_text(self, rows: list[ItemResult]) -> None:
        live = [r for r in rows if r.ok and not r.no_speech]
        results = self.stages[MACHINE_TRANSLATION.name].run([r.en_text or "" for r in live])
        for row, result in zip(live, results, strict=True):
            row.latency_s[MACHINE_TRANSLATION.name] = result.latency_s
            if not result.ok:
                row.fail(MACHINE_TRANSLATION.name, result.error or "failed")
            elif not result.output.strip():
                row.fail(MACHINE_TRANSLATION.name, "machine translation returned empty text")
            else:
                row.zh_text = result.output
        for row in rows:
            if row.ok and row.no_speech:
                row.en_text, row.zh_text = "", ""

    def synthesize(self, rows: list[ItemResult], out: Path) -> None:
        live = [r for r in rows if r.ok and r.zh_text]
        results = self.stages[SPEECH_SYNTHESIS.name].run([r.zh_text for r in live])
        for row, result in zip(live, results, strict=True):
            row.latency_s[SPEECH_SYNTHESIS.name] = result.latency_s
            if not result.ok:
                row.fail(SPEECH_SYNTHESIS.name, result.error or "failed")
                continue
            speech = result.output
            relative = f"{AUDIO_DIR}/{row.id}.wav"
            write_wav(out / relative, speech.samples, speech.sample_rate)
            row.zh_audio = relative
            row.zh_audio_seconds = round(speech.seconds, 3)
            row.unsayable = speech.unsayable
