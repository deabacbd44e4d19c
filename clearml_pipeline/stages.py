"""The one definition of the pipeline's stages, used by the local runner, the streaming runtime and ClearML.

Each stage names its options dataclass, its backends (one class each), the queue role it runs on remotely
(GPU stages share a device through batching; TTS is CPU-bound), and its `step`: how a batch of result rows
goes through the stage (which rows it takes, what it writes back). Whatever executes the pipeline only
builds stages and calls steps in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clearml_pipeline.results import ItemResult
from data_prep.paths import safe_join
from steps.audio import Audio, AudioError, load_audio, probe_seconds, write_wav
from steps.base import Stage
from steps.machine_translation import Ct2MarianTranslator, MachineTranslationOptions, MarianTranslator
from steps.speech_synthesis import EspnetSynthesizer, SpeechSynthesisOptions
from steps.speech_translation import FasterWhisperTranslator, SpeechTranslationOptions, WhisperTranslator

AUDIO_DIR = "audio"


@dataclass(frozen=True)
class StepContext:
    """What steps need besides their stage: where audio goes, how long an input may be, and the folder that rows'
    relative `source` paths are inside (a dataset; None when sources are absolute local paths)."""

    out: Path
    max_audio_seconds: float
    input_root: Path | None = None

    def source(self, row: ItemResult) -> Path:
        # A manifest's paths are never trusted to stay inside their dataset folder.
        return safe_join(self.input_root, row.source) if self.input_root else Path(row.source)


Step = Callable[[Stage[Any, Any], list[ItemResult], StepContext], None]


def load_input(row: ItemResult, ctx: StepContext) -> Audio | None:
    """Decode the row's source file; a bad file fails the row at stage "input"."""
    start = time.perf_counter()
    try:
        source = ctx.source(row)
        if (seconds := probe_seconds(source)) > ctx.max_audio_seconds:
            raise AudioError(
                f"{source.name} is {seconds:.0f} s long, over the {ctx.max_audio_seconds:.0f} s limit "
                f"(--max-audio-seconds)"
            )
        audio = load_audio(source)
        row.audio_seconds = round(audio.seconds, 3)
        return audio
    except (AudioError, ValueError) as exc:  # ValueError: a source path that leaves its dataset folder
        row.fail("input", str(exc))
        return None
    finally:
        row.latency_s["input"] = time.perf_counter() - start


def speech_translation_step(stage: Stage[Any, Any], rows: list[ItemResult], ctx: StepContext) -> None:
    audios = {row.id: audio for row in rows if (audio := load_input(row, ctx)) is not None}
    live = [r for r in rows if r.ok]
    for row, result in zip(live, stage.run([audios[r.id] for r in live]), strict=True):
        row.latency_s[stage.name] = result.latency_s
        if not result.ok:
            row.fail(stage.name, result.error or "failed")
            continue
        row.en_text = result.output.text
        # An empty translation of audible input also means the model heard no speech.
        row.no_speech = result.output.no_speech or not row.en_text.strip()
        if row.no_speech:
            row.en_text, row.zh_text = "", ""


def machine_translation_step(stage: Stage[Any, Any], rows: list[ItemResult], ctx: StepContext) -> None:
    live = [r for r in rows if r.ok and not r.no_speech]
    for row, result in zip(live, stage.run([r.en_text or "" for r in live]), strict=True):
        row.latency_s[stage.name] = result.latency_s
        if not result.ok:
            row.fail(stage.name, result.error or "failed")
        elif not result.output.strip():
            row.fail(stage.name, "machine translation returned empty text")
        else:
            row.zh_text = result.output


def speech_synthesis_step(stage: Stage[Any, Any], rows: list[ItemResult], ctx: StepContext) -> None:
    live = [r for r in rows if r.ok and r.zh_text]
    for row, result in zip(live, stage.run([r.zh_text for r in live]), strict=True):
        row.latency_s[stage.name] = result.latency_s
        if not result.ok:
            row.fail(stage.name, result.error or "failed")
            continue
        relative = f"{AUDIO_DIR}/{row.id}.wav"
        write_wav(ctx.out / relative, result.output.samples, result.output.sample_rate)
        row.zh_audio = relative
        row.zh_audio_seconds = round(result.output.seconds, 3)
        row.unsayable = result.output.unsayable


@dataclass(frozen=True)
class StageSpec:
    name: str
    prefix: str  # command-line and parameter-section prefix: --st-model, --mt-num-beams ...
    options: type
    backends: dict[str, type[Stage[Any, Any]]]
    queue: str  # "gpu" or "cpu": which agent queue runs it remotely
    step: Step


SPEECH_TRANSLATION = StageSpec(
    "speech_translation",
    "st",
    SpeechTranslationOptions,
    {"transformers": WhisperTranslator, "ctranslate2": FasterWhisperTranslator},
    "gpu",
    speech_translation_step,
)
MACHINE_TRANSLATION = StageSpec(
    "machine_translation",
    "mt",
    MachineTranslationOptions,
    {"transformers": MarianTranslator, "ctranslate2": Ct2MarianTranslator},
    "gpu",
    machine_translation_step,
)
SPEECH_SYNTHESIS = StageSpec(
    "speech_synthesis", "tts", SpeechSynthesisOptions, {"espnet": EspnetSynthesizer}, "cpu", speech_synthesis_step
)

STAGES: tuple[StageSpec, ...] = (SPEECH_TRANSLATION, MACHINE_TRANSLATION, SPEECH_SYNTHESIS)


def build_stage(spec: StageSpec, options: Any) -> Stage[Any, Any]:
    backend = options.backend
    try:
        cls = spec.backends[backend]
    except KeyError:
        raise ValueError(f"{spec.name}: unknown backend {backend!r}; choose from {', '.join(spec.backends)}") from None
    return cls(options)


def finish(row: ItemResult) -> ItemResult:
    """Close a row: its total is the time it spent being processed, input decoding included (no queueing)."""
    row.latency_s["total"] = sum(row.latency_s.get(name, 0.0) for name in ("input", *(s.name for s in STAGES)))
    return row
