"""The evaluation's options: which Whisper re-transcribes the audio, and which metrics and outputs to make."""

from __future__ import annotations

from dataclasses import dataclass

from steps.options import option, torch_device


@dataclass(frozen=True)
class EvaluationOptions:
    asr_model: str = option(
        "openai/whisper-large",
        "Whisper id, local folder or registry: ref",
        model_ref="hf",
        cache_field="asr_model_cache",
        pipeline=True,
    )
    asr_language: str = option("zh", "the language Whisper transcribes the synthesized speech in")
    asr_task: str = option("transcribe", "Whisper's task for the synthesized speech")
    asr_model_cache: str | None = option(
        None,
        "Hugging Face hub cache of the ASR model; None: where the run found its own Whisper "
        "(the run config's speech_translation.model_cache)",
        cache="hf",
    )
    asr_batch_size: int = option(8, "clips transcribed together in one generate() call")
    # 440 fills Whisper's decoder; on a fixture run the default becomes the fixture cap, as `run` does.
    asr_max_new_tokens: int = option(
        440, "decode budget per 30 s chunk (fixture runs: the fixture cap unless set)", fixture_cap=32
    )
    device: str = option("auto", "auto (cuda when present), cpu, cuda, cuda:1 ...", check=torch_device)
    intelligibility: bool = option(True, "transcribe the synthesized Mandarin and score its CER against zh_text")
    spanish_wer: bool = option(
        False, "transcribe the source audio (es) and score its WER against the manifest sentence: a second pass"
    )
    plots: bool = option(True, "draw plots/*.png")
