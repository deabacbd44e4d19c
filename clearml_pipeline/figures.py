"""One set of figures for a stage, the same in summaries, step scalars, the evaluation and the bench.

Latency percentiles are always p50/p90/p95/p99: comparing runs needs the same names everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from steps.results import ItemResult

PERCENTILES = (50, 90, 95, 99)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": float(np.percentile(values, q)) if len(values) else None for q in PERCENTILES}


def stage_figures(rows: Sequence[ItemResult], stage: str, busy_s: float) -> dict[str, Any]:
    """Items that reached `stage`, its errors, busy seconds, throughput, real-time factor and latency."""
    latencies = [r.latency_s[stage] for r in rows if stage in r.latency_s]
    audio_seconds = sum(r.audio_seconds or 0.0 for r in rows if stage in r.latency_s)
    return {
        "items": len(latencies),
        "errors": sum(1 for r in rows if r.stage == stage),
        "busy_s": busy_s,
        "items_per_s": len(latencies) / busy_s if busy_s > 0 else None,
        "audio_seconds_per_s": audio_seconds / busy_s if busy_s > 0 else None,
        "real_time_factor": busy_s / audio_seconds if audio_seconds > 0 else None,
        "latency_s": percentiles(latencies),
    }
