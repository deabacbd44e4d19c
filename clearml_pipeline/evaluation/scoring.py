"""Scoring a finished run's rows (steps.results.ItemResult): every item is scored or gets a reason per metric.

evaluate_run is the whole evaluation of one run folder; the score_* functions fill each item's record in
metrics.json (its score, or `<metric>_reason` saying why not) and return the metric's block.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clearml_pipeline.evaluation.metrics import (
    cer,
    cer_distribution,
    corpus_cer,
    corpus_wer,
    latency_percentiles,
    normalize_words,
    normalize_zh,
    translation_scores,
    wer,
)
from clearml_pipeline.evaluation.options import EvaluationOptions
from clearml_pipeline.evaluation.quality import quality_summary, score_asr_translation, score_zh_translation, section
from clearml_pipeline.evaluation.report import METRICS, REPORT, format_report, write_plots
from clearml_pipeline.evaluation.transcriber import Transcriber, is_fixture_run
from data_prep.manifest import ManifestRow, read_manifest
from resources.json_text import dumps
from resources.paths import safe_join
from steps.results import ItemResult, load_rows

# results.jsonl fields copied into metrics.json's per-item records (beside each metric's score or reason)
ITEM_FIELDS = ("id", "status", "stage", "error", "no_speech", "audio_seconds", "zh_audio_seconds", "en_text", "zh_text")


def source_path(source: str, manifest: Path | None) -> Path | None:
    """A row's input file: absolute from a folder run; relative to the dataset folder from a dataset run."""
    path = Path(source)
    if path.is_absolute() or manifest is None:
        return path
    return dataset_file(manifest, source)


def dataset_file(manifest: Path, relative: str) -> Path | None:
    """`relative` inside the manifest's folder, None if it would leave it (such a path is never opened)."""
    try:
        return safe_join(manifest.parent, relative)
    except ValueError:
        return None


