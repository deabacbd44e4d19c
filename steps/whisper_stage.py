"""What both Whisper backends share: the options, the output, and the path from recordings to texts.

A batch of recordings becomes segments (Silero VAD, steps.vad: speech regions grouped into at most 30 s, cut only
between regions), every segment of every recording is decoded in batches with the safeguards of
steps.whisper_decoding (temperature fallback, no-speech rule), and each recording's segment texts are joined.
A backend supplies only the model: setup(), decoder_prefix(), decode_pass() and to_text().
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resources.audio import WHISPER_SAMPLE_RATE, Audio, speech_seconds, split_long
from steps.base import ItemError, Stage
from steps.ct2 import COMPUTE_TYPES
from steps.options import dtype_name, one_of, option, torch_device
from steps.vad import Segment, VadSettings, spans, speech_segments
from steps.whisper_decoding import Decoded, FallbackRules, decode_with_fallback, skipped, temperatures

# Whisper's decoder holds 448 positions, in every size (tiny ... large-v3).
WHISPER_TEXT_POSITIONS = 448


@dataclass(frozen=True)
class SpeechTranslationOptions:
    backend: str = option(
        "transformers",
        "transformers, or ctranslate2 (as faster-whisper runs Whisper; needed for CTranslate2 folders)",
        pipeline=True,
        check=one_of("transformers", "ctranslate2"),
    )
    model: str = option(
        "openai/whisper-large",
        "Whisper id or local folder (a transformers checkpoint, or a CTranslate2/faster-whisper folder), or registry:",
        model_ref="hf",
        revision="revision",
        cache_field="model_cache",
        pipeline=True,
    )
    revision: str | None = option(None, "hub revision (commit) to pin; None: the cached or newest one")
    model_cache: str | None = option(None, "Hugging Face hub cache folder; None: HF_HUB_CACHE", cache="hf")
    device: str = option("auto", "auto (cuda when present), cpu, cuda, cuda:1 ...", check=torch_device)
    dtype: str = option(
        "auto", "auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16", check=dtype_name
    )
    batch_size: int = option(8, "segments (of at most 30 s) decoded together in one pass", pipeline=True)
    language: str = option("es", "the source language Whisper is told")
    task: str = option("translate", "translate (to English) or transcribe; forced on every segment and every retry")
    num_beams: int = option(1, "beam width at temperature 0; 1 is greedy decoding")
    max_new_tokens: int = option(440, "decode budget per 30 s segment", fixture_cap=32)
    # Benchmarks fix decode lengths (min = max) so random-weight models cost what real outputs would.
    min_new_tokens: int = option(0, "minimum tokens per segment (benchmarks: fixed decode lengths)")
    temperature: float = option(0.0, "the first decoding temperature (0: greedy or beam search)")
    # Random fixture weights repeat tokens (fixtures-full: one token throughout), which trips the compression
    # rule: in fixture runs and benchmarks fallback would only multiply the cost.
    temperature_increment: float | None = option(
        0.2,
        "temperature fallback step up to 1.0 for a segment that loops or is unsure; 0 or None: none",
        fixture_cap=0.0,
    )
    best_of: int = option(5, "samples drawn at each fallback temperature; the likeliest is kept")
    compression_ratio_threshold: float | None = option(
        2.4, "text whose zlib compression ratio is above this repeats itself: decode again hotter; None: off"
    )
    logprob_threshold: float | None = option(-1.0, "average log-probability below this: decode again hotter; None: off")
    no_speech_threshold: float | None = option(
        0.6, "no-speech probability above this (with log-probability below logprob_threshold): no text; None: off"
    )
    vad: bool = option(True, "find speech with Silero VAD and cut only between speech regions; false: level gate only")
    vad_threshold: float = option(0.5, "Silero speech probability threshold")
    vad_min_silence_seconds: float = option(2.0, "pauses shorter than this stay inside one speech region")
    chunk_seconds: float = option(30.0, "the longest segment (Whisper's window)")
    min_speech_seconds: float = option(0.3, "audio with less speech above the level threshold is no_speech")
    silence_threshold_dbfs: float = option(-40.0, "a 30 ms frame louder than this counts as speech (level gate)")
    compute_type: str = option(
        "auto",
        "ctranslate2 backend only: auto (int8 on CPU, float16 on CUDA), float32, int8_float16 ... (steps.ct2)",
        check=one_of(*COMPUTE_TYPES),
    )
    ct2_cache: str | None = option(
        None, "where ctranslate2 conversions are cached; None: $S2ST_CT2_CACHE or ~/.cache/s2st/ct2"
    )

    def rules(self) -> FallbackRules:
        return FallbackRules(
            temperatures(self.temperature, self.temperature_increment),
            self.compression_ratio_threshold,
            self.logprob_threshold,
            self.no_speech_threshold,
        )

    def vad_settings(self) -> VadSettings:
        return VadSettings(
            threshold=self.vad_threshold,
            min_silence_seconds=self.vad_min_silence_seconds,
            max_seconds=self.chunk_seconds,
        )


@dataclass(frozen=True)
class Translation:
    text: str
    no_speech: bool = False
    chunks: int = 1  # segments decoded
    segments: tuple[tuple[float, float], ...] = ()  # (start, end) seconds of the segments that gave text


class WhisperStage(Stage[Audio, Translation]):
    """The shared path; subclasses load a model and decode features."""

    name = "speech_translation"

    def __init__(self, options: SpeechTranslationOptions | None = None) -> None:
        super().__init__()
        self.options = options or SpeechTranslationOptions()

    @abstractmethod
    def decoder_prefix(self) -> list[int]:
        """The forced decoder prefix: <|startoftranscript|> <|lang|> <|task|> <|notimestamps|>."""

    @abstractmethod
    def encode(self, features: np.ndarray) -> Any:
        """The encoder's output for `features`: computed once per batch, reused by every fallback pass."""

    @abstractmethod
    def decode_encoded(self, encoded: Any, temperature: float) -> list[Decoded]:
        """One decode of each row at `temperature` (0: greedy or beam; > 0: best_of samples, the likeliest kept)."""

    def select(self, encoded: Any, features: np.ndarray, indices: list[int]) -> Any:
        """The encoder output of some rows of a batch (default: encode those rows again)."""
        return encoded if indices == list(range(len(features))) else self.encode(features[indices])

    def decode_pass(self, features: np.ndarray, temperature: float) -> list[Decoded]:
        return self.decode_encoded(self.encode(features), temperature)

    @abstractmethod
    def to_text(self, tokens: list[int]) -> str:
        """The text of generated ids (special tokens dropped)."""

    def features(self, chunks: Sequence[Audio]) -> np.ndarray:
        """Log-mel features (batch, mels, 3000 frames): every backend gets exactly the same input.

        One chunk at a time, the same numbers as the batch (each chunk is padded and normalized on its own): a
        batch of 8 takes a 39 MB STFT, above glibc's largest mmap threshold, so every call mapped, faulted in
        and unmapped it again (measured: 20,000-29,000 page faults and 120-130 ms per batch of 8, against 1 fault
        and 67-70 ms one chunk at a time; in the streaming bench faults were a quarter of this stage's CPU)."""
        return np.concatenate(
            [
                self.feature_extractor(  # type: ignore[attr-defined]
                    [c.samples], sampling_rate=WHISPER_SAMPLE_RATE, return_tensors="np"
                ).input_features
                for c in chunks
            ]
        )

    def segments(self, audio: Audio) -> list[Segment]:
        opts = self.options
        if opts.vad:
            return speech_segments(audio, opts.vad_settings())
        return spans(split_long(audio, opts.chunk_seconds))

    def process(self, inputs: Sequence[Audio]) -> list[Translation | ItemError]:
        opts = self.options
        pieces: list[Audio] = []
        owners: list[tuple[int, Segment]] = []
        results: list[Translation | ItemError | None] = [None] * len(inputs)
        for index, audio in enumerate(inputs):
            if audio.sample_rate != WHISPER_SAMPLE_RATE:
                results[index] = ItemError(f"audio must be {WHISPER_SAMPLE_RATE} Hz, got {audio.sample_rate}")
                continue
            # The level gate first: it costs nothing, and silence then never reaches the VAD or the model.
            audible = speech_seconds(audio, opts.silence_threshold_dbfs) >= opts.min_speech_seconds
            found = self.segments(audio) if audible else []
            if not found:
                results[index] = Translation("", no_speech=True, chunks=0)
            for segment in found:
                pieces.append(segment.cut(audio))
                owners.append((index, segment))
        texts: dict[int, list[tuple[Segment, str]]] = {}
        for (owner, segment), text in zip(owners, self.translate_segments(pieces), strict=True):
            texts.setdefault(owner, []).append((segment, text))
        for owner, parts in texts.items():
            kept = [(segment, text) for segment, text in parts if text]
            results[owner] = Translation(
                " ".join(text for _, text in kept),
                no_speech=not kept,
                chunks=len(parts),
                segments=tuple(segment.seconds(WHISPER_SAMPLE_RATE) for segment, _ in kept),
            )
        return [r if r is not None else ItemError("internal: item lost") for r in results]

    def translate_segments(self, pieces: Sequence[Audio]) -> list[str]:
        """Each segment's text ("" when the no-speech rule drops it), decoded batch_size segments at a time."""
        rules = self.options.rules()
        texts: list[str] = []
        size = max(self.options.batch_size, 1)
        for start in range(0, len(pieces), size):
            features = self.features(pieces[start : start + size])
            encoded = self.encode(features)

            def decode(
                indices: Sequence[int], temperature: float, features: np.ndarray = features, encoded: Any = encoded
            ) -> list[Decoded]:
                return self.decode_encoded(self.select(encoded, features, list(indices)), temperature)

            for kept in decode_with_fallback(len(features), decode, self.to_text, rules):
                texts.append("" if skipped(kept, rules) else kept.text)
        return texts

    def check_budget(self, prefix_length: int) -> None:
        opts = self.options
        if opts.max_new_tokens + prefix_length > WHISPER_TEXT_POSITIONS:
            raise ValueError(
                f"max_new_tokens {opts.max_new_tokens} + the {prefix_length}-token prefix exceeds the decoder's "
                f"{WHISPER_TEXT_POSITIONS} positions"
            )
