"""Stage 1, speech translation: Spanish audio -> English text with Whisper (task=translate).

Clips longer than Whisper's 30 s window are cut at quiet points (audio.split_long), every chunk of every
clip in the batch is translated in one batched generate(), and the chunk texts are joined: long recordings
are translated whole, never truncated. Silence is gated out before the model (audio.speech_seconds), so it
yields an empty translation marked `no_speech` instead of the phrases Whisper invents on silence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from registry.hub import LocalModel, resolve_hf_model
from steps.audio import WHISPER_SAMPLE_RATE, Audio, speech_seconds, split_long
from steps.base import ItemError, ModelInfo, Stage
from steps.device import pick_device, pick_dtype


@dataclass
class SpeechTranslationOptions:
    backend: str = "transformers"
    model: str = "openai/whisper-large"
    revision: str | None = None
    model_cache: str | None = None  # Hugging Face hub cache dir; None: HF_HUB_CACHE
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    language: str = "es"
    task: str = "translate"
    num_beams: int = 1
    # Whisper's decoder holds 448 positions; 4 go to the forced prefix.
    max_new_tokens: int = 440
    # Benchmarks fix decode lengths (min = max) so random-weight models cost what real outputs would.
    min_new_tokens: int = 0
    chunk_seconds: float = 30.0
    min_speech_seconds: float = 0.3
    silence_threshold_dbfs: float = -40.0


@dataclass(frozen=True)
class Translation:
    text: str
    no_speech: bool = False
    chunks: int = 1


class WhisperTranslator(Stage[Audio, Translation]):
    """transformers WhisperForConditionalGeneration, batched, fp16 on GPU."""

    name = "speech_translation"

    def __init__(self, options: SpeechTranslationOptions | None = None) -> None:
        super().__init__()
        self.options = options or SpeechTranslationOptions()
        self.local: LocalModel | None = None

    def setup(self) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        opts = self.options
        self.device = pick_device(opts.device)
        self.dtype = pick_dtype(opts.dtype, self.device)
        self.local = resolve_hf_model(opts.model, opts.revision, cache_dir=opts.model_cache)
        self.processor = WhisperProcessor.from_pretrained(self.local.path)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.local.path, dtype=self.dtype)
        self.model.to(self.device).eval()

    def models(self) -> list[ModelInfo]:
        assert self.local is not None
        return [ModelInfo("speech_translation", self.local.model_id, self.local.revision, str(self.local.path))]

    def decoder_prefix(self) -> list[int]:
        """The forced decoder prefix: <|startoftranscript|> <|lang|> <|task|> <|notimestamps|>."""
        config = self.model.generation_config
        return [
            config.decoder_start_token_id,
            config.lang_to_id[f"<|{self.options.language}|>"],
            config.task_to_id[self.options.task],
            config.no_timestamps_token_id,
        ]

    def process(self, inputs: Sequence[Audio]) -> list[Translation | ItemError]:
        opts = self.options
        chunks: list[Audio] = []
        owners: list[int] = []
        results: list[Translation | ItemError | None] = [None] * len(inputs)
        for index, audio in enumerate(inputs):
            if audio.sample_rate != WHISPER_SAMPLE_RATE:
                results[index] = ItemError(f"audio must be {WHISPER_SAMPLE_RATE} Hz, got {audio.sample_rate}")
            elif speech_seconds(audio, opts.silence_threshold_dbfs) < opts.min_speech_seconds:
                results[index] = Translation("", no_speech=True, chunks=0)
            else:
                pieces = split_long(audio, opts.chunk_seconds)
                chunks.extend(pieces)
                owners.extend([index] * len(pieces))
        texts = self.translate_chunks(chunks)
        joined: dict[int, list[str]] = {}
        for owner, text in zip(owners, texts, strict=True):
            joined.setdefault(owner, []).append(text.strip())
        for owner, parts in joined.items():
            results[owner] = Translation(" ".join(p for p in parts if p), chunks=len(parts))
        return [r if r is not None else ItemError("internal: item lost") for r in results]

    @torch.inference_mode()
    def translate_chunks(self, chunks: Sequence[Audio]) -> list[str]:
        opts = self.options
        texts: list[str] = []
        for start in range(0, len(chunks), opts.batch_size):
            batch = chunks[start : start + opts.batch_size]
            features = self.processor.feature_extractor(
                [c.samples for c in batch], sampling_rate=WHISPER_SAMPLE_RATE, return_tensors="pt"
            ).input_features.to(self.device, self.dtype)
            ids = self.model.generate(
                features,
                language=opts.language,
                task=opts.task,
                return_timestamps=False,
                num_beams=opts.num_beams,
                max_new_tokens=opts.max_new_tokens,
                min_new_tokens=opts.min_new_tokens or None,
            )
            texts.extend(self.processor.batch_decode(ids, skip_special_tokens=True))
        return texts
