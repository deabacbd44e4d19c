"""Voice activity detection with Silero VAD, and the cutting of a recording into Whisper segments.

Silero VAD is the ONNX model faster-whisper ships in its wheel (faster_whisper/assets/silero_vad_v6.onnx), run by
faster_whisper.vad.get_speech_timestamps on onnxruntime (CPU, offline, loaded once per process): the same model
and code faster-whisper's own vad_filter uses, not a re-implementation. It finds the speech regions; tones, noise
and silence have none, so they never reach Whisper (which invents text for them: "Subscribe", "Thank you.").

Regions are then grouped, in order, into segments of at most `max_seconds` (Whisper's 30 s window): a segment
starts and ends on a region boundary, so a cut never falls inside speech, unless a single region is itself longer
than the window (Silero then splits it at its last pause over 98 ms, else hard at the limit).
"""

from __future__ import annotations

from dataclasses import dataclass

from resources.audio import Audio


@dataclass(frozen=True)
class Segment:
    """A span of the recording, in samples (start inclusive, end exclusive)."""

    start: int
    end: int

    def seconds(self, sample_rate: int) -> tuple[float, float]:
        return round(self.start / sample_rate, 3), round(self.end / sample_rate, 3)

    def cut(self, audio: Audio) -> Audio:
        return Audio(audio.samples[self.start : self.end], audio.sample_rate)


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5  # Silero's speech probability threshold (its own default)
    min_speech_seconds: float = 0.25  # shorter blips (clicks, breaths) are not speech (Silero's default)
    min_silence_seconds: float = 2.0  # a pause shorter than this stays inside one region (faster-whisper's)
    pad_seconds: float = 0.4  # kept around each region: word onsets and tails (faster-whisper's default)
    max_seconds: float = 30.0  # Whisper's window: the longest segment


def speech_regions(audio: Audio, settings: VadSettings) -> list[Segment]:
    """Silero's speech regions of `audio` (16 kHz mono), none for non-speech."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(
        threshold=settings.threshold,
        min_speech_duration_ms=int(settings.min_speech_seconds * 1000),
        max_speech_duration_s=settings.max_seconds,
        min_silence_duration_ms=int(settings.min_silence_seconds * 1000),
        speech_pad_ms=int(settings.pad_seconds * 1000),
    )
    found = get_speech_timestamps(audio.samples, options, sampling_rate=audio.sample_rate)
    return [Segment(int(r["start"]), min(int(r["end"]), len(audio.samples))) for r in found if r["end"] > r["start"]]


def group_regions(regions: list[Segment], max_samples: int) -> list[Segment]:
    """Consecutive regions joined while the joined span fits in `max_samples`; a longer region stands alone."""
    segments: list[Segment] = []
    for region in regions:
        if segments and region.end - segments[-1].start <= max_samples:
            segments[-1] = Segment(segments[-1].start, region.end)
        else:
            segments.append(region)
    return segments


def speech_segments(audio: Audio, settings: VadSettings) -> list[Segment]:
    """The recording's speech as Whisper segments of at most `settings.max_seconds`, cut between speech regions."""
    return group_regions(speech_regions(audio, settings), int(settings.max_seconds * audio.sample_rate))


def spans(chunks: list[Audio]) -> list[Segment]:
    """The segments that consecutive chunks of one recording cover (for cuts made without VAD)."""
    found, start = [], 0
    for chunk in chunks:
        found.append(Segment(start, start + len(chunk.samples)))
        start += len(chunk.samples)
    return found
