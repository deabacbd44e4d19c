"""Stage 1, speech translation: Spanish audio -> English text with Whisper (task=translate).

Clips longer than Whisper's 30 s window are cut at quiet points (audio.split_long), every chunk of every
clip in the batch is translated in one batched generate(), and the chunk texts are joined: long recordings
are translated whole, never truncated. Silence is gated out before the model (audio.speech_seconds), so it
yields an empty translation marked `no_speech` instead of the phrases Whisper invents on silence.

Two backends share that path (silence gate, splitting, batching, features, forced prefix, decoding to text) and
differ only in how a batch of log-mel features becomes token ids: `WhisperTranslator` (transformers) and
`FasterWhisperTranslator` (CTranslate2, the engine of faster-whisper, on a local conversion of the same snapshot).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from registry.hub import LocalModel, resolve_hf_model
from steps.audio import WHISPER_SAMPLE_RATE, Audio, speech_seconds, split_long
from steps.base import ItemError, ModelInfo, Stage
from steps.ct2 import ConvertedModel, device_kwargs, ensure_converted, resolve_compute_type
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
    # backend "ctranslate2" only: auto (int8 on CPU, float16 on CUDA), float32, int8_float16 ... (steps.ct2)
    compute_type: str = "auto"
    ct2_cache: str | None = None  # where conversions are cached; None: $S2ST_CT2_CACHE or ~/.cache/s2st/ct2


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
        self.generation_config = self.model.generation_config

    def models(self) -> list[ModelInfo]:
        assert self.local is not None
        return [ModelInfo("speech_translation", self.local.model_id, self.local.revision, str(self.local.path))]

    def decoder_prefix(self) -> list[int]:
        """The forced decoder prefix: <|startoftranscript|> <|lang|> <|task|> <|notimestamps|>."""
        config = self.generation_config
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

    def translate_chunks(self, chunks: Sequence[Audio]) -> list[str]:
        texts: list[str] = []
        size = self.options.batch_size
        for start in range(0, len(chunks), size):
            features = self.features(chunks[start : start + size])
            texts.extend(self.processor.batch_decode(self.generate_ids(features), skip_special_tokens=True))
        return texts

    def features(self, chunks: Sequence[Audio]) -> np.ndarray:
        """Log-mel features (batch, mels, 3000 frames): every backend gets exactly the same input."""
        return self.processor.feature_extractor(
            [c.samples for c in chunks], sampling_rate=WHISPER_SAMPLE_RATE, return_tensors="np"
        ).input_features

    @torch.inference_mode()
    def generate_ids(self, features: np.ndarray) -> Any:
        """Generated token ids per chunk (transformers 5 returns them without the forced prefix)."""
        opts = self.options
        return self.model.generate(
            torch.from_numpy(features).to(self.device, self.dtype),
            language=opts.language,
            task=opts.task,
            return_timestamps=False,
            num_beams=opts.num_beams,
            max_new_tokens=opts.max_new_tokens,
            min_new_tokens=opts.min_new_tokens or None,
            # Beam scores over the tokens that may be chosen: log-softmax after suppress_tokens, as OpenAI's
            # reference decoder, CTranslate2 and faster-whisper do. transformers' default scores beams with the
            # full-vocabulary log-probabilities (suppressed mass included), which ranks beams differently; greedy
            # decoding is unaffected (argmax does not change).
            renormalize_logits=True,
        )


def ct2_whisper_max_length(prefix_length: int, max_new_tokens: int) -> int:
    """The `max_length` that makes CTranslate2's Whisper.generate produce up to `max_new_tokens` tokens.

    Whisper.generate does not count max_length in new tokens: it feeds the prompt but its last token to the
    decoder first (start_step = prefix_length - 1) and then decodes min(max_length // 2, max_length - start_step)
    steps (src/models/whisper.cc, as OpenAI's sample_len = n_text_ctx // 2). max_length = N therefore gives N/2
    tokens (10 -> 5, 20 -> 10, 30 -> 15): the "half length" the first attempt saw. max(2N, N + start_step) gives
    exactly N.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 for the ctranslate2 backend; got {max_new_tokens}")
    return max(2 * max_new_tokens, max_new_tokens + prefix_length - 1)


class FasterWhisperTranslator(WhisperTranslator):
    """CTranslate2's Whisper (what faster-whisper runs) on a local conversion of the same snapshot, batched.

    Only the step from features to token ids differs from WhisperTranslator: the silence gate, long-audio
    splitting, the transformers feature extractor (so both backends see identical features), the forced prefix
    and the text decoding are inherited. CTranslate2 is driven directly rather than through
    faster_whisper.WhisperModel.transcribe, which decodes one recording at a time with its own VAD, prompts and
    temperature fallback; the converted folder still loads in faster_whisper.WhisperModel.

    Decoding matches transformers' generate: the same suppress_tokens (-1: the generation_config's list, which the
    converter copies) and begin_suppress_tokens (suppress_blank), beam_size = num_beams, patience 1 and
    length_penalty 1, max_length from ct2_whisper_max_length. Whisper.generate has no minimum length, so
    min_new_tokens >= max_new_tokens (the benchmarks' fixed length) suppresses <|endoftext|> throughout, which
    is what transformers' min_new_tokens does then; a minimum below the maximum is refused.

    Agreement (tests/test_ct2.py): token for token with transformers in float32 for greedy and beam search at a
    fixed length; beams agree because WhisperTranslator renormalizes after suppression as CTranslate2 does. Where
    hypotheses end at <|endoftext|> (trained models), beam search can still differ: transformers divides a
    finished beam's score by its length counting the end token and stops by its early_stopping heuristic,
    CTranslate2 divides by the length without it and stops once num_beams hypotheses have finished.
    """

    def __init__(self, options: SpeechTranslationOptions | None = None) -> None:
        super().__init__(options)
        self.converted: ConvertedModel | None = None

    def setup(self) -> None:
        import ctranslate2
        from transformers import GenerationConfig, WhisperProcessor

        opts = self.options
        if 0 < opts.min_new_tokens < opts.max_new_tokens:
            raise ValueError(
                "the ctranslate2 backend has no minimum decode length below the maximum: set min_new_tokens to 0, "
                f"or equal to max_new_tokens for a fixed length (got {opts.min_new_tokens} < {opts.max_new_tokens})"
            )
        self.device = pick_device(opts.device)
        self.compute_type = resolve_compute_type(opts.compute_type, self.device)
        self.local = resolve_hf_model(opts.model, opts.revision, cache_dir=opts.model_cache)
        config = json.loads((self.local.path / "config.json").read_text(encoding="utf-8"))
        self.converted = ensure_converted(self.local, self.compute_type, opts.ct2_cache)
        path = self.converted.path  # self-contained: tokenizer, preprocessor and generation files are copied in
        self.processor = WhisperProcessor.from_pretrained(path)
        self.generation_config = GenerationConfig.from_pretrained(path)
        prefix = len(self.decoder_prefix())
        if opts.max_new_tokens + prefix > config["max_target_positions"]:
            raise ValueError(
                f"max_new_tokens {opts.max_new_tokens} + the {prefix}-token prefix exceeds the decoder's "
                f"{config['max_target_positions']} positions"
            )
        self.model = ctranslate2.models.Whisper(
            str(path),
            **device_kwargs(self.device),
            compute_type=self.compute_type,
            intra_threads=torch.get_num_threads(),  # the runner's thread budget for this replica
        )
        eot = self.generation_config.eos_token_id
        self.suppress_tokens = [-1, eot] if opts.min_new_tokens else [-1]

    def models(self) -> list[ModelInfo]:
        assert self.local is not None and self.converted is not None
        return [
            ModelInfo("speech_translation", self.local.model_id, self.local.revision, str(self.local.path)),
            ModelInfo(
                f"speech_translation/ctranslate2-{self.compute_type}",
                self.local.model_id,
                self.converted.revision,
                str(self.converted.path),
            ),
        ]

    def generate_ids(self, features: np.ndarray) -> list[list[int]]:
        import ctranslate2

        opts = self.options
        prefix = self.decoder_prefix()
        results = self.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
            [prefix] * len(features),
            beam_size=opts.num_beams,
            patience=1.0,
            length_penalty=1.0,
            max_length=ct2_whisper_max_length(len(prefix), opts.max_new_tokens),
            suppress_blank=True,
            suppress_tokens=self.suppress_tokens,
            sampling_topk=1,
        )
        return [list(r.sequences_ids[0]) for r in results]
