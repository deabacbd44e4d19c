"""The Spanish clips shipped in samples/, so a first `clearml_pipeline run --input samples/` has something to translate.

They are synthetic (espeak-ng, voice `es`): no recording, speaker or licence to account for, and reproducible,
because espeak-ng and soxr are deterministic: the same espeak-ng version regenerates byte-identical files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.sources import TRANSCRIPTS_TSV
from resources.audio import WHISPER_SAMPLE_RATE, load_audio, write_wav

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "samples"
README_NAME = "README.md"
VOICE = "es"


@dataclass(frozen=True)
class Sample:
    name: str  # the WAV's stem, which is also the item id a pipeline run gives it
    spanish: str
    english: str  # a gloss for readers, not a reference translation

    @property
    def file(self) -> str:
        return f"{self.name}.wav"


SAMPLES = (
    Sample(
        "es_01_cafe",
        "Buenos días. ¿Me pone un café con leche, por favor?",
        "Good morning. Could I have a coffee with milk, please?",
    ),
    Sample("es_02_tren", "El tren a Madrid sale a las ocho y media.", "The train to Madrid leaves at half past eight."),
    Sample(
        "es_03_playa",
        "Hoy hace mucho calor, así que vamos a la playa.",
        "It is very hot today, so let's go to the beach.",
    ),
    Sample(
        "es_04_mercado",
        "Necesito comprar pan, huevos y tomates en el mercado.",
        "I need to buy bread, eggs and tomatoes at the market.",
    ),
    Sample(
        "es_05_hermana", "Mi hermana trabaja en un hospital cerca de casa.", "My sister works at a hospital near home."
    ),
)


class SamplesError(RuntimeError):
    """espeak-ng is missing or cannot speak Spanish: the samples cannot be made here."""


def check_espeak(voice: str = VOICE) -> None:
    """Fail with one sentence a person can act on, before any file is written."""
    if shutil.which("espeak-ng") is None:
        raise SamplesError("espeak-ng is not installed: run ./setup.sh or `apt-get install espeak-ng`")
    # -q speaks nothing, but still loads the voice and exits 1 when it does not exist.
    if subprocess.run(["espeak-ng", "-v", voice, "-q", "hola"], capture_output=True).returncode != 0:
        raise SamplesError(f"espeak-ng has no {voice!r} voice: install espeak-ng-data (`apt-get install espeak-ng`)")


def espeak_version() -> str:
    """e.g. "1.51": another version may pronounce differently, so the README records the one used."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    return match.group(1) if match else out.strip()


def speak(text: str, voice: str = VOICE) -> np.ndarray:
    """`text` spoken at 16 kHz mono (espeak-ng writes 22.05 kHz; load_audio resamples with soxr)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        # -b 1: the text is UTF-8 whatever the locale, so accents are spoken the same everywhere.
        subprocess.run(["espeak-ng", "-b", "1", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
        return load_audio(raw, WHISPER_SAMPLE_RATE).samples


def readme(seconds: dict[str, float], version: str) -> str:
    rows = "\n".join(f"| `{s.file}` | {seconds[s.name]:.2f} | {s.spanish} | {s.english} |" for s in SAMPLES)
    return f"""# Sample clips

{len(SAMPLES)} short Spanish sentences for a first run, no data or models to download:

    python -m clearml_pipeline run --local --input samples/ --output out/ --models fixtures

(`--models fixtures` runs tiny random models, so the Mandarin it speaks is noise; drop it for the real models.)

| file | seconds | Spanish | English gloss |
| --- | --- | --- | --- |
{rows}

Synthetic speech (espeak-ng {version}, voice `{VOICE}`), 16 kHz mono 16-bit WAV. `{TRANSCRIPTS_TSV}` lists the
same texts (`path`, `sentence`, `english`); `sentence` follows the folder source's convention, so
`python -m data_prep ingest --source folder --path samples` keeps the Spanish transcripts.

Regenerate them (byte-identical with espeak-ng {version}; another version may pronounce slightly differently):

    python -m data_prep samples --output samples/
"""


def write_samples(output: Path = DEFAULT_OUTPUT, voice: str | None = None) -> list[Path]:
    """Write every clip, transcripts.tsv and README.md into `output`; returns the WAV paths."""
    voice = voice or VOICE  # read at call time, so a test can point it at a voice that does not exist
    check_espeak(voice)
    output.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    seconds: dict[str, float] = {}
    for sample in SAMPLES:
        samples = speak(sample.spanish, voice)
        paths.append(output / sample.file)
        write_wav(paths[-1], samples, WHISPER_SAMPLE_RATE)
        seconds[sample.name] = len(samples) / WHISPER_SAMPLE_RATE
    lines = ["path\tsentence\tenglish"] + [f"{s.file}\t{s.spanish}\t{s.english}" for s in SAMPLES]
    # newline="\n": the same bytes on every OS, so the shipped files never show as changed after a rerun.
    (output / TRANSCRIPTS_TSV).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    (output / README_NAME).write_text(readme(seconds, espeak_version()), encoding="utf-8", newline="\n")
    return paths
