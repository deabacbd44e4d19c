"""What a stage task shows in the ClearML UI, under names that stay the same from run to run.

Scalars (compare runs side by side): "<stage> latency (s)"/"item" per item (iteration = item index),
"latency (s)"/"<stage> p50|p90|p95|p99", "throughput"/"<stage> items/s" and "<stage> audio s/s",
"real-time factor"/"<stage>", "errors"/"<stage>". Plots: "latency histogram"/"<stage>". Speech synthesis adds
the first clips as playable audio ("output audio"/<item id>) and a table of their English and Chinese text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clearml_pipeline.figures import stage_figures
from steps.results import ItemResult
from steps.stages import StepContext


def report_stage(logger: Any, stage: str, rows: list[ItemResult], busy_s: float) -> dict[str, Any]:
    """Report one stage's figures (clearml_pipeline.figures, as summary.json has them); returns them (they also go
    into the step's run.json)."""
    figures = stage_figures(rows, stage, busy_s)
    latencies = [r.latency_s[stage] for r in rows if stage in r.latency_s]
    for index, row in enumerate(rows):
        if stage in row.latency_s:
            logger.report_scalar(f"{stage} latency (s)", "item", row.latency_s[stage], iteration=index)
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

    clips = [(r, path) for r in rows if r.ok and (path := r.audio_inside(out))][: max(limit, 0)]  # none outside OUT
    for row, path in clips:
        logger.report_media("output audio", row.id, iteration=0, local_path=str(path))
    shown = [row for row, _ in clips]
    if shown:
        table = pd.DataFrame(
            [{"id": r.id, "english": r.en_text, "chinese": r.zh_text, "seconds": r.zh_audio_seconds} for r in shown]
        )
        logger.report_table("output texts", "first clips", iteration=0, table_plot=table)
    return len(shown)


def report_vad_plots(logger: Any, rows: list[ItemResult], ctx: StepContext, limit: int) -> list[str]:
    """The VAD picture (waveform, shaded speech segments) of the first `limit` decoded inputs, as in seed 003:
    PNGs under OUT/plots/vad/ and ClearML debug images ("vad"/<item id>). Returns the PNG paths (relative)."""
    from clearml_pipeline.vad_plots import plot_vad
    from resources.audio import AudioError, load_audio

    written = []
    for row in [r for r in rows if r.segments][: max(limit, 0)]:
        try:
            audio = load_audio(ctx.source(row), max_seconds=ctx.max_audio_seconds)
        except (AudioError, ValueError):
            continue  # the row already says why its input failed
        png = plot_vad(audio, row.segments, ctx.out / "plots" / "vad" / f"{row.id}.png", row.id)
        logger.report_image("vad", row.id, iteration=0, local_path=str(png))
        written.append(png.relative_to(ctx.out).as_posix())
    return written
