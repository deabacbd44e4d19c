"""Score a finished run (OUT/results.jsonl + summary.json): translation quality, intelligibility, latency.

- translation: BLEU and chrF (sacrebleu, corpus level) of the English text against the manifest's CoVoST
  `reference_en`: the cascade's only step with a public reference;
- intelligibility: Whisper transcribes the synthesized Mandarin (language zh, task transcribe) and the CER
  against the row's own `zh_text` says whether the speech says what the text says;
- Spanish WER (optional): Whisper transcribes the source audio (es) against the manifest `sentence`;
- latency p50/p90/p99 per stage and end to end, throughput from summary.json.

Writes OUT/metrics.json, OUT/report.md and OUT/plots/*.png. Every input item is either scored or listed with
the reason it was not; a metric that cannot be computed is null with a reason, never an exception. Only a missing
ASR model stops the evaluation (ModelUnavailableError), as a missing model stops `run`.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clearml_pipeline.results import STAGE_NAMES, percentiles, read_results
from data_prep.manifest import ManifestRow, read_manifest
from data_prep.paths import safe_join

if TYPE_CHECKING:
    from steps.speech_translation import WhisperTranslator

METRICS, REPORT, PLOTS = "metrics.json", "report.md", "plots"
QUANTILES = (50, 90, 99)
# results.jsonl fields copied into metrics.json's per-item records (beside each metric's score or reason)
ITEM_FIELDS = ("id", "status", "stage", "error", "no_speech", "audio_seconds", "zh_audio_seconds", "en_text", "zh_text")


@dataclass
class EvaluationOptions:
    asr_model: str = "openai/whisper-large"  # Whisper id, local folder or registry ref
    asr_language: str = "zh"
    asr_task: str = "transcribe"
    # None: where the run found its own Whisper (the run config's speech_translation.model_cache)
    asr_model_cache: str | None = None
    asr_batch_size: int = 8
    # 440 fills Whisper's decoder; on a fixture run the default becomes the fixture cap, as `run` does.
    asr_max_new_tokens: int = 440
    device: str = "auto"
    intelligibility: bool = True
    spanish_wer: bool = False  # transcribes the source audio once more (es): a second Whisper pass
    plots: bool = True


# ---------------------------------------------------------------------------------------------- metrics


def translation_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF with the signatures that make them reproducible (tokenizer, smoothing, version)."""
    from sacrebleu.metrics import BLEU, CHRF

    if not hyps:  # sacrebleu raises on an empty corpus
        return {"bleu": None, "chrf": None, "bleu_signature": None, "chrf_signature": None}
    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": bleu.corpus_score(list(hyps), [list(refs)]).score,
        "chrf": chrf.corpus_score(list(hyps), [list(refs)]).score,
        "bleu_signature": bleu.get_signature().format(),
        "chrf_signature": chrf.get_signature().format(),
    }


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


def normalize_zh(text: str) -> str:
    """Chinese for CER: NFKC (full-width forms), casefold, traditional -> simplified, no punctuation or spaces.

    Whisper writes Mandarin in either script, so the fold keeps script choice out of the error rate. Digits
    are left alone: "2024" against the spoken "二千零二十四" counts as errors.
    """
    text = _t2s().convert(unicodedata.normalize("NFKC", text).casefold())
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c)[0] not in "PZC")


def cer(hyp: str, ref: str) -> float | None:
    """Character error rate after normalize_zh; None when the reference has no characters left."""
    return corpus_cer([hyp], [ref])


def corpus_cer(hyps: Sequence[str], refs: Sequence[str]) -> float | None:
    """Total edits / total reference characters (not the mean of per-item rates: long items weigh more)."""
    pairs = [(normalize_zh(h), normalize_zh(r)) for h, r in zip(hyps, refs, strict=True)]
    total = sum(len(r) for _, r in pairs)
    return sum(edit_distance(h, r) for h, r in pairs) / total if total else None


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


