"""The evaluation's ASR: the pipeline's own Whisper stage, set to transcribe, for CER and Spanish WER."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clearml_pipeline.evaluation.options import EvaluationOptions
from steps.options import fields_with

if TYPE_CHECKING:
    from steps.speech_translation import SpeechTranslationOptions, WhisperStage


def is_fixture_run(run_config: dict[str, Any]) -> bool:
    return run_config.get("runner", {}).get("models", "hub") != "hub"


def fixture_decode_cap() -> int:
    """The decode length `run --models fixtures` gives Whisper: its options' `max_new_tokens` fixture_cap."""
    from steps.speech_translation import SpeechTranslationOptions

    cap = next(f for f in fields_with(SpeechTranslationOptions, "fixture_cap") if f.name == "max_new_tokens")
    return int(cap.metadata["fixture_cap"])


def asr_options(options: EvaluationOptions, run_config: dict[str, Any]) -> SpeechTranslationOptions:
    """The Whisper stage's options for the evaluation of a run made with `run_config` (its summary's config)."""
    from steps.speech_translation import SpeechTranslationOptions

    cache = options.asr_model_cache or run_config.get("speech_translation", {}).get("model_cache")
    max_new_tokens = options.asr_max_new_tokens
    if is_fixture_run(run_config) and max_new_tokens == EvaluationOptions().asr_max_new_tokens:
        # Random weights never stop by themselves: cap them as `run --models fixtures` does.
        max_new_tokens = fixture_decode_cap()
    return SpeechTranslationOptions(
        model=options.asr_model,
        language=options.asr_language,
        task=options.asr_task,
        # The run's cache only if it is on this machine (a pipeline step may have run elsewhere).
        model_cache=cache if cache and Path(cache).is_dir() else None,
        device=options.device,
        batch_size=max(options.asr_batch_size, 1),
        max_new_tokens=max_new_tokens,
        # As SeamlessM4T's ASR-BLEU transcribes: greedy at temperature 0 and no fallback, so a transcript is
        # reproducible (fallback samples at higher temperatures).
        temperature=0.0,
        num_beams=1,
        temperature_increment=0.0,
    )


class Transcriber:
    """The pipeline's own Whisper stage set to transcribe, loaded on first use; the backend is the one the model's
    folder needs (a transformers checkpoint or a CTranslate2 / faster-whisper folder)."""

    def __init__(self, options: EvaluationOptions, run_config: dict[str, Any]) -> None:
        self.options = asr_options(options, run_config)
        self.stage: WhisperStage | None = None

    def load(self) -> WhisperStage:
        if self.stage is None:
            from steps.speech_translation import whisper_for

            self.stage = whisper_for(self.options)
            self.stage.ensure_ready()  # a missing model raises ModelUnavailableError: a setup error
        return self.stage

    def info(self) -> dict[str, Any] | None:
        if self.stage is None:
            return None
        model = self.stage.models()[0]
        return {
            "model_id": model.model_id,
            "revision": model.revision,
            "max_new_tokens": self.options.max_new_tokens,
            "temperature": self.options.temperature,
            "num_beams": self.options.num_beams,
            "fallback": bool(self.options.temperature_increment),
        }

    def __call__(self, paths: Sequence[Path], language: str, task: str, desc: str) -> list[tuple[str | None, str]]:
        """(text, "") or (None, error) per path. One loaded model serves both languages: only options change."""
        from tqdm import tqdm

        from resources.audio import AudioError, load_audio

        if not paths:  # nothing to transcribe: the model is not even loaded
            return []
        stage = self.load()
        # The options are frozen: the stage gets a new object (the model stays loaded; it reads them per batch).
        stage.options = replace(stage.options, language=language, task=task)
        found: list[tuple[str | None, str]] = []
        size = stage.options.batch_size
        with tqdm(total=len(paths), unit="clip", desc=desc) as bar:
            for start in range(0, len(paths), size):
                batch, audios, errors = paths[start : start + size], [], {}
                for k, path in enumerate(batch):
                    try:
                        audios.append(load_audio(path))
                    except AudioError as exc:
                        errors[k] = str(exc)
                results = iter(stage.run(audios))
                for k in range(len(batch)):
                    if k in errors:
                        found.append((None, errors[k]))
                    elif (result := next(results)).ok:
                        found.append((result.output.text, ""))
                    else:
                        found.append((None, result.error or "failed"))
                bar.update(len(batch))
        return found
