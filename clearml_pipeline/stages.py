"""The one definition of the pipeline's stages, used by the local runner and by the ClearML steps alike.

Each stage names its options dataclass, its backends (one class each) and the queue role it runs on
remotely (GPU stages share a device through batching; TTS is CPU-bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steps.base import Stage
from steps.machine_translation import MachineTranslationOptions, MarianTranslator
from steps.speech_synthesis import EspnetSynthesizer, SpeechSynthesisOptions
from steps.speech_translation import SpeechTranslationOptions, WhisperTranslator


@dataclass(frozen=True)
class StageSpec:
    name: str
    prefix: str  # command-line and parameter-section prefix: --st-model, --mt-num-beams ...
    options: type
    backends: dict[str, type[Stage[Any, Any]]]
    queue: str  # "gpu" or "cpu": which agent queue runs it remotely


SPEECH_TRANSLATION = StageSpec(
    "speech_translation", "st", SpeechTranslationOptions, {"transformers": WhisperTranslator}, "gpu"
)
MACHINE_TRANSLATION = StageSpec(
    "machine_translation", "mt", MachineTranslationOptions, {"transformers": MarianTranslator}, "gpu"
)
SPEECH_SYNTHESIS = StageSpec("speech_synthesis", "tts", SpeechSynthesisOptions, {"espnet": EspnetSynthesizer}, "cpu")

STAGES: tuple[StageSpec, ...] = (SPEECH_TRANSLATION, MACHINE_TRANSLATION, SPEECH_SYNTHESIS)


def build_stage(spec: StageSpec, options: Any) -> Stage[Any, Any]:
    backend = options.backend
    try:
        cls = spec.backends[backend]
    except KeyError:
        raise ValueError(f"{spec.name}: unknown backend {backend!r}; choose from {', '.join(spec.backends)}") from None
    return cls(options)

