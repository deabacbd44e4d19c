"""What a stage task shows in the ClearML UI, under names that stay the same from run to run.

Scalars (compare runs side by side): "<stage> latency (s)"/"item" per item (iteration = item index),
"latency (s)"/"<stage> p50|p95", "throughput"/"<stage> items/s" and "<stage> audio s/s",
"real-time factor"/"<stage>", "errors"/"<stage>". Plots: "latency histogram"/"<stage>". Speech synthesis adds
the first clips as playable audio ("output audio"/<item id>) and a table of their English and Chinese text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clearml_pipeline.results import ItemResult, percentiles


def report_stage(logger: Any, stage: str, rows: list[ItemResult], busy_s: float) -> dict[str, Any]:
    """Report one stage's figures; returns them (they also go into the step's run.json)."""
    latencies = [r.latency_s[stage] for r in rows if stage in r.latency_s]
    for index, row in enumerate(rows):
        if stage in row.latency_s:
            logger.report_scalar(f"{stage} latency (s)", "item", row.latency_s[stage], iteration=index)
    audio_seconds = sum(r.audio_seconds or 0.0 for r in rows if stage in r.latency_s)
    figures = {
        "items": len(latencies),
        "errors": sum(1 for r in rows if r.stage == stage),
        "busy_s": busy_s,
        "items_per_s": len(latencies) / busy_s if busy_s > 0 else None,
        "audio_seconds_per_s": audio_seconds / busy_s if busy_s > 0 else None,
        "real_time_factor": busy_s / audio_seconds if audio_seconds > 0 else None,
        "latency_s": percentiles(latencies, (50, 90, 95, 99)),
    }
    for q, value in figures["latency_s"].items():
        if value is not None:
            logger.report_scalar("latency (s)", f"{stage} {q}", value, iteration=0)
    for key, series in (("items_per_s", "items/s"), ("audio_seconds_per_s", "audio s/s")):
        if figures[key] is not None:
            logger.report_scalar("throughput", f"{stage} {series}", figures[key], iteration=0)
    if figures["real_time_factor"] is not None:
        logger.report_scalar("real-time factor", stage, figures["real_time_factor"], iteration=0)
    logger.report_scalar("errors", stage, figures["errors"], iteration=0)
    if latencies:
        counts, edges = np.histogram(latencies, bins=min(20, max(1, len(latencies))))
        logger.report_histogram(
            "latency histogram",
            stage,
            values=counts.tolist(),
            iteration=0,
            xlabels=[f"{edges[i]:.3f}" for i in range(len(counts))],
            xaxis="latency (s)",
            yaxis="items",
        )
    return figures


def report_audio_samples(logger: Any, rows: list[ItemResult], out: Path, limit: int) -> int:
    """The first `limit` synthesized clips as playable debug samples, and their texts as a table."""
    import pandas as pd

    shown = [r for r in rows if r.ok and r.zh_audio][: max(limit, 0)]
    for row in shown:
        logger.report_media("output audio", row.id, iteration=0, local_path=str(out / str(row.zh_audio)))
    if shown:
        table = pd.DataFrame(
            [{"id": r.id, "english": r.en_text, "chinese": r.zh_text, "seconds": r.zh_audio_seconds} for r in shown]
        )
        logger.report_table("output texts", "first clips", iteration=0, table_plot=table)
    return len(shown)
