"""Whisper's decoding safeguards, once for both backends: temperature fallback and the no-speech rule.

The rules are OpenAI's (whisper/transcribe.py) as faster-whisper implements them (WhisperModel.generate_with_fallback
and generate_segments), with the same defaults:
- a decode "fails" when its text's zlib compression ratio is above 2.4 (it repeats itself: the loops) or its
  average log-probability is below -1.0 (the model is unsure: invented text); a failed segment is decoded again
  at the next temperature (0.0, 0.2 ... 1.0; `best_of` samples each, the likeliest kept);
- a decode whose no-speech probability is above 0.6 while its log-probability is below -1.0 is silence: no
  fallback, and the segment yields no text;
- when every temperature fails, the likeliest decode among those that do not loop is kept (any, if all loop).

Why not call faster-whisper's own code: WhisperModel decodes one window at a time with its own feature extractor
and a decode budget CTranslate2 halves (it passes max_length = prompt + max_new_tokens); BatchedInferencePipeline
batches but has no fallback at all (it decodes at temperatures[0] only); and transformers' generate() measures the
compression ratio over token-id bytes (its docs advise 1.35, not 2.4) and averages log-probabilities differently,
so the same option values would mean different rules per backend. Here each backend supplies one batched decode
pass (`DecodePass`); the rules and the batching over every segment of every clip are shared, and
tests/test_real_whisper.py checks the figures against faster-whisper's own on the real model.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Decoded:
    """One decode of one segment. avg_logprob is OpenAI's: the log-probabilities of the text tokens and the end
    token, over (text tokens + 1)."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    text: str = ""
    temperature: float = 0.0
    compression_ratio: float = 0.0


@dataclass(frozen=True)
class FallbackRules:
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6


# A backend's decode pass: segment indices and a temperature -> one Decoded per index, in order (text unset).
DecodePass = Callable[[Sequence[int], float], list[Decoded]]


def temperatures(start: float, increment: float | None) -> tuple[float, ...]:
    """OpenAI's CLI rule: start, start + increment ... up to 1.0; no increment (None or 0): start alone."""
    if not increment or increment <= 0:
        return (start,)
    found, step = [], 0
    while start + step * increment <= 1.0 + 1e-6:
        found.append(round(start + step * increment, 6))
        step += 1
    return tuple(found) or (start,)


def compression_ratio(text: str) -> float:
    """zlib's ratio over the text's UTF-8 bytes (faster_whisper.transcribe.get_compression_ratio, OpenAI's)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def is_silence(decoded: Decoded, rules: FallbackRules) -> bool:
    """The no-speech rule: a confident no-speech token and an unsure decode."""
    return (
        rules.no_speech_threshold is not None
        and decoded.no_speech_prob > rules.no_speech_threshold
        and rules.logprob_threshold is not None
        and decoded.avg_logprob < rules.logprob_threshold
    )


def loops(decoded: Decoded, rules: FallbackRules) -> bool:
    threshold = rules.compression_ratio_threshold
    return threshold is not None and decoded.compression_ratio > threshold


def needs_fallback(decoded: Decoded, rules: FallbackRules) -> bool:
    unsure = rules.logprob_threshold is not None and decoded.avg_logprob < rules.logprob_threshold
    return (loops(decoded, rules) or unsure) and not is_silence(decoded, rules)


def decode_with_fallback(
    count: int, decode: DecodePass, to_text: Callable[[list[int]], str], rules: FallbackRules
) -> list[Decoded]:
    """Each of `count` segments decoded, the failing ones again at each next temperature, all pending segments of
    one temperature in one pass. Returns the decode each segment keeps (temperature: where it stopped)."""
    tried: list[list[Decoded]] = [[] for _ in range(count)]
    pending = list(range(count))
    for temperature in rules.temperatures:
        if not pending:
            break
        results = decode(pending, temperature)
        still = []
        for index, result in zip(pending, results, strict=True):
            text = to_text(result.tokens).strip()
            result = replace(result, text=text, temperature=temperature, compression_ratio=compression_ratio(text))
            tried[index].append(result)
            if needs_fallback(result, rules):
                still.append(index)
        pending = still
    kept = []
    for index, results in enumerate(tried):
        last = results[-1]
        if index in pending:  # every temperature failed: the likeliest that does not loop (any, if all do)
            best = max([r for r in results if not loops(r, rules)] or results, key=lambda r: r.avg_logprob)
            last = replace(best, temperature=last.temperature)
        kept.append(last)
    return kept


def skipped(decoded: Decoded, rules: FallbackRules) -> bool:
    """faster-whisper's generate_segments: a segment is dropped as no speech when the no-speech probability is
    above the threshold, unless its log-probability is high enough to trust the text anyway."""
    if rules.no_speech_threshold is None or decoded.no_speech_prob <= rules.no_speech_threshold:
        return False
    return not (rules.logprob_threshold is not None and decoded.avg_logprob > rules.logprob_threshold)
