"""Stage 1, speech translation: Spanish audio -> English text with Whisper (task=translate).

Silero VAD finds the speech (steps.vad); recordings are cut between speech regions into segments of at most 30 s,
every segment of every clip in the batch is decoded in batches, and the segment texts are joined: long recordings
are translated whole, and tones, noise and silence yield an empty translation marked `no_speech` instead of the
phrases Whisper invents for them. Decoding has OpenAI's safeguards (steps.whisper_decoding): temperature fallback on
compression ratio 2.4 and average log-probability -1.0, and the no-speech threshold 0.6, each an option.

Two backends share that path (steps.whisper_stage) and differ only in the model: `WhisperTranslator`
(transformers, steps.whisper_transformers) loads a transformers Whisper checkpoint; `FasterWhisperTranslator`
(CTranslate2, steps.whisper_ctranslate2) loads a ready CTranslate2 / faster-whisper folder as it is, or converts a
transformers checkpoint once. A ready CTranslate2 folder given to the transformers backend is a clear error naming
the ctranslate2 backend (an explicit backend is never switched behind the user's back); `whisper_for` picks the
backend a model needs, for callers without a backend option (the evaluation's ASR).
"""

from __future__ import annotations

from dataclasses import replace

from resources.weights import resolve_hf_model
from steps.ct2 import CTRANSLATE2, whisper_layout
from steps.whisper_ctranslate2 import FasterWhisperTranslator, ct2_whisper_max_length
from steps.whisper_stage import SpeechTranslationOptions, Translation, WhisperStage
from steps.whisper_transformers import WhisperTranslator

__all__ = [
    "FasterWhisperTranslator",
    "SpeechTranslationOptions",
    "Translation",
    "WhisperStage",
    "WhisperTranslator",
    "ct2_whisper_max_length",
    "whisper_for",
]


def whisper_for(options: SpeechTranslationOptions) -> WhisperStage:
    """The stage for `options.model`: a ready CTranslate2 folder on the ctranslate2 backend, a transformers
    checkpoint on `options.backend`. Resolves the model (a missing one raises ModelUnavailableError here)."""
    local = resolve_hf_model(options.model, options.revision, cache_dir=options.model_cache)
    if whisper_layout(local.path) == CTRANSLATE2:
        return FasterWhisperTranslator(replace(options, backend="ctranslate2"))
    if options.backend == "ctranslate2":
        return FasterWhisperTranslator(options)
    return WhisperTranslator(options)
