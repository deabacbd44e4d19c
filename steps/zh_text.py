"""Chinese text preparation for TTS: numbers read out, sentence splitting for Tacotron2.

Tacotron2's attention degrades on long inputs, so text is cut after sentence punctuation and, when a
sentence is still long, after clause punctuation; each piece is synthesized alone and joined with a pause.
"""

from __future__ import annotations

import re

SENTENCE_END = "。！？!?；;…\n"
CLAUSE_END = "，,、：:"
PUNCTUATION = set(SENTENCE_END + CLAUSE_END + "“”‘’\"'()（）《》〈〉【】[]{}—–-·.~～ \t\r")

_DIGITS = "零一二三四五六七八九"
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _read_integer(n: int) -> str:
    """0..99999999 as spoken Mandarin (一千零五, 十二, 三万零二十)."""
    if n == 0:
        return _DIGITS[0]
    if n >= 10_000:
        high, low = divmod(n, 10_000)
        text = _read_integer(high) + "万"
        if low:
            text += ("零" if low < 1000 else "") + _read_integer(low)
        return text
    units = ["", "十", "百", "千"]
    digits = [int(d) for d in str(n)]
    text = ""
    zero = False
    for position, digit in enumerate(digits):
        unit = units[len(digits) - position - 1]
        if digit == 0:
            zero = True
            continue
        if zero and text:
            text += "零"
        zero = False
        text += _DIGITS[digit] + unit
    return text[1:] if text.startswith("一十") else text


def read_number(token: str) -> str:
    """A digit string as spoken: integers under 10^8 with units, longer ones digit by digit, decimals with 点."""
    whole, _, fraction = token.partition(".")
    if len(whole) > 8 or (len(whole) > 1 and whole.startswith("0")):
        spoken = "".join(_DIGITS[int(d)] for d in whole)
    else:
        spoken = _read_integer(int(whole))
    if fraction:
        spoken += "点" + "".join(_DIGITS[int(d)] for d in fraction)
    return spoken


def normalize_numbers(text: str) -> str:
    return _NUMBER.sub(lambda m: read_number(m.group()), text)


def _cut_after(text: str, marks: str) -> list[str]:
    pieces: list[str] = []
    current = ""
    for char in text:
        current += char
        if char in marks:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def split_sentences(text: str, max_chars: int = 50) -> list[str]:
    """Cut `text` into pieces of at most `max_chars` characters, preferring sentence, then clause boundaries."""
    pieces: list[str] = []
    for sentence in _cut_after(text, SENTENCE_END):
        parts = [sentence] if len(sentence) <= max_chars else _cut_after(sentence, CLAUSE_END)
        for part in parts:
            pieces.extend(part[i : i + max_chars] for i in range(0, len(part), max_chars))
    return [p.strip() for p in pieces if p.strip(" \t\r\n" + SENTENCE_END + CLAUSE_END)]
