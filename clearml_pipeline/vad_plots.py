"""The VAD picture of one recording: its waveform with the speech segments stage 1 translated shaded.

Rendered with matplotlib's Agg backend (no display, safe in worker threads and agents) to a PNG, for a ClearML
debug image and OUT/plots. `segments` is a result row's `segments` ([{"start": s, "end": s}, ...], seconds) or
(start, end) pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from resources.audio import Audio

MAX_POINTS = 20_000  # waveform points drawn: a min/max envelope beyond that, so an hour of audio stays light


def _pairs(segments: Iterable[Mapping[str, float] | tuple[float, float]]) -> list[tuple[float, float]]:
    return [(s["start"], s["end"]) if isinstance(s, Mapping) else (s[0], s[1]) for s in segments]


def _envelope(samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times, lows and highs of the waveform in at most MAX_POINTS buckets."""
    bucket = max(1, int(np.ceil(len(samples) / MAX_POINTS)))
    usable = len(samples) // bucket * bucket
    if usable == 0:
        return np.zeros(1), np.zeros(1), np.zeros(1)
    frames = samples[:usable].reshape(-1, bucket)
    times = (np.arange(len(frames)) * bucket + bucket / 2) / sample_rate
    return times, frames.min(axis=1), frames.max(axis=1)


def plot_vad(
    audio: Audio, segments: Iterable[Mapping[str, float] | tuple[float, float]], path: Path, title: str
) -> Path:
    """Write the waveform of `audio` with `segments` shaded to the PNG `path`; returns `path`."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    spans = _pairs(segments)
    figure = Figure(figsize=(10, 2.6), dpi=100)  # a bare Figure draws through Agg, not pyplot's global state
    axes = figure.add_subplot()
    times, lows, highs = _envelope(np.asarray(audio.samples, dtype=np.float32), audio.sample_rate)
    axes.fill_between(times, lows, highs, color="#3b6ea5", linewidth=0.5)
    for start, end in spans:
        axes.axvspan(start, end, color="#f2a541", alpha=0.35, linewidth=0)
    axes.set_xlim(0, max(audio.seconds, 1e-3))
    axes.set_ylim(-1.05, 1.05)
    axes.set_xlabel("seconds")
    axes.set_yticks([])
    speech = sum(end - start for start, end in spans)
    axes.set_title(f"{title}: {len(spans)} speech segment(s), {speech:.1f} s of {audio.seconds:.1f} s", fontsize=10)
    axes.legend(handles=[Patch(color="#f2a541", alpha=0.35, label="speech (translated)")], loc="upper right",
                fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
