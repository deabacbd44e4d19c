"""The one definition of each stage: every runtime, the ClearML pipeline, the registry and the bench read it.

A StageSpec names the stage's options dataclass, its backends (one class each), the queue role it runs on
remotely (GPU stages share a device through batching; TTS is CPU-bound), the ClearML task type, which option
fields hold its models, which row fields it writes, and its `step`: how a group of result rows goes through
the stage (which rows it takes, what it writes back). Whatever executes the pipeline builds stages from
STAGES and calls their steps in order; adding a stage is one StageSpec entry and its step function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from resources.audio import Audio, AudioError, load_audio, probe_seconds, write_wav
from resources.paths import UnsafePathError, safe_join, safe_output_path
from steps.base import Stage
from steps.machine_translation import Ct2MarianTranslator, MachineTranslationOptions, MarianTranslator
from steps.results import ItemResult
from steps.speech_synthesis import EspnetSynthesizer, SpeechSynthesisOptions
from steps.speech_translation import FasterWhisperTranslator, SpeechTranslationOptions, WhisperTranslator

AUDIO_DIR = "audio"
T = TypeVar("T")


@dataclass(frozen=True)
class StepContext:
    """What steps need besides their stage: where audio goes, how long an input may be, and the folder that rows'
    relative `source` paths are inside (a dataset; None when sources are absolute local paths).

    A manifest's paths are never trusted to stay inside their dataset folder (symlinks resolved); a folder the
    user passed is theirs, so its links are followed (`follow_links`)."""

    out: Path
    max_audio_seconds: float
    input_root: Path | None = None
    follow_links: bool = False

    def source(self, row: ItemResult) -> Path:
        if self.input_root is None:
            return Path(row.source)
        if not self.follow_links:
            return safe_join(self.input_root, row.source)
        relative = PurePosixPath(row.source)
        if relative.is_absolute() or ".." in relative.parts:  # links are followed; the row's own path never climbs
            raise UnsafePathError(f"path {row.source!r} climbs out of its folder ('..') or is absolute")
        return self.input_root / relative


Step = Callable[[Stage[Any, Any], list[ItemResult], "StepContext"], None]
INPUT = "input"  # the pseudo-stage where a row's source file is decoded (and fails when it is bad)


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
        audio = load_audio(source, max_seconds=ctx.max_audio_seconds)
        row.audio_seconds = round(audio.seconds, 3)
        return audio
    except (AudioError, ValueError) as exc:  # ValueError: a source path that leaves its dataset folder
        row.fail(INPUT, str(exc))
        return None
    finally:
        row.latency_s[INPUT] = time.perf_counter() - start


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
        # Where in the recording each translated segment lies (seconds): plots, subtitles, audits.
        row.segments = [] if row.no_speech else [{"start": s, "end": e} for s, e in result.output.segments]
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
        try:  # the writer refuses any path that leaves OUT; one unwritable item fails its own row only
            path = safe_output_path(ctx.out, AUDIO_DIR, row.id, ".wav")
            write_wav(path, result.output.samples, result.output.sample_rate)
        except (UnsafePathError, OSError) as exc:
            row.fail(stage.name, f"could not write the audio: {exc}")
            continue
        row.zh_audio = path.relative_to(ctx.out).as_posix()
        row.zh_audio_seconds = round(result.output.seconds, 3)
        row.unsayable = result.output.unsayable


def english_length(row: ItemResult) -> int:
    return len(row.en_text or "")


def chinese_length(row: ItemResult) -> int:
    return len(row.zh_text or "")


@dataclass(frozen=True)
class StageSpec:
    name: str
    prefix: str  # command-line and parameter-section prefix: --st-model, --mt-num-beams ...
    options: type
    backends: Mapping[str, type[Stage[Any, Any]]]
    step: Step
    queue: str = "cpu"  # "gpu" or "cpu": which agent queue role runs it remotely
    task_type: str = "inference"  # the ClearML task type, shown and filtered on in the UI
    models: Mapping[str, str] = field(default_factory=dict)  # ModelInfo role -> the option field holding its ref
    writes: tuple[str, ...] = ()  # the row fields it fills in (the bench resets them to replay the stage alone)
    reads_dataset: bool = False  # its rows' sources are the dataset's files (it decodes the input audio)
    seed_items_per_s: float | None = None  # seed 000's measured rate, the baseline the bench reports beside ours
    # How much work a row is for this stage, known before it runs (None: unknown). A batch costs what its longest
    # item costs (batched generation and Tacotron2's decoder step until the last item stops), so a step that
    # runs a whole dataset takes its rows longest first and each batch holds items of like size.
    size: Callable[[ItemResult], int] | None = None


SPEECH_TRANSLATION = StageSpec(
    "speech_translation",
    "st",
    SpeechTranslationOptions,
    {"transformers": WhisperTranslator, "ctranslate2": FasterWhisperTranslator},
    speech_translation_step,
    queue="gpu",
    models={"speech_translation": "model"},
    writes=("en_text", "no_speech", "audio_seconds", "segments"),
    reads_dataset=True,
    seed_items_per_s=1.29,
)
MACHINE_TRANSLATION = StageSpec(
    "machine_translation",
    "mt",
    MachineTranslationOptions,
    {"transformers": MarianTranslator, "ctranslate2": Ct2MarianTranslator},
    machine_translation_step,
    queue="gpu",
    models={"machine_translation": "model"},
    writes=("zh_text",),
    seed_items_per_s=9.65,
    size=english_length,
)
SPEECH_SYNTHESIS = StageSpec(
    "speech_synthesis",
    "tts",
    SpeechSynthesisOptions,
    {"espnet": EspnetSynthesizer},
    speech_synthesis_step,
    models={"speech_synthesis": "model", "vocoder": "vocoder"},
    writes=("zh_audio", "zh_audio_seconds", "unsayable"),
    seed_items_per_s=0.32,
    size=chinese_length,
)

# In pipeline order. A list, so that a stage can be registered (tests add an identity stage); everything else
# derives from it when it runs, never from a copy taken at import time.
STAGES: list[StageSpec] = [SPEECH_TRANSLATION, MACHINE_TRANSLATION, SPEECH_SYNTHESIS]


def stage_names() -> tuple[str, ...]:
    """Where a row can spend time or fail, in order: the input decoding, then every stage."""
    return (INPUT, *(spec.name for spec in STAGES))


def stage(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown stage {name!r}; the stages are {', '.join(s.name for s in STAGES)}")


def build_stage(spec: StageSpec, options: Any) -> Stage[Any, Any]:
    backend = options.backend
    try:
        cls = spec.backends[backend]
    except KeyError:
        raise ValueError(f"{spec.name}: unknown backend {backend!r}; choose from {', '.join(spec.backends)}") from None
    return cls(options)


def longest_first(items: Sequence[T], size: Callable[[T], int]) -> list[T]:
    """`items` by decreasing size, equal sizes in their given order: batches of consecutive items then pad and
    decode little beyond their own lengths (the first batch is the costliest, so a run's ETA errs long)."""
    return sorted(items, key=lambda item: -size(item))


def finish(row: ItemResult) -> ItemResult:
    """Close a row: its total is the time it spent being processed, input decoding included (no queueing)."""
    row.latency_s["total"] = sum(row.latency_s.get(name, 0.0) for name in stage_names())
    return row
