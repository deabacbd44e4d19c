"""The metrics themselves, on strings and rows already in memory (no I/O): BLEU/chrF, CER/WER, latency."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from clearml_pipeline.figures import PERCENTILES, percentiles
from steps.results import ItemResult
from steps.stages import stage_names
from steps.zh_text import normalize_numbers

# metrics.json's latency keys, part of its contract: clearml_pipeline.figures' set less p95, which it never had.
LATENCY_KEYS = tuple(f"p{q}" for q in PERCENTILES)  # the one set (clearml_pipeline.figures)


# Chinese is written without spaces: the default 13a tokenizer sees a whole sentence as one "word", so BLEU
# against unsegmented Chinese is near zero whatever the quality. "char" (every character a token, Latin letters
# and digits too) is what SeamlessM4T's evaluation uses for cmn (seamless_communication cli/eval_utils
# compute_metrics.get_tokenizer), so our ASR-BLEU compares with its published figures; sacrebleu's "zh" keeps
# Latin words and numbers whole, which would make a name spelt "NASA" vs "美国宇航局" cost differently. chrF
# needs no tokenizer: it already counts character n-grams (spaces dropped).
ZH_TOKENIZE = "char"


def translation_scores(
    hyps: Sequence[str], refs: Sequence[str], tokenize: str | None = None, info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Corpus BLEU and chrF with the signatures that make them reproducible (tokenizer, smoothing, version).

    `tokenize`: sacrebleu's BLEU tokenizer (None: its default, 13a, for English); `info`: extra signature
    fields (how the texts were normalized, which ASR made the hypotheses)."""
    from sacrebleu.metrics import BLEU, CHRF

    if not hyps:  # sacrebleu raises on an empty corpus
        return {"bleu": None, "chrf": None, "bleu_signature": None, "chrf_signature": None}
    bleu, chrf = (BLEU() if tokenize is None else BLEU(tokenize=tokenize)), CHRF()
    scores = {
        "bleu": bleu.corpus_score(list(hyps), [list(refs)]).score,
        "chrf": chrf.corpus_score(list(hyps), [list(refs)]).score,
    }
    signatures = {}
    for name, metric in (("bleu", bleu), ("chrf", chrf)):
        signature = metric.get_signature()
        signature.info.update(info or {})
        signatures[f"{name}_signature"] = signature.format()
    return scores | signatures


def zh_scores(hyps: Sequence[str], refs: Sequence[str], info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Character-level BLEU (tokenize ZH_TOKENIZE) and chrF of Chinese hypotheses against Chinese references."""
    return translation_scores(hyps, refs, tokenize=ZH_TOKENIZE, info=info)


def edit_distance(hyp: Sequence[str], ref: Sequence[str]) -> int:
    """Levenshtein distance over tokens (characters or words): ten lines, no dependency for it."""
    previous = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        current = [i]
        for j, r in enumerate(ref, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
        previous = current
    return previous[-1]


@cache
def _t2s() -> Any:
    import opencc

    return opencc.OpenCC("t2s")


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")
ASR_NORMALIZATION = "nfkc+casefold+numbers+t2s+nopunct"  # the signature's `norm` field for ASR-BLEU


def _read_numbers(text: str) -> str:
    """Numbers read out as the TTS reads them (steps.zh_text.normalize_numbers), after NFKC and casefolding:
    "1,000" -> 一千, "50%" -> 百分之五十, "10" -> 十."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return normalize_numbers(_PERCENT.sub(lambda m: "百分之" + m.group(1), _THOUSANDS.sub("", text)))


def normalize_zh(text: str) -> str:
    """Chinese for CER: NFKC (full-width forms), casefold, numbers read out, traditional -> simplified, no
    punctuation or spaces.

    Whisper writes Mandarin in either script and writes numbers as digits, so the fold keeps both out of the
    error rate: the same on both sides, the way the TTS reads digits (steps.zh_text.normalize_numbers), so a
    zh_text "2024" spoken as 二千零二十四 and heard back as "2024" meets itself, and a spoken 一二三 heard as "1、2、3"
    scores 0. Digits Whisper runs together ("12345678910" for 一...十) are one number, read digit by digit.
    """
    text = _t2s().convert(_read_numbers(text))
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c)[0] not in "PZC")