def load_references(manifest: Path | None, rows: list[ItemResult]) -> tuple[dict[str, ManifestRow], dict[str, Any]]:
    """Manifest rows by result id: by `id`, else by audio path (a folder run names items after relative paths)."""
    if manifest is None:
        return {}, {"manifest": None, "manifest_rows": 0, "matched_items": 0}
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    try:
        # A row whose audio path leaves the folder is that row's error (the ingest step made it one), not the
        # manifest's: its references are still read by id, and its path is never matched (or opened) here.
        entries = read_manifest(manifest, check_audio=False, check_paths=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{manifest} is not a dataset manifest (manifest.jsonl): {exc}") from exc
    by_id = {e.id: e for e in entries}
    by_path = {path.resolve(): e for e in entries if (path := dataset_file(manifest, e.audio))}
    found = {}
    for row in rows:
        path = source_path(row.source, manifest)
        entry = by_id.get(row.id) or (by_path.get(path.resolve()) if path else None)
        if entry is not None:
            found[row.id] = entry
    return found, {"manifest": str(manifest), "manifest_rows": len(entries), "matched_items": len(found)}


def _failure(row: ItemResult) -> str:
    return f"failed at {row.stage}"


def score_translation(
    rows: list[ItemResult], refs: dict[str, ManifestRow], items: list[dict[str, Any]], has_manifest: bool
) -> dict[str, Any]:
    hyps, golds = [], []
    for row, item in zip(rows, items, strict=True):
        ref = refs.get(row.id)
        item["reference_en"] = ref.reference_en if ref else None
        if row.en_text is None:  # failed before speech translation finished; later failures keep their English
            reason = _failure(row) if row.status == "error" else "no English text"
        elif not has_manifest:
            reason = "no manifest"
        elif ref is None:
            reason = "not in manifest"
        elif not (ref.reference_en or "").strip():
            reason = "no reference_en in manifest"
        else:
            # A clip the pipeline heard as silence is scored with an empty hypothesis: the system said nothing.
            reason = None
            hyps.append(row.en_text)
            golds.append(ref.reference_en or "")
        item["translation_reason"] = reason
    why = "no item has both an English translation and a reference_en"
    if not has_manifest:
        why = "no manifest given (--manifest)"
    return section(items, "translation", translation_scores(hyps, golds), why)


def score_transcripts(
    items: list[dict[str, Any]],
    key: str,
    todo: list[tuple[int, Path, str]],
    texts: list[tuple[str | None, str]],
    text_field: str,
    score_field: str,
    score: Callable[[str, str], float | None],
) -> tuple[list[str], list[str]]:
    """Per-item scores of the transcripts; returns the (hypothesis, reference) pairs for the corpus score."""
    hyps, golds = [], []
    for (index, _, ref), (text, error) in zip(todo, texts, strict=True):
        item = items[index]
        if text is None:
            item[f"{key}_reason"], item["asr_error"] = "ASR failed", error
            continue
        item[text_field], item[score_field] = text, score(text, ref)
        hyps.append(text)
        golds.append(ref)
    return hyps, golds


def score_intelligibility(
    out: Path, rows: list[ItemResult], items: list[dict[str, Any]], options: EvaluationOptions, asr: Transcriber
) -> dict[str, Any]:
    todo: list[tuple[int, Path, str]] = []
    for index, (row, item) in enumerate(zip(rows, items, strict=True)):
        # The TTS drops characters it cannot say (listed in `unsayable`); the audio cannot hold them.
        ref = "".join(c for c in row.zh_text or "" if c not in set(row.unsayable or []))
        item.update(asr_zh=None, cer=None)
        if not options.intelligibility:
            reason = "disabled"
        elif row.status == "error":
            reason = _failure(row)
        elif row.no_speech:
            reason = "no speech in input"
        elif not row.zh_audio:
            reason = "no synthesized audio"
        elif (audio := row.audio_inside(out)) is None:
            reason = "audio path outside the run folder"
        elif not audio.is_file():
            reason = "audio file missing"
        elif not normalize_zh(ref):
            reason = "nothing sayable in zh_text"
        else:
            reason = None
            todo.append((index, audio, ref))
        item["intelligibility_reason"] = reason
    texts = asr([path for _, path, _ in todo], options.asr_language, options.asr_task, "transcribing zh")
    hyps, golds = score_transcripts(items, "intelligibility", todo, texts, "asr_zh", "cer", cer)
    why = "disabled (--intelligibility false)" if not options.intelligibility else "no synthesized audio to transcribe"
    # The corpus CER is total edits / total reference characters; the per-item spread is shown beside it (an item
    # of Latin gibberish can score far above 1 on its own and would dominate a mean of per-item rates).
    per_item = [items[index]["cer"] for index, _, _ in todo if items[index]["cer"] is not None]
    values = {"cer": corpus_cer(hyps, golds) if hyps else None, "cer_per_item": cer_distribution(per_item)}
    return section(items, "intelligibility", values, why)


def score_spanish(
    rows: list[ItemResult],
    refs: dict[str, ManifestRow],
    items: list[dict[str, Any]],
    manifest: Path | None,
    options: EvaluationOptions,
    asr: Transcriber,
) -> dict[str, Any]:
    todo: list[tuple[int, Path, str]] = []
    for index, (row, item) in enumerate(zip(rows, items, strict=True)):
        ref = refs.get(row.id)
        item.update(sentence=ref.sentence if ref else None, asr_es=None, wer=None)
        path = source_path(row.source, manifest)
        if not options.spanish_wer:
            reason = "disabled"
        elif row.stage == "input":
            reason = _failure(row)
        elif manifest is None:
            reason = "no manifest"
        elif ref is None:
            reason = "not in manifest"
        elif not normalize_words(ref.sentence or ""):
            reason = "no sentence in manifest"
        elif path is None or not path.is_file():
            reason = "source audio missing"
        else:
            reason = None
            todo.append((index, path, ref.sentence or ""))
        item["spanish_wer_reason"] = reason
    texts = asr([path for _, path, _ in todo], "es", "transcribe", "transcribing es")
    hyps, golds = score_transcripts(items, "spanish_wer", todo, texts, "asr_es", "wer", wer)
    why = "no manifest given (--manifest)" if manifest is None else "no item has source audio and a sentence"
    if not options.spanish_wer:
        why = "disabled (--spanish-wer true enables it)"
    return section(items, "spanish_wer", {"wer": corpus_wer(hyps, golds) if hyps else None}, why)


def throughput(summary: dict[str, Any]) -> dict[str, Any]:
    e2e = summary.get("end_to_end")
    if not e2e:
        return {
            "items_per_s": None,
            "real_time_factor": None,
            "audio_seconds": None,
            "wall_s": None,
            "reason": "no summary.json in the run folder",
        }
    return {
        "items_per_s": e2e.get("items_per_s"),
        "real_time_factor": e2e.get("real_time_factor"),
        "audio_seconds": e2e.get("audio_seconds"),
        "wall_s": summary.get("wall_s"),
        "reason": None,
    }


def counts(rows: list[ItemResult]) -> dict[str, Any]:
    return {
        "items": len(rows),
        "ok": sum(r.ok for r in rows),
        "error": sum(not r.ok for r in rows),
        "no_speech": sum(bool(r.no_speech) for r in rows),
        "errors_by_stage": dict(Counter(r.stage for r in rows if not r.ok)),
    }


def evaluate_run(out: Path, manifest: Path | None, options: EvaluationOptions) -> dict[str, Any]:
    """Score the run in `out`; writes metrics.json, report.md and plots/ there and returns the metrics."""
    out = Path(out)
    if not (out / "results.jsonl").is_file():
        raise FileNotFoundError(f"{out / 'results.jsonl'} is missing: --run must be the output folder of a run")
    rows = load_rows(out / "results.jsonl")
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
    run_config = summary.get("config", {})
    refs, dataset = load_references(manifest, rows)
    items = [{k: getattr(row, k) for k in ITEM_FIELDS} for row in rows]
    asr = Transcriber(options, run_config)
    metrics: dict[str, Any] = {
        "run": str(out.resolve()),
        "model_set": run_config.get("runner", {}).get("models"),
        "fixture_models": is_fixture_run(run_config) if run_config else None,
        "translation": score_translation(rows, refs, items, manifest is not None),
        "intelligibility": score_intelligibility(out, rows, items, options, asr),
        "zh_translation": score_zh_translation(rows, refs, items, manifest is not None),
        "spanish_wer": score_spanish(rows, refs, items, manifest, options, asr),
        "latency_s": latency_percentiles(rows),
        "throughput": throughput(summary),
        "counts": counts(rows),
        "dataset": dataset | {"run_dataset": summary.get("dataset")},
        "models": summary.get("models"),
        "asr": asr.info(),
        "options": asdict(options),
        "items": items,
    }
    # After intelligibility: ASR-BLEU scores the transcripts that pass made, and needs the ASR model it loaded.
    metrics["asr_translation"] = score_asr_translation(rows, refs, items, manifest is not None, asr.info())
    metrics["quality"] = quality_summary(metrics, refs, manifest)
    metrics["plots"] = write_plots(out, rows, metrics) if options.plots else []
    (out / METRICS).write_text(dumps(metrics, indent=2), encoding="utf-8")
    (out / REPORT).write_text(format_report(metrics), encoding="utf-8", errors="backslashreplace")
    return metrics
