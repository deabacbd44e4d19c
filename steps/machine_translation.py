"""Stage 2, machine translation: English -> Chinese with MarianMT (Helsinki-NLP/opus-mt-en-zh).

opus-mt-en-zh is multi-target (cmn_Hans, cmn_Hant, yue, ...): each source sentence starts with the target
token, `>>cmn_Hans<<` for Simplified Mandarin. Texts are split into sentences, all sentences of the batch are
translated together sorted by length (less padding), and regrouped per item: Marian's 512-position encoder
never sees a whole long recording at once.

Two backends share that path (splitting, target token, sentencepiece tokenization, length-sorted batching,
decoding to text) and differ only in how a batch of source texts becomes target token ids: `MarianTranslator`
(transformers) and `Ct2MarianTranslator` (a CTranslate2 Translator on a local conversion of the same snapshot).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from resources.weights import LocalModel, resolve_hf_model
from steps.base import ItemError, ModelInfo, Stage
from steps.ct2 import (
    COMPUTE_TYPES,
    ConvertedModel,
    check_compute_type,
    device_kwargs,
    ensure_converted,
    resolve_compute_type,
)
from steps.device import pick_device, pick_dtype
from steps.options import dtype_name, one_of, option, torch_device

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


@dataclass(frozen=True)
class MachineTranslationOptions:
    backend: str = option(
        "transformers", "transformers, or ctranslate2", pipeline=True, check=one_of("transformers", "ctranslate2")
    )
    model: str = option(
        "Helsinki-NLP/opus-mt-en-zh",
        "MarianMT id, local folder or registry: ref",
        model_ref="hf",
        revision="revision",
        cache_field="model_cache",
        pipeline=True,
    )
    revision: str | None = option(None, "hub revision (commit) to pin; None: the cached or newest one")
    model_cache: str | None = option(None, "Hugging Face hub cache folder; None: HF_HUB_CACHE", cache="hf")
    target_token: str = option(">>cmn_Hans<<", "opus-mt target-language token: Simplified Mandarin")
    device: str = option("auto", "auto (cuda when present), cpu, cuda ...", check=torch_device)
    dtype: str = option(
        "auto", "auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16", check=dtype_name
    )
    batch_size: int = option(16, "sentences translated together in one generate() call")
    num_beams: int = option(4, "beam width; 1 is greedy decoding", pipeline=True)
    max_new_tokens: int = option(256, "decode budget per sentence", fixture_cap=48)
    min_new_tokens: int = option(0, "minimum tokens per sentence (benchmarks: fixed decode lengths)")
    compute_type: str = option(
        "auto",
        "ctranslate2 backend only: auto (int8 on CPU, float16 on CUDA), float32, int8_float16 ... (steps.ct2)",
        check=one_of(*COMPUTE_TYPES),
    )
    ct2_cache: str | None = option(
        None, "where ctranslate2 conversions are cached; None: $S2ST_CT2_CACHE or ~/.cache/s2st/ct2"
    )


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
        self.check_target_token()
        self.model = MarianMTModel.from_pretrained(self.local.path, dtype=self.dtype).to(self.device).eval()

    def check_target_token(self) -> None:
        token = self.options.target_token
        if token and token not in self.tokenizer.get_vocab():
            raise ValueError(
                f"model {self.options.model!r} has no target-language token {token!r}; "
                f"set target_token to one it has, or to '' for a single-target model"
            )

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

    def translate_sentences(self, sentences: Sequence[str]) -> list[str]:
        opts = self.options
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        result = [""] * len(sentences)
        for start in range(0, len(order), opts.batch_size):
            chunk = order[start : start + opts.batch_size]
            ids = self.generate_ids([self.source_text(sentences[i]) for i in chunk])
            for i, text in zip(chunk, self.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                result[i] = text
        return result

    @torch.inference_mode()
    def generate_ids(self, texts: Sequence[str]) -> Any:
        """Target token ids per text (transformers: decoder start, pieces, </s>, padding)."""
        opts = self.options
        batch = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=512).to(
            self.device
        )
        return self.model.generate(
            **batch,
            num_beams=opts.num_beams,
            max_new_tokens=opts.max_new_tokens,
            min_new_tokens=opts.min_new_tokens or None,
        )


class Ct2MarianTranslator(MarianTranslator):
    """A CTranslate2 Translator on a local conversion of the same snapshot, batched beam search.

    Tokenization (the same MarianTokenizer, with `>>cmn_Hans<<` first and </s> last, truncated at 512), sentence
    splitting, length-sorted batching and decoding to text are inherited from MarianTranslator. The converter
    keeps final_logits_bias as the output bias, drops <pad> from the vocabulary (transformers starts the decoder
    from the pad id, whose embedding is zero, and never emits it: generation_config's bad_words_ids; CTranslate2
    starts from a zero embedding and cannot emit it), and renormalized log-probabilities are what both rank beams
    by (opus-mt's generation_config sets renormalize_logits).

    Why the budget is max_new_tokens - 1: opus-mt's generation_config sets forced_eos_token_id, so transformers
    forces </s> at the last of its max_new_tokens steps (ForcedEOSTokenLogitsProcessor, which overrides
    min_new_tokens). A capped transformers output is max_new_tokens - 1 pieces + </s>, and at that last step every
    beam gains log-prob 0, so beams are ranked on their first max_new_tokens - 1 pieces. CTranslate2 applies no
    generation_config: given max_decoding_length = max_new_tokens it emits one more piece, and with beams the
    extra piece's log-prob can reorder the finalists (the beam-2 divergence of the first attempt). Deciding
    max_new_tokens - 1 steps reproduces transformers token for token, greedy and beam (tests/test_ct2.py).

    Where hypotheses end at </s> before the budget (trained models), beam search can still differ: transformers
    divides a finished beam's score by its length counting </s> and stops by its early_stopping heuristic,
    CTranslate2 divides by the length without it and stops once num_beams hypotheses have finished.
    """

    def __init__(self, options: MachineTranslationOptions | None = None) -> None:
        super().__init__(options)
        self.converted: ConvertedModel | None = None

    def setup(self) -> None:
        import ctranslate2
        from transformers import GenerationConfig, MarianTokenizer

        opts = self.options
        self.device = pick_device(opts.device)
        self.compute_type = resolve_compute_type(opts.compute_type, self.device)
        check_compute_type(self.compute_type, self.device)  # before a conversion that could not be used
        self.local = resolve_hf_model(opts.model, opts.revision, cache_dir=opts.model_cache)
        self.converted = ensure_converted(self.local, self.compute_type, opts.ct2_cache)
        path = self.converted.path  # self-contained: the spm models, vocab and generation config are copied in
        self.tokenizer = MarianTokenizer.from_pretrained(path)
        self.check_target_token()
        generation = GenerationConfig.from_pretrained(path)
        self.forced_eos = generation.forced_eos_token_id is not None
        self.length_penalty = 1.0 if generation.length_penalty is None else float(generation.length_penalty)
        self.translator = ctranslate2.Translator(
            str(path),
            **device_kwargs(self.device),
            compute_type=self.compute_type,
            intra_threads=torch.get_num_threads(),  # the runner's thread budget for this replica
        )

    def models(self) -> list[ModelInfo]:
        assert self.local is not None and self.converted is not None
        return [
            ModelInfo("machine_translation", self.local.model_id, self.local.revision, str(self.local.path)),
            ModelInfo(
                f"machine_translation/ctranslate2-{self.compute_type}",
                self.local.model_id,
                self.converted.revision,
                str(self.converted.path),
            ),
        ]

    def generate_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Target piece ids per text (no decoder start, no </s>)."""
        opts = self.options
        steps = opts.max_new_tokens - (1 if self.forced_eos else 0)
        if steps < 1:  # transformers would emit </s> alone
            return [[] for _ in texts]
        sources = [
            self.tokenizer.convert_ids_to_tokens(ids)
            for ids in self.tokenizer(list(texts), truncation=True, max_length=512).input_ids
        ]
        results = self.translator.translate_batch(
            sources,
            beam_size=opts.num_beams,
            patience=1.0,
            length_penalty=self.length_penalty,
            max_decoding_length=steps,
            min_decoding_length=min(opts.min_new_tokens, steps),
            max_input_length=0,  # truncated above, at transformers' 512
            sampling_topk=1,
        )
        return [self.tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]
