"""Stage 1 on transformers: WhisperForConditionalGeneration, batched, fp16 on GPU.

One decode pass is one generate() call at one temperature (the fallback loop is steps.whisper_decoding's) and one
teacher-forced decoder pass over what it generated, which gives OpenAI's figures exactly for greedy, beam and
sampled decodes alike: the no-speech probability (softmax of the raw logits at <|startoftranscript|>) and the
log-probability of each generated token after the suppressed tokens are masked (what the decoder chose from).
generate()'s own fallback is not used: its compression ratio is over token-id bytes (threshold ~1.35), not text.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from resources.weights import LocalModel, resolve_hf_model
from steps.base import ModelInfo
from steps.ct2 import CTRANSLATE2, ModelLayoutError, whisper_layout
from steps.device import pick_device, pick_dtype
from steps.whisper_decoding import Decoded
from steps.whisper_stage import SpeechTranslationOptions, WhisperStage

RESCORE_ROWS = 8  # rows per teacher-forced pass
LOGITS_BYTES = 8 << 20  # the rescoring pass makes its logits this many bytes at a time (see rescore)


def load_feature_extractor(folder: Any, n_mels: int) -> Any:
    """The folder's preprocessor_config.json, or Whisper's standard extractor with the model's mel count (a
    transformers 5 save_pretrained and faster-whisper folders may have no preprocessor_config.json)."""
    from transformers import WhisperFeatureExtractor

    if (folder / "preprocessor_config.json").is_file():
        return WhisperFeatureExtractor.from_pretrained(folder)
    return WhisperFeatureExtractor(feature_size=n_mels)


class WhisperTranslator(WhisperStage):
    """transformers WhisperForConditionalGeneration: a Whisper checkpoint by hub id or folder."""

    def __init__(self, options: SpeechTranslationOptions | None = None) -> None:
        super().__init__(options)
        self.local: LocalModel | None = None

    def setup(self) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast

        opts = self.options
        self.device = pick_device(opts.device)
        self.dtype = pick_dtype(opts.dtype, self.device)
        self.local = resolve_hf_model(opts.model, opts.revision, cache_dir=opts.model_cache)
        if whisper_layout(self.local.path) == CTRANSLATE2:
            raise ModelLayoutError(
                f"{opts.model} is a CTranslate2 (faster-whisper) model folder, which transformers cannot load: "
                f"run it with the ctranslate2 backend (--st-backend ctranslate2)"
            )
        config = json.loads((self.local.path / "config.json").read_text(encoding="utf-8"))
        self.feature_extractor = load_feature_extractor(self.local.path, int(config.get("num_mel_bins", 80)))
        tokenizer = WhisperTokenizerFast.from_pretrained(self.local.path)
        self.processor = WhisperProcessor(feature_extractor=self.feature_extractor, tokenizer=tokenizer)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.local.path, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.generation_config = self.model.generation_config
        self.check_budget(len(self.decoder_prefix()))
        # The logits the decoder chooses from: OpenAI's SuppressTokens / SuppressBlank filters, as generate() applies.
        vocab = self.model.config.vocab_size
        self.suppress = torch.zeros(vocab, dtype=torch.bool)
        self.suppress[[t for t in self.generation_config.suppress_tokens or [] if 0 <= t < vocab]] = True
        self.suppress_first = self.suppress.clone()
        self.suppress_first[[t for t in self.generation_config.begin_suppress_tokens or [] if 0 <= t < vocab]] = True

    def models(self) -> list[ModelInfo]:
        assert self.local is not None
        return [ModelInfo("speech_translation", self.local.model_id, self.local.revision, str(self.local.path))]

    def decoder_prefix(self) -> list[int]:
        config = self.generation_config
        return [
            config.decoder_start_token_id,
            config.lang_to_id[f"<|{self.options.language}|>"],
            config.task_to_id[self.options.task],
            config.no_timestamps_token_id,
        ]

    def to_text(self, tokens: list[int]) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

    @torch.inference_mode()
    def generate_ids(self, features: np.ndarray) -> Any:
        """Greedy or beam ids per row (transformers 5 returns them without the forced prefix)."""
        return self.generate(self.encode(features), 0.0)

    @torch.inference_mode()
    def encode(self, features: np.ndarray) -> torch.Tensor:
        return self.model.get_encoder()(torch.from_numpy(features).to(self.device, self.dtype)).last_hidden_state

    def generate(self, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        opts = self.options
        return self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            language=opts.language,
            task=opts.task,
            return_timestamps=False,
            num_beams=opts.num_beams,
            temperature=temperature,  # > 0: sampling from the whole distribution (no top-k), beams off
            max_new_tokens=opts.max_new_tokens,
            min_new_tokens=opts.min_new_tokens or None,
            # Beam scores over the tokens that may be chosen: log-softmax after suppress_tokens, as OpenAI's
            # reference decoder, CTranslate2 and faster-whisper do. transformers' default scores beams with the
            # full-vocabulary log-probabilities (suppressed mass included), which ranks beams differently; greedy
            # decoding is unaffected (argmax does not change).
            renormalize_logits=True,
        )

    def select(self, encoded: torch.Tensor, features: np.ndarray, indices: list[int]) -> torch.Tensor:
        return encoded[indices]

    @torch.inference_mode()
    def decode_encoded(self, hidden: torch.Tensor, temperature: float) -> list[Decoded]:
        copies = max(self.options.best_of, 1) if temperature > 0 else 1
        hidden = hidden.repeat_interleave(copies, dim=0) if copies > 1 else hidden
        sequences = self.generate(hidden, temperature)
        decoded = [
            self.rescore(hidden[i : i + RESCORE_ROWS], sequences[i : i + RESCORE_ROWS])
            for i in range(0, len(sequences), RESCORE_ROWS)
        ]
        rows = [row for group in decoded for row in group]
        # best_of samples per segment: the likeliest (OpenAI ranks samples by their average log-probability).
        return [max(rows[i : i + copies], key=lambda d: d.avg_logprob) for i in range(0, len(rows), copies)]

    def rescore(self, hidden: torch.Tensor, sequences: torch.Tensor) -> list[Decoded]:
        """No-speech probability and OpenAI's average log-probability of each generated row.

        One teacher-forced decoder pass gives the hidden states; the logits are made from them a few positions at
        a time (`LOGITS_BYTES`), each position's log-probability as logit - logsumexp. Whole, they were rows x
        length x 51865 floats: 53 MB at 8 rows of 32 tokens, three such tensors per pass, each above glibc's
        largest mmap threshold (32 MB), so every batch mapped, page-faulted and zeroed them afresh (40,000 page
        faults per batch of 8; in the streaming bench, with other stages beside it, 1.5-1.9 CPU-s per batch
        against 1.0 alone). Real Whisper decodes run to 448 tokens: 93 MB of logits per row."""
        eot = self.generation_config.eos_token_id
        prefix = torch.tensor(self.decoder_prefix(), device=hidden.device).expand(len(sequences), -1)
        inputs = torch.cat([prefix, sequences[:, :-1].to(hidden.device)], dim=1)
        states = self.model.get_decoder()(
            input_ids=inputs, encoder_hidden_states=hidden, use_cache=False
        ).last_hidden_state
        no_speech = self.logits(states[:, :1])[:, 0].softmax(-1)[:, self.generation_config.no_timestamps_token_id - 1]
        targets = sequences.cpu()
        first = prefix.shape[1] - 1  # step k (position first + k) predicts sequences[:, k]
        span = max(1, LOGITS_BYTES // (4 * self.model.config.vocab_size * len(sequences)))
        logprobs = torch.empty(targets.shape, dtype=torch.float32)
        for start in range(0, targets.size(1), span):
            steps = self.logits(states[:, first + start : first + start + span])
            steps[:, :, self.suppress] = float("-inf")
            if start == 0:
                steps[:, 0, self.suppress_first] = float("-inf")
            chosen = targets[:, start : start + steps.size(1)]
            picked = steps.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
            logprobs[:, start : start + steps.size(1)] = picked - steps.logsumexp(-1)
        found = []
        for row, ids in enumerate(sequences.tolist()):
            text = ids[: ids.index(eot)] if eot in ids else ids
            scored = len(text) + (1 if eot in ids else 0)  # the end token's log-probability counts (OpenAI)
            found.append(Decoded(text, float(logprobs[row, :scored].sum()) / (len(text) + 1), float(no_speech[row])))
        return found

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """The output projection of decoder states (rows, positions, d): float32 logits on the CPU."""
        return self.model.proj_out(states).float().cpu()
