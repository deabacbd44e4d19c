"""Score a finished run (OUT/results.jsonl + summary.json): translation quality, intelligibility, latency.

- translation: BLEU and chrF (sacrebleu, corpus level) of the English text against the manifest's
  `reference_en` (CoVoST for Common Voice, en_us for FLEURS);
- Mandarin against a human reference (`reference_zh`, FLEURS): character-level BLEU/chrF of the Chinese text, and
  ASR-BLEU/chrF of a Whisper transcript of the synthesized speech (quality module);
- intelligibility: Whisper transcribes the synthesized Mandarin (language zh, task transcribe) and the CER
  against the row's own `zh_text` says whether the speech says what the text says;
- Spanish WER (optional): Whisper transcribes the source audio (es) against the manifest `sentence`;
- latency p50/p90/p99 per stage and end to end, throughput from summary.json.

Writes OUT/metrics.json, OUT/report.md and OUT/plots/*.png. Every input item is either scored or listed with
the reason it was not; a metric that cannot be computed is null with a reason, never an exception. Only a missing
ASR model stops the evaluation (ModelUnavailableError), as a missing model stops `run`.

Modules, one job each: options (EvaluationOptions), metrics (the metric functions, no I/O), transcriber (the
Whisper stage that re-transcribes audio), scoring (a run's rows -> metrics.json), quality (the Mandarin-reference
scores and metrics.json's flat `quality` block), report (report.md, plots,
ClearML logging), cli (the `evaluate` command).
"""

from __future__ import annotations

from clearml_pipeline.evaluation.cli import add_evaluate_arguments, evaluate_command
from clearml_pipeline.evaluation.metrics import (
    ZH_TOKENIZE,
    cer,
    corpus_cer,
    corpus_wer,
    edit_distance,
    latency_percentiles,
    normalize_asr_zh,
    normalize_words,
    normalize_zh,
    stage_latencies,
    translation_scores,
    wer,
    zh_scores,
)
from clearml_pipeline.evaluation.options import EvaluationOptions
from clearml_pipeline.evaluation.quality import QUALITY_KEYS, quality_summary
from clearml_pipeline.evaluation.report import (
    METRICS,
    PLOTS,
    REPORT,
    format_quality_table,
    format_report,
    format_table,
    report_metrics,
    track_evaluation,
    write_plots,
)
from clearml_pipeline.evaluation.scoring import evaluate_run
from clearml_pipeline.evaluation.transcriber import Transcriber, is_fixture_run

__all__ = [
    "METRICS",
    "PLOTS",
    "QUALITY_KEYS",
    "REPORT",
    "ZH_TOKENIZE",
    "EvaluationOptions",
    "Transcriber",
    "add_evaluate_arguments",
    "cer",
    "corpus_cer",
    "corpus_wer",
    "edit_distance",
    "evaluate_command",
    "evaluate_run",
    "format_quality_table",
    "format_report",
    "format_table",
    "is_fixture_run",
    "latency_percentiles",
    "normalize_asr_zh",
    "normalize_words",
    "normalize_zh",
    "quality_summary",
    "report_metrics",
    "stage_latencies",
    "track_evaluation",
    "translation_scores",
    "wer",
    "write_plots",
    "zh_scores",
]
