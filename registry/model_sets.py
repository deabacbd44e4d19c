"""Model sets: which weights a run loads under the real model ids.

`hub` is the real models from the Hugging Face hub and the vocoder zoo (the default caches). `fixtures` is
tiny random models of the same architectures and file layouts (registry.fixtures), built locally and seeded
into caches of their own, so the unchanged loading code runs offline. Fixture output is noise: it exercises
the machinery and says nothing about translation quality. `fixtures-full` is the same with the real models'
dimensions (whisper-large, opus-mt-en-zh, the CSMSC Tacotron2 and HiFiGAN), for throughput benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clearml_pipeline.config import RunConfig

MODEL_SETS = ("hub", "fixtures", "fixtures-full")
# Random weights never choose end-of-sequence, so fixture decoding is capped at realistic output lengths for a
# Common Voice clip (about 5 s of speech: ~25 English tokens, ~40 Marian target pieces); without the caps a
# fixture run would decode Whisper's full 440-token budget and cost nothing like a real run.
FIXTURE_DECODE_CAPS = {"speech_translation": 32, "machine_translation": 48}


def fixtures_root(full: bool = False) -> Path:
    if full:
        return Path(os.environ.get("S2ST_FULL_FIXTURES_DIR", "~/.cache/s2st/fixtures-full")).expanduser()
    return Path(os.environ.get("S2ST_FIXTURES_DIR", "~/.cache/s2st/fixtures")).expanduser()


def apply_model_set(config: RunConfig, evaluation: Any | None = None) -> None:
    """Point the run's caches (and the evaluation's ASR model's) at the chosen model set, building the fixtures on
    first use. Idempotent: each pipeline step calls it again with the options it received."""
    name = config.runner.models
    if name == "hub":
        return
    if name not in MODEL_SETS:
        raise ValueError(f"unknown model set {name!r}; choose from {', '.join(MODEL_SETS)}")
    from registry.fixtures import build_fixtures, fixture_env

    full = name == "fixtures-full"
    caches = build_fixtures(fixtures_root(full), full=full)
    for key, value in fixture_env(caches).items():
        if not key.startswith(("HF_", "TRANSFORMERS_")):  # hub settings go through cache_dir, not globals
            os.environ.setdefault(key, value)
    for section, cap in FIXTURE_DECODE_CAPS.items():
        options = getattr(config, section)
        if options.max_new_tokens == type(options)().max_new_tokens:  # the user did not choose one
            options.max_new_tokens = cap
    config.speech_translation.model_cache = str(caches.hf_hub_cache)
    config.machine_translation.model_cache = str(caches.hf_hub_cache)
    config.speech_synthesis.model_cache = str(caches.espnet_cache)
    config.speech_synthesis.vocoder_cache = str(caches.vocoder_cache)
    if evaluation is not None:  # intelligibility re-transcribes with the fixture Whisper, capped like stage 1
        evaluation.asr_model_cache = str(caches.hf_hub_cache)
        if evaluation.asr_max_new_tokens == type(evaluation)().asr_max_new_tokens:
            evaluation.asr_max_new_tokens = FIXTURE_DECODE_CAPS["speech_translation"]
