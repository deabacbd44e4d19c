"""Model sets: which weights a run loads under the real model ids.

`hub` is the real models from the Hugging Face hub and the vocoder zoo (the default caches). `fixtures` is
tiny random models of the same architectures and file layouts (registry.fixtures), built locally and seeded
into caches of their own, so the unchanged loading code runs offline. Fixture output is noise: it exercises
the machinery and says nothing about translation quality. `fixtures-full` is the same with the real models'
dimensions (whisper-large, opus-mt-en-zh, the CSMSC Tacotron2 and HiFiGAN), for throughput benchmarks.

Both functions take a run's option sections by name and return changes ({section: {field: value}}), found
through the fields' metadata (`cache`, `fixture_cap`: see steps.options), never by a list of stage names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steps.options import fields_with

MODEL_SETS = ("hub", "fixtures", "fixtures-full")
Changes = dict[str, dict[str, Any]]


def check_model_set(name: str) -> None:
    if name not in MODEL_SETS:
        raise ValueError(f"unknown model set {name!r}; choose from {', '.join(MODEL_SETS)}")


def fixtures_root(full: bool = False) -> Path:
    if full:
        return Path(os.environ.get("S2ST_FULL_FIXTURES_DIR", "~/.cache/s2st/fixtures-full")).expanduser()
    return Path(os.environ.get("S2ST_FIXTURES_DIR", "~/.cache/s2st/fixtures")).expanduser()


def decode_caps(name: str, sections: Mapping[str, Any]) -> Changes:
    """A fixture set's default decode lengths: random weights never choose end-of-sequence, so without a cap a
    fixture run decodes its whole budget (440 Whisper tokens) and costs nothing like a real run. These are
    defaults: the caller applies the user's explicit options after them."""
    check_model_set(name)
    if name == "hub":
        return {}
    return {
        section: caps
        for section, options in sections.items()
        if (caps := {f.name: f.metadata["fixture_cap"] for f in fields_with(options, "fixture_cap")})
    }


def model_caches(name: str, sections: Mapping[str, Any]) -> Changes:
    """Point every model cache field at the chosen set's caches (building the fixtures on first use). Each
    process that loads models calls it: the caches are this machine's, wherever the config was made."""
    check_model_set(name)
    if name == "hub":
        return {}
    from registry.fixtures import build_fixtures, fixture_env

    full = name == "fixtures-full"
    caches = build_fixtures(fixtures_root(full), full=full)
    for key, value in fixture_env(caches).items():
        if not key.startswith(("HF_", "TRANSFORMERS_")):  # hub settings go through cache_dir, not globals
            os.environ.setdefault(key, value)
    folders = {"hf": caches.hf_hub_cache, "espnet": caches.espnet_cache, "vocoder": caches.vocoder_cache}
    return {
        section: paths
        for section, options in sections.items()
        if (paths := {f.name: str(folders[f.metadata["cache"]]) for f in fields_with(options, "cache")})
    }
