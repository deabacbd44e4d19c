"""Stage 1 on CTranslate2, the engine of faster-whisper: a ready faster-whisper folder, or a local conversion.

The model is either a ready CTranslate2 Whisper folder (the hub's Systran/faster-whisper-* layout: model.bin,
config.json, tokenizer.json, vocabulary.json; preprocessor_config.json optional, else Whisper's extractor with the
model's n_mels), loaded as it is, or a transformers checkpoint converted once into the cache (steps.ct2). The
tokenizer and the forced prefix are faster-whisper's (faster_whisper.tokenizer.Tokenizer on tokenizer.json), the
features transformers' extractor (so both backends see identical input), and each decode pass is one batched
Whisper.generate with faster-whisper's own arguments: return_scores and return_no_speech_prob, and for sampling
beam 1, best_of hypotheses, top-k 0 at the temperature; the average log-probability is recovered from the score as
faster-whisper does (score x length / (length + 1)).

Why not faster_whisper.WhisperModel.transcribe: see steps.whisper_decoding (one window at a time, its own budget
arithmetic); the segments come from the same Silero VAD faster-whisper uses (steps.vad).

Agreement (tests/test_ct2.py): token for token with transformers in float32 for greedy and beam search at a fixed
length; beams agree because WhisperTranslator renormalizes after suppression as CTranslate2 does. Where hypotheses
end at <|endoftext|> (trained models), beam search can still differ: transformers divides a finished beam's score
by its length counting the end token and stops by its early_stopping heuristic, CTranslate2 divides by the length
without it and stops once num_beams hypotheses have finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from resources.weights import LocalModel, resolve_hf_model
from steps.base import ModelInfo
from steps.ct2 import (
    CTRANSLATE2,
    ConvertedModel,
    check_compute_type,
    device_kwargs,
    ensure_converted,
    resolve_compute_type,
    source_key,
    whisper_layout,
)
from steps.device import pick_device
from steps.whisper_decoding import Decoded
from steps.whisper_stage import SpeechTranslationOptions, WhisperStage
from steps.whisper_transformers import load_feature_extractor


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


class FasterWhisperTranslator(WhisperStage):
    """CTranslate2's Whisper (what faster-whisper runs), batched, on a ready folder or a cached conversion.

    Decoding matches transformers' generate at temperature 0: the same suppress_tokens (-1: the model config's
    suppress_ids, which the converter copies from the generation_config) and begin_suppress_tokens
    (suppress_blank), beam_size = num_beams, patience 1 and length_penalty 1, max_length from
    ct2_whisper_max_length. Whisper.generate has no minimum length, so min_new_tokens >= max_new_tokens (the
    benchmarks' fixed length) suppresses <|endoftext|> throughout, which is what transformers' min_new_tokens does
    then; a minimum below the maximum is refused.
    """

    def __init__(self, options: SpeechTranslationOptions | None = None) -> None:
        super().__init__(options)
        self.local: LocalModel | None = None
        self.converted: ConvertedModel | None = None  # None: a ready CTranslate2 folder, loaded as it is

    def setup(self) -> None:
        import ctranslate2
        import tokenizers
        from faster_whisper.tokenizer import Tokenizer

        opts = self.options
        if 0 < opts.min_new_tokens < opts.max_new_tokens:
            raise ValueError(
                "the ctranslate2 backend has no minimum decode length below the maximum: set min_new_tokens to 0, "
                f"or equal to max_new_tokens for a fixed length (got {opts.min_new_tokens} < {opts.max_new_tokens})"
            )
        self.device = pick_device(opts.device)
        self.compute_type = resolve_compute_type(opts.compute_type, self.device)
        self.local = resolve_hf_model(opts.model, opts.revision, cache_dir=opts.model_cache)
        ready = whisper_layout(self.local.path) == CTRANSLATE2
        check_compute_type(self.compute_type, self.device)  # before a conversion that could not be loaded
        if not ready:
            self.converted = ensure_converted(self.local, self.compute_type, opts.ct2_cache)
        self.path: Path = self.local.path if ready else self.converted.path  # type: ignore[union-attr]
        self.model = ctranslate2.models.Whisper(
            str(self.path),
            **device_kwargs(self.device),
            compute_type=self.compute_type,
            intra_threads=torch.get_num_threads(),  # the runner's thread budget for this replica
        )
        if opts.task == "translate" and not self.model.is_multilingual:
            raise ValueError(f"{opts.model} is an English-only Whisper model: it cannot translate from {opts.language}")
        self.feature_extractor = load_feature_extractor(self.path, self.model.n_mels)
        self.tokenizer = Tokenizer(
            tokenizers.Tokenizer.from_file(str(self.path / "tokenizer.json")),
            self.model.is_multilingual,
            task=opts.task,
            language=opts.language,
        )
        self.check_budget(len(self.decoder_prefix()))
        self.suppress_tokens = [-1, self.tokenizer.eot] if opts.min_new_tokens else [-1]

    def models(self) -> list[ModelInfo]:
        assert self.local is not None
        if self.converted is None:  # a ready folder: a hub snapshot's commit, or a local folder's content key
            revision = self.local.revision if self.local.revision != "local" else source_key(self.local)[1]
            return [ModelInfo("speech_translation", self.local.model_id, revision, str(self.path))]
        return [
            ModelInfo("speech_translation", self.local.model_id, self.local.revision, str(self.local.path)),
            ModelInfo(
                f"speech_translation/ctranslate2-{self.compute_type}",
                self.local.model_id,
                self.converted.revision,
                str(self.converted.path),
            ),
        ]

    def decoder_prefix(self) -> list[int]:
        return [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]

    def to_text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def generate_ids(self, features: np.ndarray) -> list[list[int]]:
        return [d.tokens for d in self.decode_pass(features, 0.0)]

    def encode(self, features: np.ndarray) -> Any:
        import ctranslate2

        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
        return self.model.encode(storage, to_cpu=False)

    def decode_encoded(self, encoded: Any, temperature: float) -> list[Decoded]:
        """Whisper.generate on the encoder output (it takes features or an encoder output alike)."""
        opts = self.options
        prefix = self.decoder_prefix()
        if temperature > 0:  # faster-whisper's sampling arguments (generate_with_fallback)
            kwargs = {"beam_size": 1, "num_hypotheses": max(opts.best_of, 1), "sampling_topk": 0}
            kwargs["sampling_temperature"] = temperature
        else:
            kwargs = {"beam_size": opts.num_beams, "patience": 1.0, "sampling_topk": 1}
        results = self.model.generate(
            encoded,
            [prefix] * encoded.shape[0],
            length_penalty=1.0,
            max_length=ct2_whisper_max_length(len(prefix), opts.max_new_tokens),
            suppress_blank=True,
            suppress_tokens=self.suppress_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            **kwargs,
        )
        found = []
        for result in results:
            tokens = list(result.sequences_ids[0])
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # faster-whisper's recovery
            found.append(Decoded(tokens, float(avg_logprob), float(result.no_speech_prob)))
        return found