def stage_latencies(rows: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Latencies per stage over the rows that reached it; end to end over the rows that finished (as summary.json
    does: a row that failed early has a short total that says nothing about the pipeline)."""
    ends = ["total", *(["end_to_end"] if any("end_to_end" in r["latency_s"] for r in rows) else [])]
    found: dict[str, list[float]] = {name: [] for name in (*STAGE_NAMES, *ends)}
    for row in rows:
        for name, values in found.items():
            if name in row["latency_s"] and (name in STAGE_NAMES or row["status"] == "ok"):
                values.append(row["latency_s"][name])
    return found


def latency_percentiles(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """p50/p90/p99 per stage and end to end (None where no row has that stage)."""
    return {name: percentiles(values, QUANTILES) for name, values in stage_latencies(rows).items()}


# ---------------------------------------------------------------------------------------------- one run


class Transcriber:
    """The pipeline's own Whisper stage (WhisperTranslator) set to transcribe, loaded on first use."""

    def __init__(self, options: EvaluationOptions, run_config: dict[str, Any]) -> None:
        from registry.model_sets import FIXTURE_DECODE_CAPS
        from steps.speech_translation import SpeechTranslationOptions

        cache = options.asr_model_cache or run_config.get("speech_translation", {}).get("model_cache")
        max_new_tokens = options.asr_max_new_tokens
        if is_fixture_run(run_config) and max_new_tokens == EvaluationOptions.asr_max_new_tokens:
            # Random weights never stop by themselves: cap them as `run --models fixtures` does.
            max_new_tokens = FIXTURE_DECODE_CAPS["speech_translation"]
        self.options = SpeechTranslationOptions(
            model=options.asr_model,
            language=options.asr_language,
            task=options.asr_task,
            # The run's cache only if it is on this machine (a pipeline step may have run elsewhere).
            model_cache=cache if cache and Path(cache).is_dir() else None,
            device=options.device,
            batch_size=max(options.asr_batch_size, 1),
            max_new_tokens=max_new_tokens,
        )
        self.stage: WhisperTranslator | None = None

    def load(self) -> WhisperTranslator:
        if self.stage is None:
            from steps.speech_translation import WhisperTranslator

            self.stage = WhisperTranslator(self.options)
            self.stage.ensure_ready()  # a missing model raises ModelUnavailableError: a setup error
        return self.stage

    def info(self) -> dict[str, Any] | None:
        if self.stage is None:
            return None
        model = self.stage.models()[0]
        return {"model_id": model.model_id, "revision": model.revision, "max_new_tokens": self.options.max_new_tokens}

    def __call__(self, paths: Sequence[Path], language: str, task: str, desc: str) -> list[tuple[str | None, str]]:
        """(text, "") or (None, error) per path. One loaded model serves both languages: only options change."""
        from tqdm import tqdm

        from steps.audio import AudioError, load_audio

        if not paths:  # nothing to transcribe: the model is not even loaded
            return []
        stage = self.load()
        stage.options = replace(stage.options, language=language, task=task)
        found: list[tuple[str | None, str]] = []
        size = stage.options.batch_size
        with tqdm(total=len(paths), unit="clip", desc=desc) as bar:
            for start in range(0, len(paths), size):
                batch, audios, errors = paths[start : start + size], [], {}
                for k, path in enumerate(batch):
                    try:
                        audios.append(load_audio(path))
                    except AudioError as exc:
                        errors[k] = str(exc)
                results = iter(stage.run(audios))
                for k in range(len(batch)):
                    if k in errors:
                        found.append((None, errors[k]))
                    elif (result := next(results)).ok:
                        found.append((result.output.text, ""))
                    else:
                        found.append((None, result.error or "failed"))
                bar.update(len(batch))
        return found


def is_fixture_run(run_config: dict[str, Any]) -> bool:
    return run_config.get("runner", {}).get("models", "hub") != "hub"


def load_references(
    manifest: Path | None, rows: Sequence[dict[str, Any]]
) -> tuple[dict[str, ManifestRow], dict[str, Any]]:
    """Manifest rows by result id: by `id`, else by audio path (a folder run names items after relative paths)."""
    if manifest is None:
        return {}, {"manifest": None, "manifest_rows": 0, "matched_items": 0}
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    try:
        entries = read_manifest(manifest, check_audio=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{manifest} is not a dataset manifest (manifest.jsonl): {exc}") from exc
    by_id = {e.id: e for e in entries}
    by_path = {(manifest.parent / e.audio).resolve(): e for e in entries}
    found = {}
    for row in rows:
        path = source_path(row["source"], manifest)
        entry = by_id.get(row["id"]) or (by_path.get(path.resolve()) if path else None)
        if entry is not None:
            found[row["id"]] = entry
    return found, {"manifest": str(manifest), "manifest_rows": len(entries), "matched_items": len(found)}


def source_path(source: str, manifest: Path | None) -> Path | None:
    """A row's input file: absolute from a folder run; relative to the dataset folder from a dataset run."""
    path = Path(source)
    if path.is_absolute() or manifest is None:
        return path
    try:
        return safe_join(manifest.parent, source)
    except ValueError:  # a path that leaves the dataset folder is never opened
        return None


def section(items: list[dict[str, Any]], key: str, values: dict[str, Any], why_none: str) -> dict[str, Any]:
    """A metric block: its values, how many items it scored, the other items counted by reason."""
    not_scored = Counter(item[f"{key}_reason"] for item in items if item[f"{key}_reason"])
    scored = len(items) - sum(not_scored.values())
    reason = None if scored else why_none
    return {**values, "scored_items": scored, "not_scored": dict(not_scored), "reason": reason}


def _failure(row: dict[str, Any]) -> str:
    return f"failed at {row['stage']}"


def score_translation(
    rows: list[dict[str, Any]], refs: dict[str, ManifestRow], items: list[dict[str, Any]], has_manifest: bool
) -> dict[str, Any]:
    hyps, golds = [], []
    for row, item in zip(rows, items, strict=True):
        ref = refs.get(row["id"])
        item["reference_en"] = ref.reference_en if ref else None
        if row["en_text"] is None:  # failed before speech translation finished; later failures keep their English
            reason = _failure(row) if row["status"] == "error" else "no English text"
        elif not has_manifest:
            reason = "no manifest"
        elif ref is None:
            reason = "not in manifest"
        elif not (ref.reference_en or "").strip():
            reason = "no reference_en in manifest"
        else:
            # A clip the pipeline heard as silence is scored with an empty hypothesis: the system said nothing.
            reason = None
            hyps.append(row["en_text"])
            golds.append(ref.reference_en or "")
        item["translation_reason"] = reason
    values = translation_scores(hyps, golds)
    return section(
        items,
        "translation",
        values,
        "no manifest given (--manifest)"
        if not has_manifest
        else "no item has both an English translation and a reference_en",
    )


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
    out: Path, rows: list[dict[str, Any]], items: list[dict[str, Any]], options: EvaluationOptions, asr: Transcriber
) -> dict[str, Any]:
    todo: list[tuple[int, Path, str]] = []
    for index, (row, item) in enumerate(zip(rows, items, strict=True)):
        # The TTS drops characters it cannot say (listed in `unsayable`); the audio cannot hold them.
        ref = "".join(c for c in row["zh_text"] or "" if c not in set(row.get("unsayable") or []))
        item.update(asr_zh=None, cer=None)
        if not options.intelligibility:
            reason = "disabled"
        elif row["status"] == "error":
            reason = _failure(row)
        elif row["no_speech"]:
            reason = "no speech in input"
        elif not row["zh_audio"]:
            reason = "no synthesized audio"
        elif not (out / row["zh_audio"]).is_file():
            reason = "audio file missing"
        elif not normalize_zh(ref):
            reason = "nothing sayable in zh_text"
        else:
            reason = None
            todo.append((index, out / row["zh_audio"], ref))
        item["intelligibility_reason"] = reason
    texts = asr([path for _, path, _ in todo], options.asr_language, options.asr_task, "transcribing zh")
    hyps, golds = score_transcripts(items, "intelligibility", todo, texts, "asr_zh", "cer", cer)
    why = "disabled (--intelligibility false)" if not options.intelligibility else "no synthesized audio to transcribe"
    return section(items, "intelligibility", {"cer": corpus_cer(hyps, golds) if hyps else None}, why)


def score_spanish(
    rows: list[dict[str, Any]],
    refs: dict[str, ManifestRow],
    items: list[dict[str, Any]],
    manifest: Path | None,
    options: EvaluationOptions,
    asr: Transcriber,
) -> dict[str, Any]:
    todo: list[tuple[int, Path, str]] = []
    for index, (row, item) in enumerate(zip(rows, items, strict=True)):
        ref = refs.get(row["id"])
        item.update(sentence=ref.sentence if ref else None, asr_es=None, wer=None)
        path = source_path(row["source"], manifest)
        if not options.spanish_wer:
            reason = "disabled"
        elif row["stage"] == "input":
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


def evaluate_run(out: Path, manifest: Path | None, options: EvaluationOptions) -> dict[str, Any]:
    """Score the run in `out`; writes metrics.json, report.md and plots/ there and returns the metrics."""
    out = Path(out)
    if not (out / "results.jsonl").is_file():
        raise FileNotFoundError(f"{out / 'results.jsonl'} is missing: --run must be the output folder of a run")
    rows = read_results(out / "results.jsonl")
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
    run_config = summary.get("config", {})
    refs, dataset = load_references(manifest, rows)
    items = [{k: row.get(k) for k in ITEM_FIELDS} for row in rows]
    asr = Transcriber(options, run_config)
    metrics: dict[str, Any] = {
        "run": str(out.resolve()),
        "model_set": run_config.get("runner", {}).get("models"),
        "fixture_models": is_fixture_run(run_config) if run_config else None,
        "translation": score_translation(rows, refs, items, manifest is not None),
        "intelligibility": score_intelligibility(out, rows, items, options, asr),
        "spanish_wer": score_spanish(rows, refs, items, manifest, options, asr),
        "latency_s": latency_percentiles(rows),
        "throughput": throughput(summary),
        "counts": {
            "items": len(rows),
            "ok": sum(r["status"] == "ok" for r in rows),
            "error": sum(r["status"] != "ok" for r in rows),
            "no_speech": sum(bool(r["no_speech"]) for r in rows),
            "errors_by_stage": dict(Counter(r["stage"] for r in rows if r["status"] != "ok")),
        },
        "dataset": dataset | {"run_dataset": summary.get("dataset")},
        "models": summary.get("models"),
        "asr": asr.info(),
        "options": asdict(options),
        "items": items,
    }
    metrics["plots"] = write_plots(out, rows, metrics) if options.plots else []
    (out / METRICS).write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / REPORT).write_text(format_report(metrics), encoding="utf-8")
    return metrics


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


