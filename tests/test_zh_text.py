from __future__ import annotations

import pytest

from steps.machine_translation import split_english
from steps.zh_text import normalize_numbers, read_number, split_sentences


@pytest.mark.parametrize(
    ("digits", "spoken"),
    [
        ("0", "零"),
        ("7", "七"),
        ("10", "十"),
        ("12", "十二"),
        ("20", "二十"),
        ("105", "一百零五"),
        ("1005", "一千零五"),
        ("2024", "二千零二十四"),
        ("30020", "三万零二十"),
        ("110000", "十一万"),
        ("3.14", "三点一四"),
        ("007", "零零七"),
        ("123456789012", "一二三四五六七八九零一二"),
    ],
)
def test_numbers_are_read_out(digits: str, spoken: str) -> None:
    assert read_number(digits) == spoken


def test_normalize_numbers_inside_text() -> None:
    assert normalize_numbers("我有3只猫和12条鱼") == "我有三只猫和十二条鱼"


def test_split_sentences_prefers_sentence_then_clause_boundaries() -> None:
    text = "今天天气很好。我们去公园吧！" + "这是一个很长的句子，" * 8
    pieces = split_sentences(text, max_chars=30)
    assert pieces[:2] == ["今天天气很好。", "我们去公园吧！"]
    assert all(len(p) <= 30 for p in pieces)
    assert "".join(pieces) == text


def test_split_sentences_hard_cuts_text_without_punctuation_and_drops_empty_pieces() -> None:
    assert split_sentences("一" * 25, max_chars=10) == ["一" * 10, "一" * 10, "一" * 5]
    assert split_sentences("。。！", max_chars=10) == []


def test_english_sentences() -> None:
    assert split_english("Hello there. How are you? Fine!  ") == ["Hello there.", "How are you?", "Fine!"]
    assert split_english("   ") == []
