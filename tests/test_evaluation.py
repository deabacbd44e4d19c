"""clearml_pipeline.evaluation: metric functions on hand-computed cases, and evaluate_run on a fixture run.

Fixture models have random weights: their BLEU/CER values are noise, so on the fixture run only structure,
accounting and consistency are asserted; the metric values themselves are checked on hand-made strings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from clearml_pipeline.evaluation import (
    QUALITY_KEYS,
    ZH_TOKENIZE,
    EvaluationOptions,
    Transcriber,
    add_evaluate_arguments,
    cer,
    corpus_cer,
    corpus_wer,
    edit_distance,
    evaluate_command,
    evaluate_run,
    format_report,
    format_table,
    latency_percentiles,
    normalize_asr_zh,
    normalize_zh,
    translation_scores,
    wer,
    zh_scores,
)
from clearml_pipeline.evaluation.quality import quality_summary, score_asr_translation, score_zh_translation
from data_prep.manifest import ManifestRow, write_manifest
from steps.results import ItemResult, read_results
from tests.speech import SPANISH_SENTENCES, speak, tone

REFERENCE_EN = "Hello, how are you? The weather is nice today."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_fixture_run(out: Path, inputs: Path, batch_size: int = 4) -> Path:
    """Run the pipeline in this process (the inprocess runtime) with fixture models over `inputs`; returns `out`."""
    from clearml_pipeline.inputs import discover_inputs
    from clearml_pipeline.runner import InProcessRuntime
    from tests.configs import fixture_config

    config = fixture_config(
        {
            "runner": {"batch_size": batch_size},
            "speech_translation": {"max_new_tokens": 8},
            "machine_translation": {"max_new_tokens": 8},
            "speech_synthesis": {"maxlenratio": 4.0},
        }
    )
    summary = InProcessRuntime(config).run(discover_inputs(inputs), out)
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    return out


def manifest_row(item_id: str, sentence: str | None, reference_en: str | None) -> ManifestRow:
    return ManifestRow(item_id, f"audio/{item_id}.wav", 3.0, sentence, "test", f"{item_id}.mp3", reference_en)


# ---------------------------------------------------------------------------------------------- metrics


def test_bleu_and_chrf_match_hand_computed_corpus_scores() -> None:
    scores = translation_scores(["a b c d e", "x y z w"], ["a b c d f", "x y z w v u"])
    # Corpus n-gram matches: 1-grams 8/9, 2-grams 6/7, 3-grams 4/5, 4-grams 2/3; hyp 9 words, refs 11: BP e^(1-11/9).
    bleu = math.exp(1 - 11 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert scores["bleu"] == pytest.approx(100 * bleu)
    # chrF (beta 2, char orders 1..6, spaces dropped): "abcd" vs "abce" matches 3/4, 2/3, 1/2, 0/1 at orders 1..4
    # (orders 5, 6 have no n-grams), precision = recall = their mean, so F = that mean.
    assert translation_scores(["abcd"], ["abce"])["chrf"] == pytest.approx(100 * (3 / 4 + 2 / 3 + 1 / 2 + 0) / 4)
    version = metadata.version("sacrebleu")
    assert scores["bleu_signature"] == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{version}"
    assert scores["chrf_signature"] == f"nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:{version}"
    assert translation_scores([], []) == {"bleu": None, "chrf": None, "bleu_signature": None, "chrf_signature": None}


def test_cer_ignores_punctuation_spaces_script_and_width() -> None:
    assert normalize_zh("今天 天氣，很好！ＯＫ") == "今天天气很好ok"
    assert cer("今天天氣很好!", "今天 天气，很好。") == 0.0
    assert cer("今天天氣不好", "今天天气很好。") == pytest.approx(1 / 6)  # one substitution in six characters
    # Corpus CER is total edits over total reference characters: (1 + 1) / (6 + 3), not the mean of 1/6 and 1/3.
    assert corpus_cer(["今天天气不好", "你好"], ["今天天气很好", "你好吗"]) == pytest.approx(2 / 9)
    # Numbers are read out on both sides as the TTS reads them: Whisper's digits meet the spoken numerals.
    assert cer("2024年", "二千零二十四年") == 0.0 and cer("二千零二十四年", "2024年") == 0.0
    assert normalize_zh("１０%，3.5") == "百分之十三点五"  # full-width digits, percent, decimals
    assert cer("什么", "。，!") is None  # nothing to score against


def test_spoken_numerals_heard_back_as_digits_are_not_errors() -> None:
    """Whisper writes 一二三四五六七八九十 in digits; the TTS said characters. Both sides read numbers out."""
    spoken = "一二三四五六七八九十"
    assert cer("1、2、3、4、5、6、7、8、9、10", spoken) == 0.0
    assert cer("1 2 3 4 5 6 7 8 9 10。", spoken) == 0.0
    # Digits run together are one number, read digit by digit (as the TTS would read them): 十 vs 一零.
    assert cer("12345678910", spoken) == pytest.approx(2 / 10)
    assert cer("今天是2024年5月3日", "今天是二千零二十四年五月三日") == 0.0


def test_intelligibility_reports_the_corpus_cer_and_the_per_item_spread(tmp_path: Path) -> None:
    """Corpus CER stays total edits / total reference characters; a gibberish item above 1 is in the spread."""
    from clearml_pipeline.evaluation.scoring import score_intelligibility

    texts = {"a": "一二三四五六七八九十", "b": "今天天气很好", "c": "你好", "d": "谢谢"}
    heard = {"a": "1、2、3、4、5、6、7、8、9、10", "b": "今天天氣不好", "c": "hello hello world", "d": "谢谢"}
    (tmp_path / "audio").mkdir()
    rows = []
    for key, text in texts.items():
        (tmp_path / "audio" / f"{key}.wav").write_bytes(b"")
        rows.append(ItemResult(key, f"{key}.wav", zh_text=text, zh_audio=f"audio/{key}.wav"))
    rows.append(ItemResult("e", "e.wav", status="error", stage="speech_translation", error="boom"))
    items: list[dict[str, Any]] = [{"id": row.id} for row in rows]

    def asr(paths: list[Path], language: str, task: str, desc: str) -> list[tuple[str | None, str]]:
        assert (language, task) == ("zh", "transcribe")
        return [(heard[path.stem], "") for path in paths]

    block = score_intelligibility(tmp_path, rows, items, EvaluationOptions(), asr)  # type: ignore[arg-type]
    per_item = {item["id"]: item["cer"] for item in items}
    gibberish = len("helloHelloWorld")  # 15 letters against 2 characters: 15 edits
    assert per_item == {"a": 0.0, "b": pytest.approx(1 / 6), "c": pytest.approx(gibberish / 2), "d": 0.0, "e": None}
    # Total edits over total reference characters (10 + 6 + 2 + 2), not the mean of the per-item rates.
    assert block["cer"] == pytest.approx((0 + 1 + gibberish + 0) / 20)
    assert block["cer"] == pytest.approx(corpus_cer(list(heard.values()), list(texts.values())))
    spread = block["cer_per_item"]
    assert spread["items"] == 4 and spread["over_1"] == 1 and spread["max"] == pytest.approx(gibberish / 2)
    assert spread["p50"] == pytest.approx(1 / 12)  # the median of 0, 0, 1/6, 7.5
    assert set(spread) == {"items", "p50", "p90", "p95", "p99", "max", "over_1"}
    assert block["scored_items"] == 4 and block["not_scored"] == {"failed at speech_translation": 1}
    metrics = {"counts": {"items": 5}, "intelligibility": block, "spanish_wer": {**block, "wer": None},
               "translation": {**block, "bleu": None, "chrf": None},
               "throughput": {"items_per_s": None, "real_time_factor": None}, "latency_s": {}}  # fmt: skip
    table = format_table(metrics)
    assert "| CER per item: p50 / p90 / max | 8.3% / " in table and "750.0%; 1 of 4 item(s) over 100% |" in table


def test_wer_uses_whispers_normalizer() -> None:
    assert wer("¡Hola! ¿Cómo estás?", "hola, cómo estás") == 0.0
    assert wer("Hola como está", "Hola, cómo estás") == pytest.approx(2 / 3)  # accents are kept: two substitutions
    assert corpus_wer(["Hola como está", "el gato duerme"], ["hola cómo estás", "El gato duerme en casa."]) == 0.5
    assert edit_distance("kitten", "sitting") == 3


def test_latency_percentiles_per_stage_and_end_to_end_over_finished_items() -> None:
    rows = [
        {"status": "ok", "latency_s": {"input": 0.1, "speech_translation": float(v), "total": float(v)}}
        for v in (1, 2, 3, 4, 5)
    ]
    rows.append({"status": "error", "latency_s": {"input": 0.1, "speech_translation": 100.0, "total": 100.1}})
    found = latency_percentiles(rows)
    # numpy's linear interpolation over 1..5: rank 0.9 * 4 = 3.6 -> 4.6; 0.95 * 4 = 3.8 -> 4.8; 0.99 * 4 -> 4.96.
    # The failed row is left out.
    assert found["total"] == pytest.approx({"p50": 3.0, "p90": 4.6, "p95": 4.8, "p99": 4.96})
    assert found["speech_translation"]["p50"] == pytest.approx(3.5)  # a stage counts every row that reached it
    assert found["machine_translation"] == {"p50": None, "p90": None, "p95": None, "p99": None}
    assert "end_to_end" not in found


def test_fixture_runs_cap_the_default_decode_length_and_find_the_runs_whisper(fixture_caches: Any) -> None:
    config = {"runner": {"models": "fixtures"}, "speech_translation": {"model_cache": str(fixture_caches.hf_hub_cache)}}
    capped = Transcriber(EvaluationOptions(), config).options
    assert capped.max_new_tokens == 32 and capped.model_cache == str(fixture_caches.hf_hub_cache)  # as `run` does
    assert Transcriber(EvaluationOptions(asr_max_new_tokens=12), config).options.max_new_tokens == 12
    hub = Transcriber(EvaluationOptions(), {"runner": {"models": "hub"}, "speech_translation": {"model_cache": None}})
    assert hub.options.max_new_tokens == 440 and hub.options.model_cache is None
    assert (hub.options.language, hub.options.task) == ("zh", "transcribe")


def test_the_fixture_whisper_knows_chinese_transcription(fixture_caches: Any) -> None:
    stage = Transcriber(EvaluationOptions(asr_model_cache=str(fixture_caches.hf_hub_cache)), {}).load()
    tokens = stage.processor.tokenizer.convert_ids_to_tokens(stage.decoder_prefix())
    assert tokens == ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"]


# ---------------------------------------------------------------------------------------------- Mandarin


def test_char_bleu_and_chrf_of_chinese_match_hand_computed_scores() -> None:
    perfect = zh_scores(["今天天气很好。"], ["今天天气很好。"])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    partial = zh_scores(["今天天气很好"], ["今天天气不好"])
    # Characters as tokens: 1..4-gram matches 5/6, 3/5, 2/4, 1/3; equal lengths (BP 1).
    assert partial["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)  # 53.73
    # chrF: P = R at every order (equal lengths), orders 1..6 match 5/6, 3/5, 2/4, 1/3, 0/2, 0/1: F = their mean.
    assert partial["chrf"] == pytest.approx(100 * (5 / 6 + 3 / 5 + 2 / 4 + 1 / 3) / 6)  # 37.78
    assert "tok:char" in partial["bleu_signature"] and partial["chrf_signature"].startswith("nrefs:1|")


def test_the_char_tokenizer_is_the_choice_and_13a_would_score_chinese_zero() -> None:
    assert ZH_TOKENIZE == "char"
    # 13a splits on spaces and punctuation: an unsegmented Chinese sentence is one token, so one wrong character
    # makes the whole sentence a miss.
    assert translation_scores(["今天天气很好"], ["今天天气不好"])["bleu"] == pytest.approx(0.0)
    # char (unlike sacrebleu's "zh") splits Latin words too: a one-letter slip costs one character, not a word.
    # 1..4-gram matches 7/8, 5/7, 3/6, 2/5.
    assert zh_scores(["他在NASB工作"], ["他在NASA工作"])["bleu"] == pytest.approx(100 * 0.125**0.25)  # 59.46


def test_asr_normalization_folds_script_numbers_punctuation_and_case() -> None:
    assert normalize_asr_zh("這座城市有300個公園。") == "这座城市有三百个公园"
    assert normalize_asr_zh("佔2,000公頃的50%！") == "占二千公顷的百分之五十"
    assert normalize_asr_zh("ＮＡＳＡ，3.5公里") == "nasa 三点五公里"  # full-width forms, decimals
    assert normalize_asr_zh(" 。！") == ""


def _item(row: ItemResult, asr_zh: str | None, reason: str | None) -> dict[str, Any]:
    return {"id": row.id, "asr_zh": asr_zh, "intelligibility_reason": reason}


def test_zh_and_asr_bleu_score_every_item_or_say_why() -> None:
    rows = [
        ItemResult("a", "a.wav", zh_text="这座城市有300个公园。", zh_audio="audio/a.wav"),
        ItemResult("b", "b.wav", zh_text="今天天气很好", zh_audio="audio/b.wav"),
        ItemResult("c", "c.wav", no_speech=True, en_text="", zh_text=""),
        ItemResult("d", "d.wav", status="error", stage="speech_translation", error="boom"),
        ItemResult("e", "e.wav", zh_text="多余", zh_audio="audio/e.wav"),  # no reference_zh
        ItemResult("f", "f.wav", zh_text="不在", zh_audio="audio/f.wav"),  # not in the manifest
        ItemResult("g", "g.wav", zh_text="失败", zh_audio="audio/g.wav"),  # Whisper failed on its audio
    ]
    refs = {
        "a": ManifestRow("a", "audio/a.wav", 1.0, "x", "test", "a.wav", reference_zh="这座城市有300个公园。"),
        "b": ManifestRow("b", "audio/b.wav", 1.0, "x", "test", "b.wav", reference_zh="今天天气不好"),
        "c": ManifestRow("c", "audio/c.wav", 1.0, "x", "test", "c.wav", reference_zh="安静"),
        "d": ManifestRow("d", "audio/d.wav", 1.0, "x", "test", "d.wav", reference_zh="失败了"),
        "e": ManifestRow("e", "audio/e.wav", 1.0, "x", "dev", "e.wav"),
        "g": ManifestRow("g", "audio/g.wav", 1.0, "x", "test", "g.wav", reference_zh="失败"),
    }
    heard = {"a": "這座城市有三百個公園", "b": "今天天氣很好", "e": "多余", "f": "不在", "g": None}
    items = [_item(r, heard.get(r.id), "failed at speech_translation" if r.status == "error" else None) for r in rows]
    items[2]["intelligibility_reason"] = "no speech in input"
    items[6]["intelligibility_reason"] = "ASR failed"

    zh = score_zh_translation(rows, refs, items, has_manifest=True)
    assert {i["id"]: i["zh_translation_reason"] for i in items} == {
        "a": None, "b": None, "c": None, "d": "failed at speech_translation",
        "e": "no reference_zh in manifest", "f": "not in manifest", "g": None,
    }  # fmt: skip
    assert zh["scored_items"] == 4 and zh["reason"] is None
    expected = zh_scores(
        ["这座城市有300个公园。", "今天天气很好", "", "失败"], ["这座城市有300个公园。", "今天天气不好", "安静", "失败"]
    )
    assert zh["bleu"] == pytest.approx(expected["bleu"]) and zh["chrf"] == pytest.approx(expected["chrf"])

    asr = {"model_id": "openai/whisper-large", "num_beams": 1, "temperature": 0.0}
    block = score_asr_translation(rows, refs, items, True, asr)
    assert {i["id"]: i["asr_translation_reason"] for i in items} == {
        "a": None, "b": None, "c": None, "d": "failed at speech_translation",
        "e": "no reference_zh in manifest", "f": "not in manifest", "g": "ASR failed",
    }  # fmt: skip
    # After folding, item a is a perfect match (三百 = 300, traditional = simplified) and b is the partial case
    # above; c (silence in, nothing out) is scored as an empty transcript against its reference.
    assert items[0]["asr_zh_normalized"] == normalize_asr_zh(refs["a"].reference_zh or "")
    hyps = ["这座城市有三百个公园", "今天天气很好", ""]
    golds = ["这座城市有三百个公园", "今天天气不好", "安静"]
    assert block["bleu"] == pytest.approx(zh_scores(hyps, golds)["bleu"])
    assert block["scored_items"] == 3 and block["not_scored"] == {
        "failed at speech_translation": 1, "no reference_zh in manifest": 1, "not in manifest": 1, "ASR failed": 1
    }  # fmt: skip
    assert "asr:openai/whisper-large" in block["bleu_signature"] and "tok:char" in block["bleu_signature"]
    perfect = score_asr_translation(rows[:1], refs, items[:1], True, asr)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)

    en = {"bleu": 1.0, "chrf": 2.0, "bleu_signature": "s", "chrf_signature": "t", "scored_items": 2}
    metrics = {"counts": {"items": 7}, "zh_translation": zh, "asr_translation": block, "translation": en,
               "intelligibility": {"cer": 0.5, "scored_items": 5}}  # fmt: skip
    quality = quality_summary(metrics, refs, None)
    assert quality["split"] == "dev,test" and quality["dataset"] is None and quality["items"] == 7
    assert quality["zh_bleu"] == zh["bleu"] and quality["asr_chrf"] == block["chrf"] and quality["en_bleu"] == 1.0
    assert quality["signatures"]["asr_bleu"] == block["bleu_signature"] and quality["signatures"]["cer"] is None


def test_without_a_manifest_mandarin_metrics_are_null_with_a_reason() -> None:
    rows = [ItemResult("a", "a.wav", zh_text="你好")]
    items = [_item(rows[0], "你好", None)]
    zh = score_zh_translation(rows, {}, items, has_manifest=False)
    assert zh["bleu"] is None and zh["reason"] == "no manifest given (--manifest)"
    assert zh["not_scored"] == {"no manifest": 1} and zh["bleu_signature"] is None


# ---------------------------------------------------------------------------------------------- a fixture run


@pytest.fixture(scope="module")
def run(fixture_caches: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    inputs = tmp_path_factory.mktemp("inputs")
    speak(SPANISH_SENTENCES[0], inputs / "a.wav")
    speak(SPANISH_SENTENCES[1], inputs / "b.wav")
    tone(inputs / "c_silence.wav", 1.0)
    (inputs / "d_empty.wav").write_bytes(b"")
    out = make_fixture_run(tmp_path_factory.mktemp("run"), inputs)
    pristine = tmp_path_factory.mktemp("pristine") / "run"
    shutil.copytree(out, pristine)  # before evaluation: other tests evaluate copies of it
    manifest = tmp_path_factory.mktemp("dataset") / "manifest.jsonl"
    write_manifest(
        manifest,
        [
            manifest_row("a", SPANISH_SENTENCES[0], REFERENCE_EN),
            manifest_row("b", SPANISH_SENTENCES[1], None),  # a row without a reference
            manifest_row("d_empty", "Nada.", "Nothing."),
            manifest_row("z_not_run", "Otra.", "Another."),  # in the dataset, not in this run
        ],
    )
    metrics = evaluate_run(out, manifest, EvaluationOptions(spanish_wer=True, asr_max_new_tokens=8))
    return {"out": out, "pristine": pristine, "manifest": manifest, "metrics": metrics}


def test_metrics_json_has_the_stable_keys(run: dict[str, Any]) -> None:
    metrics = json.loads((run["out"] / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == run["metrics"]
    for key in ("translation", "intelligibility", "spanish_wer", "latency_s", "throughput", "counts", "dataset"):
        assert key in metrics
    assert set(metrics["translation"]) == {
        "bleu", "chrf", "bleu_signature", "chrf_signature", "scored_items", "not_scored", "reason"
    }  # fmt: skip
    assert set(metrics["latency_s"]) == {
        "input",
        "speech_translation",
        "machine_translation",
        "speech_synthesis",
        "total",
    }
    assert all(set(q) == {"p50", "p90", "p95", "p99"} for q in metrics["latency_s"].values())
    assert metrics["counts"] == {"items": 4, "ok": 3, "error": 1, "no_speech": 1, "errors_by_stage": {"input": 1}}
    assert metrics["dataset"]["matched_items"] == 3 and metrics["dataset"]["manifest_rows"] == 4
    assert metrics["fixture_models"] is True and metrics["asr"]["model_id"] == "openai/whisper-large"
    assert metrics["asr"]["max_new_tokens"] == 8
    spread = metrics["intelligibility"]["cer_per_item"]  # beside the corpus CER: how the per-item rates spread
    scored = [item["cer"] for item in metrics["items"] if item["cer"] is not None]
    assert spread["items"] == len(scored) == metrics["intelligibility"]["scored_items"]
    assert spread["max"] == max(scored) and spread["over_1"] == sum(c > 1 for c in scored)
    assert {key for key, *_ in QUALITY_KEYS} <= set(metrics["quality"])
    assert metrics["quality"]["zh_bleu"] is None and metrics["zh_translation"]["not_scored"] == {
        "no reference_zh in manifest": 2, "not in manifest": 1, "failed at input": 1
    }  # fmt: skip


def test_every_item_is_scored_or_has_a_reason(run: dict[str, Any]) -> None:
    metrics = run["metrics"]
    reasons = {
        key: {item["id"]: item[f"{key}_reason"] for item in metrics["items"]}
        for key in ("translation", "intelligibility", "spanish_wer")
    }
    assert reasons["translation"] == {
        "a": None,
        "b": "no reference_en in manifest",
        "c_silence": "not in manifest",
        "d_empty": "failed at input",
    }
    assert reasons["intelligibility"] == {
        "a": None,
        "b": None,
        "c_silence": "no speech in input",
        "d_empty": "failed at input",
    }
    assert reasons["spanish_wer"] == {
        "a": None,
        "b": None,
        "c_silence": "not in manifest",
        "d_empty": "failed at input",
    }
    for key, expected in reasons.items():
        block = metrics[key]
        assert block["scored_items"] == sum(r is None for r in expected.values())
        assert block["scored_items"] + sum(block["not_scored"].values()) == metrics["counts"]["items"]
        assert block["reason"] is None


def test_scores_are_consistent_with_the_items_they_scored(run: dict[str, Any]) -> None:
    """Random weights make the values noise: check they are what the metric functions give for these items."""
    metrics = run["metrics"]
    items = {item["id"]: item for item in metrics["items"]}
    assert metrics["translation"]["bleu"] == pytest.approx(
        translation_scores([items["a"]["en_text"]], [REFERENCE_EN])["bleu"]
    )
    assert 0 <= metrics["translation"]["chrf"] <= 100
    scored = [items["a"], items["b"]]
    assert all(isinstance(i["asr_zh"], str) and i["cer"] >= 0 for i in scored)
    rows = {r["id"]: r for r in read_results(run["out"] / "results.jsonl")}
    # The CER reference is zh_text less the characters the TTS reported it could not say.
    refs = ["".join(c for c in rows[i["id"]]["zh_text"] if c not in rows[i["id"]]["unsayable"]) for i in scored]
    assert metrics["intelligibility"]["cer"] == pytest.approx(corpus_cer([i["asr_zh"] for i in scored], refs))
    assert metrics["spanish_wer"]["wer"] == pytest.approx(
        corpus_wer([i["asr_es"] for i in scored], list(SPANISH_SENTENCES[:2]))
    )
    assert metrics["throughput"]["items_per_s"] > 0 and metrics["throughput"]["audio_seconds"] > 0


def test_report_md_says_what_was_scored_and_warns_about_fixtures(run: dict[str, Any]) -> None:
    report = (run["out"] / "report.md").read_text(encoding="utf-8")
    assert "WARNING: this run used fixture models" in report
    assert run["metrics"]["translation"]["bleu_signature"] in report
    assert run["metrics"]["translation"]["chrf_signature"] in report
    assert "| BLEU (English vs reference_en) | " in report and "1/4" in report
    assert "- failed at input: `d_empty`" in report and "- no reference_en in manifest: `b`" in report
    assert "| CER per item: p50 / p90 / max | " in report and "numbers read out as the TTS reads them" in report
    quiet = format_report(run["metrics"] | {"fixture_models": False})
    assert "WARNING" not in quiet


def test_plots_are_png_files(run: dict[str, Any]) -> None:
    plots = run["metrics"]["plots"]
    assert plots == ["plots/latency_histogram.png", "plots/cer_vs_duration.png"]
    for plot in plots:
        path = run["out"] / plot
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 100 and width > 100


def test_without_manifest_summary_or_audio_metrics_are_null_with_reasons(run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(run["pristine"], out)
    (out / "summary.json").unlink()
    shutil.rmtree(out / "audio")
    metrics = evaluate_run(out, None, EvaluationOptions(plots=False))
    assert metrics["translation"]["bleu"] is None and metrics["translation"]["chrf"] is None
    assert metrics["translation"]["reason"] == "no manifest given (--manifest)"
    assert metrics["translation"]["not_scored"] == {"no manifest": 3, "failed at input": 1}
    assert metrics["intelligibility"]["cer"] is None
    assert metrics["intelligibility"]["not_scored"]["audio file missing"] == 2
    assert metrics["spanish_wer"]["wer"] is None and metrics["spanish_wer"]["reason"].startswith("disabled")
    assert metrics["throughput"]["items_per_s"] is None and metrics["throughput"]["reason"]
    assert metrics["asr"] is None  # nothing to transcribe: Whisper was never loaded
    assert metrics["plots"] == [] and not (out / "plots").exists()
    assert json.loads((out / "metrics.json").read_text())["translation"]["reason"] == metrics["translation"]["reason"]
    assert "n/a: no manifest given" in (out / "report.md").read_text(encoding="utf-8")


def evaluate_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return evaluate_command(parser.parse_args(argv))


def test_the_cli_hook_prints_the_table_and_reports_setup_errors(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    shutil.copytree(run["pristine"], out)
    argv = ["--run", str(out), "--manifest", str(run["manifest"]), "--tracking", "none", "--intelligibility", "false"]
    assert evaluate_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "| BLEU (English vs reference_en) |" in printed and "WARNING: fixture models" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["options"]["intelligibility"] is False and metrics["intelligibility"]["reason"].startswith(
        "disabled"
    )
    assert metrics["translation"]["scored_items"] == 1

    assert evaluate_cli(["--run", str(tmp_path / "nowhere"), "--tracking", "none"]) == 2
    assert "results.jsonl is missing" in capsys.readouterr().err
    # A RUN folder whose path ClearML's SDK would read as another folder is refused before anything is scored.
    odd = tmp_path / "b\\s"
    shutil.copytree(run["pristine"], odd)
    before = sorted(os.listdir(odd))
    assert evaluate_cli(["--run", str(odd), "--tracking", "offline", "--intelligibility", "false"]) == 2
    assert "--run for evaluate) without $ or \\" in capsys.readouterr().err
    assert sorted(os.listdir(odd)) == before and sorted(os.listdir(tmp_path)) == ["b\\s", "run"]
    assert evaluate_cli(["--run", str(tmp_path / "nowhere"), "--tracking", "none"]) == 2
    assert "results.jsonl is missing" in capsys.readouterr().err
    assert evaluate_cli(["--run", str(out), "--manifest", str(tmp_path / "none.jsonl"), "--tracking", "none"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_clearml_offline_session_holds_the_stable_scalar_names(run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    script = (
        "import json, sys; from pathlib import Path; from clearml_pipeline.evaluation import track_evaluation; "
        "out = Path(sys.argv[1]); metrics = json.loads((out / 'metrics.json').read_text()); "
        "print(track_evaluation(metrics, out, 'offline'))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env, timeout=300, cwd=Path.cwd()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    session = Path(proc.stdout.strip().splitlines()[-1])
    assert session.parent == out / "clearml" and session.suffix == ".zip"
    with zipfile.ZipFile(session) as archive:
        names = archive.namelist()
        events = [e for line in archive.read("metrics.jsonl").decode().splitlines() for e in json.loads(line)]
    scalars = {(e["metric"], e["variant"]): e["value"] for e in events if e["type"] == "training_stats_scalar"}
    metrics = run["metrics"]
    assert scalars[("quality", "bleu")] == pytest.approx(metrics["translation"]["bleu"])
    assert scalars[("quality", "chrf")] == pytest.approx(metrics["translation"]["chrf"])
    assert scalars[("quality", "cer")] == pytest.approx(metrics["intelligibility"]["cer"])
    assert scalars[("quality", "spanish_wer")] == pytest.approx(metrics["spanish_wer"]["wer"])
    for q in ("p50", "p90", "p95", "p99"):
        for stage in ("speech_translation", "machine_translation", "speech_synthesis", "total"):
            assert scalars[(f"latency {q} (s)", stage)] == pytest.approx(metrics["latency_s"][stage][q])
    assert scalars[("throughput", "items_per_s")] == pytest.approx(metrics["throughput"]["items_per_s"])
    assert scalars[("scored items", "translation")] == 1
    assert any(e["type"] == "plot" and e["metric"] == "items" for e in events)  # the per-item table
    assert any(n.endswith("plots_latency_histogram_00000000.png") for n in names)
    assert any(n.endswith("artifacts/metrics/metrics.json") for n in names)


def test_a_results_row_whose_audio_path_leaves_the_run_is_not_transcribed(run: dict[str, Any], tmp_path: Path) -> None:
    """results.jsonl is data: zh_audio pointing outside the run folder (absolute, `..`, a link out) is no audio of
    this run. Before, `evaluate` transcribed whatever file it named."""
    out = tmp_path / "run"
    shutil.copytree(run["pristine"], out)
    elsewhere = tmp_path / "elsewhere.wav"
    shutil.copyfile(next((out / "audio").glob("*.wav")), elsewhere)
    (out / "audio" / "link.wav").symlink_to(elsewhere)
    hostile = [str(elsewhere), "../elsewhere.wav", "audio/link.wav"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    spoken = next(row for row in rows if row["zh_audio"])
    rows = [row for row in rows if not row["zh_audio"]]
    rows += [spoken | {"id": f"hostile{i}", "zh_audio": path} for i, path in enumerate(hostile)]
    (out / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    metrics = evaluate_run(out, None, EvaluationOptions(plots=False))
    reasons = {item["id"]: item["intelligibility_reason"] for item in metrics["items"]}
    assert [reasons[f"hostile{i}"] for i in range(len(hostile))] == ["audio path outside the run folder"] * 3
    assert metrics["intelligibility"]["cer"] is None and metrics["asr"] is None  # nothing transcribed


def test_a_manifest_row_whose_audio_leaves_its_folder_does_not_stop_the_evaluation(tmp_path: Path) -> None:
    """The ingest step makes such a row an error row and runs the rest; the evaluation refused the whole manifest
    ("absolute path '/etc/passwd' is not allowed"), and the steps runtime lost every row with it. References are
    read by id; the hostile path is never matched or opened."""
    from clearml_pipeline.evaluation.scoring import load_references

    (tmp_path / "audio").mkdir()
    base = {"duration_s": 1.0, "sentence": "hola", "split": "test", "source_path": "x.mp3"}
    lines = [base | {"id": "good", "audio": "audio/good.wav", "reference_en": "hello"},
             base | {"id": "abs", "audio": "/etc/passwd", "reference_en": "absolute"},
             base | {"id": "climb", "audio": "../../x.wav", "reference_en": "climbing"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = [ItemResult("good", "audio/good.wav"), ItemResult("abs", "/etc/passwd", status="error"),
            ItemResult("other", "/etc/passwd")]
    found, info = load_references(manifest, rows)
    assert {key: entry.reference_en for key, entry in found.items()} == {"good": "hello", "abs": "absolute"}
    assert info["manifest_rows"] == 3 and info["matched_items"] == 2  # "other" is not matched by the hostile path
