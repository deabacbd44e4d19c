"""Model sets: which weights a run loads under the real model ids.

`hub` is the real models from the Hugging Face hub and the vocoder zoo (the default caches). `fixtures` is
tiny random models of the same architectures and file layouts (registry.fixtures), built locally and seeded
into caches of their own, so the unchanged loading code runs offline. Fixture output is noise: it exercises
the machinery and says nothing about translation quality.
"""

from __future__ import annotations

import os
from pathlib import Path

from clearml_pipeline.config import RunConfig

MODEL_SETS = ("hub", "fixtures")


def fixtures_root() -> Path:
    return Path(os.environ.get("S2ST_FIXTURES_DIR", "~/.cache/s2st/fixtures")).expanduser()


def apply_model_set(config: RunConfig) -> None:
    """Point the run's caches at the chosen model set (building the fixtures on first use)."""
    name = config.runner.models
    if name == "hub":
        return
    if name != "fixtures":
        raise ValueError(f"unknown model set {name!r}; choose from {', '.join(MODEL_SETS)}")
    from registry.fixtures import build_fixtures, fixture_env

    caches = build_fixtures(fixtures_root())
    for key, value in fixture_env(caches).items():
        if not key.startswith(("HF_", "TRANSFORMERS_")):  # hub settings go through cache_dir, not globals
            os.environ.setdefault(key, value)
    config.speech_translation.model_cache = str(caches.hf_hub_cache)
    config.machine_translation.model_cache = str(caches.hf_hub_cache)
    config.speech_synthesis.model_cache = str(caches.espnet_cache)
    config.speech_synthesis.vocoder_cache = str(caches.vocoder_cache)