def normalize_asr_zh(text: str) -> str:
    """Both sides of ASR-BLEU: NFKC, casefold, numbers read out (steps.zh_text), traditional -> simplified,
    punctuation dropped. Speech has no punctuation and Whisper writes numbers and script as it likes ("8点" or
    "八点", 這 or 这): the fold scores what was said, not how Whisper spelt it. The TTS reads digits the same way
    (steps.zh_text.normalize_numbers), so a reference's "300" and the speech's "三百" meet."""
    text = _t2s().convert(_read_numbers(text))
    kept = "".join(" " if unicodedata.category(c)[0] in "PZCS" else c for c in text)
    return " ".join(kept.split())


def cer(hyp: str, ref: str) -> float | None:
    """Character error rate after normalize_zh; None when the reference has no characters left."""
    return corpus_cer([hyp], [ref])


def corpus_cer(hyps: Sequence[str], refs: Sequence[str]) -> float | None:
    """Total edits / total reference characters (not the mean of per-item rates: long items weigh more)."""
    pairs = [(normalize_zh(h), normalize_zh(r)) for h, r in zip(hyps, refs, strict=True)]
    total = sum(len(r) for _, r in pairs)
    return sum(edit_distance(h, r) for h, r in pairs) / total if total else None


def cer_distribution(scores: Sequence[float]) -> dict[str, Any]:
    """How per-item CERs spread, beside the corpus CER: p50/p90/p95/p99 (clearml_pipeline.figures), the worst,
    and how many items are above 1 (more edits than reference characters: Latin or repeated gibberish)."""
    return {"items": len(scores), **percentiles(scores), "max": max(scores, default=None),
            "over_1": sum(score > 1.0 for score in scores)}


@cache
def _whisper_normalizer() -> Any:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()  # Whisper's multilingual one: lowercase, symbols -> spaces, accents kept


def normalize_words(text: str) -> list[str]:
    return _whisper_normalizer()(text).split()


def wer(hyp: str, ref: str) -> float | None:
    return corpus_wer([hyp], [ref])


def corpus_wer(hyps: Sequence[str], refs: Sequence[str]) -> float | None:
    pairs = [(normalize_words(h), normalize_words(r)) for h, r in zip(hyps, refs, strict=True)]
    total = sum(len(r) for _, r in pairs)
    return sum(edit_distance(h, r) for h, r in pairs) / total if total else None


Row = ItemResult | Mapping[str, Any]


def _timing(row: Row) -> tuple[bool, Mapping[str, float]]:
    """(finished, latency_s) of a row: an ItemResult, or the JSON object of one (a results.jsonl line)."""
    if isinstance(row, ItemResult):
        return row.ok, row.latency_s
    return row["status"] == "ok", row["latency_s"]


def stage_latencies(rows: Sequence[Row]) -> dict[str, list[float]]:
    """Latencies per stage over the rows that reached it; end to end over the rows that finished (as summary.json
    does: a row that failed early has a short total that says nothing about the pipeline)."""
    timings = [_timing(row) for row in rows]
    stages = stage_names()
    ends = ["total", *(["end_to_end"] if any("end_to_end" in latency for _, latency in timings) else [])]
    found: dict[str, list[float]] = {name: [] for name in (*stages, *ends)}
    for ok, latency in timings:
        for name, values in found.items():
            if name in latency and (name in stages or ok):
                values.append(latency[name])
    return found


def latency_percentiles(rows: Sequence[Row]) -> dict[str, dict[str, float | None]]:
    """p50/p90/p95/p99 per stage and end to end (None where no row has that stage)."""
    return {name: percentiles(values) for name, values in stage_latencies(rows).items()}