# ---------------------------------------------------------------------------------------------- outputs


def write_plots(out: Path, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> list[str]:
    """PNGs under OUT/plots/, drawn on Figure objects with the Agg canvas: no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = out / PLOTS
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    latencies = {stage: values for stage, values in stage_latencies(rows).items() if values}
    if latencies:
        fig = Figure(figsize=(3.2 * len(latencies), 2.8), layout="constrained")
        for k, (stage, values) in enumerate(latencies.items()):
            ax = fig.add_subplot(1, len(latencies), k + 1)
            ax.hist(values, bins=20)
            ax.set(title=stage.replace("_", " "), xlabel="latency (s)", ylabel="items" if k == 0 else None)
        FigureCanvasAgg(fig).print_png(str(folder / "latency_histogram.png"))
        written.append(f"{PLOTS}/latency_histogram.png")
    scored = [i for i in metrics["items"] if i.get("cer") is not None]
    if scored:
        fig = Figure(figsize=(5, 3.5), layout="constrained")
        ax = fig.add_subplot()
        ax.scatter([i["zh_audio_seconds"] for i in scored], [i["cer"] for i in scored])
        ax.set(title="intelligibility per item", xlabel="synthesized audio (s)", ylabel="CER (Whisper zh vs zh_text)")
        FigureCanvasAgg(fig).print_png(str(folder / "cer_vs_duration.png"))
        written.append(f"{PLOTS}/cer_vs_duration.png")
    return written


def _number(value: float | None, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}f}"


def _accounting(block: dict[str, Any], items: int) -> tuple[str, str]:
    not_scored = ", ".join(f"{n} {reason}" for reason, n in sorted(block["not_scored"].items())) or "-"
    return f"{block['scored_items']}/{items}", not_scored


def format_table(metrics: dict[str, Any]) -> str:
    """The headline table (markdown): each metric, the items it scored, and why the others were not."""
    n = metrics["counts"]["items"]
    t, i, w, tp = metrics["translation"], metrics["intelligibility"], metrics["spanish_wer"], metrics["throughput"]
    lines = ["| metric | value | scored | not scored |", "|---|---|---|---|"]
    for name, value, block in (
        ("BLEU (English vs reference_en)", _number(t["bleu"]), t),
        ("chrF (English vs reference_en)", _number(t["chrf"]), t),
        ("CER (Whisper zh of the speech vs zh_text)", _number(i["cer"], percent=True), i),
        ("Spanish WER (Whisper es vs sentence)", _number(w["wer"], percent=True), w),
    ):
        value = value if block["reason"] is None else f"n/a: {block['reason']}"
        lines.append(f"| {name} | {value} | {' | '.join(_accounting(block, n))} |")
    rtf = _number(tp["real_time_factor"])
    lines.append(f"| throughput | {_number(tp['items_per_s'])} items/s, real-time factor {rtf} | {n} items | - |")
    lines += ["", "| latency (s) | p50 | p90 | p99 |", "|---|---|---|---|"]
    for stage, q in metrics["latency_s"].items():
        lines.append(f"| {stage} | {_number(q['p50'], 3)} | {_number(q['p90'], 3)} | {_number(q['p99'], 3)} |")
    return "\n".join(lines)


def format_report(metrics: dict[str, Any]) -> str:
    dataset = (metrics.get("dataset") or {}).get("run") or {}  # what the run recorded of its dataset
    source = f", dataset `{dataset['ref']}`" if dataset.get("ref") else ""
    lines = ["# Evaluation report", "", f"Run `{metrics['run']}`{source}.", ""]
    if metrics["fixture_models"]:
        lines += [
            f"> **WARNING: this run used fixture models (`{metrics['model_set']}`: tiny random weights). Every "
            "quality figure below is noise; only the machinery is exercised.**",
            "",
        ]
    c = metrics["counts"]
    lines += [
        f"{c['items']} items: {c['ok']} ok, {c['error']} error, {c['no_speech']} no speech.",
        "",
        format_table(metrics),
        "",
        f"- BLEU signature: `{metrics['translation']['bleu_signature']}`",
        f"- chrF signature: `{metrics['translation']['chrf_signature']}`",
        "- CER: characters after NFKC, casefolding, traditional -> simplified (OpenCC t2s), without punctuation "
        "and spaces; the reference is zh_text less the characters the TTS could not say; digits are not converted.",
        "- WER: words after Whisper's BasicTextNormalizer.",
    ]
    if metrics["asr"]:
        asr = metrics["asr"]
        lines.append(f"- ASR: `{asr['model_id']}` revision `{asr['revision']}`, max {asr['max_new_tokens']} tokens.")
    for key, title in (("translation", "BLEU/chrF"), ("intelligibility", "CER"), ("spanish_wer", "Spanish WER")):
        reasons: dict[str, list[str]] = {}
        for item in metrics["items"]:
            if item[f"{key}_reason"] and item[f"{key}_reason"] != "disabled":
                reasons.setdefault(item[f"{key}_reason"], []).append(item["id"])
        if reasons:
            lines += ["", f"Not scored for {title}:"]
            for reason, ids in reasons.items():
                lines.append(f"- {reason}: {', '.join(f'`{i}`' for i in ids[:20])}{' ...' if len(ids) > 20 else ''}")
    if metrics["plots"]:
        lines += ["", *(f"![{Path(p).stem}]({p})" for p in metrics["plots"])]
    return "\n".join(lines) + "\n"


def report_metrics(metrics: dict[str, Any], logger: Any) -> None:
    """Report to a ClearML Logger under names that stay the same from run to run (compare runs in the UI)."""
    quality = {
        "bleu": metrics["translation"]["bleu"],
        "chrf": metrics["translation"]["chrf"],
        "cer": metrics["intelligibility"]["cer"],
        "spanish_wer": metrics["spanish_wer"]["wer"],
    }
    for series, value in quality.items():
        if value is not None:
            logger.report_scalar("quality", series, value, iteration=0)
    for key in ("translation", "intelligibility", "spanish_wer"):
        logger.report_scalar("scored items", key, metrics[key]["scored_items"], iteration=0)
    for q in QUANTILES:
        for stage, values in metrics["latency_s"].items():
            if values[f"p{q}"] is not None:
                logger.report_scalar(f"latency p{q} (s)", stage, values[f"p{q}"], iteration=0)
    for key in ("items_per_s", "real_time_factor"):
        if metrics["throughput"][key] is not None:
            logger.report_scalar("throughput", key, metrics["throughput"][key], iteration=0)
    if metrics["fixture_models"]:
        logger.report_text(f"fixture models ({metrics['model_set']}): every quality figure is noise")
    import pandas as pd

    columns = [
        "id",
        "status",
        "stage",
        "translation_reason",
        "cer",
        "intelligibility_reason",
        "wer",
        "spanish_wer_reason",
        "en_text",
        "reference_en",
        "zh_text",
        "asr_zh",
    ]
    table = pd.DataFrame([{c: item.get(c) for c in columns} for item in metrics["items"]], columns=columns)
    logger.report_table("items", "per item", iteration=0, table_plot=table.fillna(""))
    for plot in metrics["plots"]:
        logger.report_image("plots", Path(plot).stem, iteration=0, local_path=str(Path(metrics["run"]) / plot))


def track_evaluation(metrics: dict[str, Any], out: Path, mode: str) -> str | None:
    """Record the evaluation as a ClearML task (offline: a session zip under OUT/clearml/); returns the zip."""
    if mode == "none":
        return None
    if mode not in ("offline", "server"):
        raise ValueError(f"--tracking must be offline, server or none; got {mode!r}")
    from clearml_pipeline.tracking import Tracker

    tracker = Tracker(
        f"evaluate {Path(metrics['run']).name}", out / "clearml", offline=mode == "offline", task_type="qc"
    )
    tracker.connect(dict(metrics["options"]), name="evaluation")
    if metrics["model_set"]:  # the pipeline's steps name it runner/models too: the notebook reads it there
        tracker.connect({"models": metrics["model_set"]}, name="runner")
    report_metrics(metrics, tracker.logger)
    tracker.artifact("metrics", out / METRICS)
    session = tracker.close()
    return str(session) if session else None


# ---------------------------------------------------------------------------------------------- command line


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """`evaluate` flags: --run, --manifest and one flag per EvaluationOptions field (--asr-model ...)."""
    from clearml_pipeline.config import add_section

    parser.add_argument("--run", type=Path, required=True, help="a finished run's output folder (results.jsonl)")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="the dataset's manifest.jsonl (reference_en, sentence); optional"
    )
    parser.add_argument(
        "--tracking",
        choices=("offline", "server", "none"),
        default="offline",
        help="record the evaluation as a ClearML task: offline session under RUN/clearml/, your server, or none",
    )
    add_section(parser, EvaluationOptions(), "", "evaluation")


def evaluate_command(args: argparse.Namespace) -> int:
    """Run evaluate_run from parsed arguments; 0 on success, 2 on a setup error (message on stderr)."""
    from clearml_pipeline.config import section_from_args
    from registry.hub import ModelUnavailableError

    options = section_from_args(args, EvaluationOptions(), "")
    try:
        metrics = evaluate_run(args.run, args.manifest, options)
    except (FileNotFoundError, ValueError, ModelUnavailableError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    if metrics["fixture_models"]:
        print(f"WARNING: fixture models ({metrics['model_set']}): the quality figures are noise")
    print(f"metrics: {args.run / METRICS}\nreport: {args.run / REPORT}")
    session = track_evaluation(metrics, args.run, args.tracking)
    if session:
        print(f"ClearML offline session: {session} (upload: clearml-task --import-offline-session)")
    return 0
