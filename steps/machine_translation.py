"""Stage 2, machine translation: English -> Chinese with MarianMT (Helsinki-NLP/opus-mt-en-zh).

opus-mt-en-zh is multi-target (cmn_Hans, cmn_Hant, yue, ...): each source sentence starts with the target
token, `>>cmn_Hans<<` for Simplified Mandarin. Texts are split into sentences, all sentences of the batch are
translated together sorted by length (less padding), and regrouped per item: Marian's 512-position encoder
never sees a whole long recording at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from registry.hub import LocalModel, resolve_hf_model
from steps.base import ItemError, ModelInfo, Stage
from steps.device import pick_device, pick_dtype

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


@dataclass
class MachineTranslationOptions:
    backend: str = "transformers"
    model: str = "Helsinki-NLP/opus-mt-en-zh"
    revision: str | None = None
    model_cache: str | None = None  # Hugging Face hub cache dir; None: HF_HUB_CACHE
    target_token: str = ">>cmn_Hans<<"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    num_beams: int = 4
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # benchmarks: fixed decode length (see speech_translation)


def split_english(text: str) -> list[str]:
    """Sentences of `text` (split after . ! ? ;), empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


class MarianTranslator(Stage[str, str]):
    """transformers MarianMTModel, batched beam search."""

    name = "machine_translation"

    def __init__(self, options: MachineTranslationOptions | None = None) -> None:
        super().__init__()
        self.options = options or MachineTranslationOptions()
        self.local: LocalModel | None = None

    def setup(self) -> None:
        from transformers import MarianMTModel, MarianTokenizer

        opts = self.options
        self.device = pick_device(opts.device)
        self.dtype = pick_dtype(opts.dtype, self.device)
        self.local = resolve_hf_model(opts.model, opts.revision, cache_dir=opts.model_cache)
        self.tokenizer = MarianTokenizer.from_pretrained(self.local.path)
        if opts.target_token and opts.target_token not in self.tokenizer.get_vocab():
            raise ValueError(
                f"model {opts.model!r} has no target-language token {opts.target_token!r}; "
                f"set target_token to one it has, or to '' for a single-target model"
            )
        self.model = MarianMTModel.from_pretrained(self.local.path, dtype=self.dtype).to(self.device).eval()

    def models(self) -> list[ModelInfo]:
        assert self.local is not None
        return [ModelInfo("machine_translation", self.local.model_id, self.local.revision, str(self.local.path))]

    def source_text(self, sentence: str) -> str:
        token = self.options.target_token
        return f"{token} {sentence}" if token else sentence

    def process(self, inputs: Sequence[str]) -> list[str | ItemError]:
        sentences: list[str] = []
        owners: list[int] = []
        for index, text in enumerate(inputs):
            for sentence in split_english(text):
                sentences.append(sentence)
                owners.append(index)
        translated = self.translate_sentences(sentences)
        out = [""] * len(inputs)
        for owner, zh in zip(owners, translated, strict=True):
            out[owner] += zh.strip()
        return list(out)

    @torch.inference_mode()
    def translate_sentences(self, sentences: Sequence[str]) -> list[str]:
        opts = self.options
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        result = [""] * len(sentences)
        for start in range(0, len(order), opts.batch_size):
            chunk = order[start : start + opts.batch_size]
            batch = self.tokenizer(
                [self.source_text(sentences[i]) for i in chunk],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=512,
            ).to(self.device)
            ids = self.model.generate(
                **batch,
                num_beams=opts.num_beams,
                max_new_tokens=opts.max_new_tokens,
                min_new_tokens=opts.min_new_tokens or None,
            )
            for i, text in zip(chunk, self.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                result[i] = text
        return result
