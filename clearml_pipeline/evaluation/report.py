"""A scored run's outputs: report.md (and the table `evaluate` prints), plots/*.png, and ClearML logging.

ClearML names stay the same from run to run so runs compare in the UI: "quality"/bleu|chrf|cer|spanish_wer and
zh_bleu|zh_chrf|asr_bleu|asr_chrf|en_bleu|en_chrf (metrics.json's `quality` block),
"scored items"/<metric>, "latency <q> (s)"/<stage>, "throughput"/items_per_s|real_time_factor, the per-item
table "items" and the plots as images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clearml_pipeline.evaluation.metrics import LATENCY_KEYS, stage_latencies
from steps.results import ItemResult

METRICS, REPORT, PLOTS = "metrics.json", "report.md", "plots"
# metrics.json item fields in the ClearML per-item table
TABLE_COLUMNS = [
    "id",
    "status",
    "stage",
    "translation_reason",
    "cer",
    "intelligibility_reason",
    "wer",
    "spanish_wer_reason",
    "zh_translation_reason",
    "asr_translation_reason",
    "en_text",
    "reference_en",
    "zh_text",
    "reference_zh",
    "asr_zh",
]
QUALITY_LABELS = {
    "zh_bleu": "zh BLEU (zh_text vs reference_zh, char)",
    "zh_chrf": "zh chrF (zh_text vs reference_zh)",
    "asr_bleu": "ASR-BLEU (Whisper zh of the speech vs reference_zh, char)",
    "asr_chrf": "ASR-chrF (Whisper zh of the speech vs reference_zh)",
    "en_bleu": "en BLEU (English vs reference_en)",
    "en_chrf": "en chrF (English vs reference_en)",
    "cer": "round-trip CER (Whisper zh vs zh_text)",
}


def write_plots(out: Path, rows: list[ItemResult], metrics: dict[str, Any]) -> list[str]:
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
        if block is i and block["reason"] is None and (spread := i.get("cer_per_item")):
            figures = " / ".join(_number(spread[key], percent=True) for key in ("p50", "p90", "max"))
            lines.append(f"| CER per item: p50 / p90 / max | {figures}; {spread['over_1']} of {spread['items']} "
                         f"item(s) over 100% | {' | '.join(_accounting(block, n))} |")
    rtf = _number(tp["real_time_factor"])
    lines.append(f"| throughput | {_number(tp['items_per_s'])} items/s, real-time factor {rtf} | {n} items | - |")
    lines += ["", f"| latency (s) | {' | '.join(LATENCY_KEYS)} |", "|---" * (len(LATENCY_KEYS) + 1) + "|"]
    for stage, q in metrics["latency_s"].items():
        lines.append(f"| {stage} | {' | '.join(_number(q[key], 3) for key in LATENCY_KEYS)} |")
    return "\n".join(lines)


def format_quality_table(metrics: dict[str, Any]) -> str:
    """Every quality metric in one table, with the dataset, split, items scored and its sacrebleu signature."""
    q = metrics["quality"]
    lines = ["| metric | value | dataset | split | scored | signature |", "|---|---|---|---|---|---|"]
    for key, label in QUALITY_LABELS.items():
        value = _number(q[key], percent=key == "cer")
        signature = f"`{q['signatures'][key]}`" if q["signatures"][key] else "-"
        cells = [label, value, q["dataset"] or "-", q["split"] or "-", f"{q['scored_items'][key]}/{q['items']}"]
        lines.append(f"| {' | '.join(cells)} | {signature} |")
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
        *(["## Quality", "", format_quality_table(metrics), ""] if "quality" in metrics else []),
        "- zh BLEU/chrF: the raw Chinese text against reference_zh; BLEU with sacrebleu's `char` tokenizer "
        "(13a sees unsegmented Chinese as one word per sentence and scores near zero).",
        "- ASR-BLEU/chrF: Whisper (zh, transcribe, temperature 0, beam 1, no fallback) of the synthesized speech "
        "against reference_zh, both after NFKC, casefolding, numbers read out, traditional -> simplified and "
        "without punctuation; `char` tokenizer.",
        "",
        f"- BLEU signature: `{metrics['translation']['bleu_signature']}`",
        f"- chrF signature: `{metrics['translation']['chrf_signature']}`",
        "- CER: total edits over total reference characters (the per-item rates' spread beside it), characters "
        "after NFKC, casefolding, numbers read out as the TTS reads them (so Whisper's digits meet the spoken "
        "numerals), traditional -> simplified (OpenCC t2s), without punctuation and spaces; the reference is "
        "zh_text less the characters the TTS could not say.",
        "- WER: words after Whisper's BasicTextNormalizer.",
    ]
    if metrics["asr"]:
        asr = metrics["asr"]
        lines.append(f"- ASR: `{asr['model_id']}` revision `{asr['revision']}`, max {asr['max_new_tokens']} tokens.")
    for key, title in (
        ("translation", "BLEU/chrF"),
        ("intelligibility", "CER"),
        ("spanish_wer", "Spanish WER"),
        ("zh_translation", "zh BLEU/chrF"),
        ("asr_translation", "ASR-BLEU/chrF"),
    ):
        reasons: dict[str, list[str]] = {}
        for item in metrics["items"]:
            if item.get(f"{key}_reason") and item[f"{key}_reason"] != "disabled":
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
    for key, value in metrics.get("quality", {}).items():  # absent from a metrics.json older than FLEURS scoring
        if key in QUALITY_LABELS and key != "cer" and value is not None:
            logger.report_scalar("quality", key, value, iteration=0)
    for key, value in (metrics["intelligibility"].get("cer_per_item") or {}).items():  # the spread beside it
        if key != "items" and value is not None:
            logger.report_scalar("cer per item", key, value, iteration=0)
    for key in ("translation", "intelligibility", "spanish_wer", "zh_translation", "asr_translation"):
        if key in metrics:
            logger.report_scalar("scored items", key, metrics[key]["scored_items"], iteration=0)
    for q in LATENCY_KEYS:
        for stage, values in metrics["latency_s"].items():
            if values[q] is not None:
                logger.report_scalar(f"latency {q} (s)", stage, values[q], iteration=0)
    for key in ("items_per_s", "real_time_factor"):
        if metrics["throughput"][key] is not None:
            logger.report_scalar("throughput", key, metrics["throughput"][key], iteration=0)
    if metrics["fixture_models"]:
        logger.report_text(f"fixture models ({metrics['model_set']}): every quality figure is noise")
    import pandas as pd

    table = pd.DataFrame([{c: item.get(c) for c in TABLE_COLUMNS} for item in metrics["items"]], columns=TABLE_COLUMNS)
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
