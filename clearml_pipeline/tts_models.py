"""bench-tts's model sets: the hub ids, or fixtures (tiny or full-size). A fixture set uses the whole fixture
caches where a complete build there holds the model; otherwise only the TTS fixtures are built (the three acoustic
models and both vocoders; never whisper-large), under ~/.cache/s2st/tts-fixtures(-full) or $S2ST_TTS_FIXTURES_DIR.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

TTS_ONLY_MARKER = "tts_fixtures.json"


def tts_fixture_root(full: bool) -> Path:
    base = os.environ.get("S2ST_TTS_FIXTURES_DIR", "~/.cache/s2st/tts-fixtures")
    return Path(base + ("-full" if full else "")).expanduser()


def tts_fixture_caches(root: Path, full: bool) -> Any:
    """The TTS fixtures alone (the three acoustic models and both vocoders, tiny or full-size), built once under
    `root` (a file lock; the marker, written last, records the builder code and library versions like
    build_fixtures' own)."""
    import shutil

    from filelock import FileLock

    from registry.fixtures import NLTK_PLACEHOLDERS, build_tts, caches_under, marker_content, quiet_build
    from registry.fixtures._files import write_empty_zip

    caches = caches_under(root)
    caches.root.mkdir(parents=True, exist_ok=True)
    marker = caches.root / TTS_ONLY_MARKER
    with FileLock(str(caches.root / ".lock")):
        expected = marker_content(caches, full)
        try:
            if json.loads(marker.read_text()) == expected:
                return caches
        except (OSError, ValueError):
            pass
        marker.unlink(missing_ok=True)
        staging = caches.root / ".staging"
        for path in (caches.espnet_cache, caches.vocoder_cache, caches.nltk_data, staging):
            shutil.rmtree(path, ignore_errors=True)
        for name in NLTK_PLACEHOLDERS:
            write_empty_zip(caches.nltk_data / name)
        with quiet_build(caches):
            build_tts(caches, staging, full, vits=True)
        shutil.rmtree(staging)
        marker.write_text(json.dumps(expected, indent=2) + "\n")
    return caches


def stage_options(models: str, frames_per_phone: float, **chosen: str | int | None) -> Any:
    """The stage's options for a model set, with the chosen ones (model, vocoder, dtype, ...; None: the stage's)."""
    from steps.options import check_values
    from steps.speech_synthesis import SpeechSynthesisOptions, hub_id

    options = SpeechSynthesisOptions()
    if models != "hub":
        from registry.fixtures import caches_under, is_complete
        from registry.model_sets import fixtures_root

        full = models == "fixtures-full"
        # A complete build of the whole set serves as it is, when it holds the model (VITS is only in the TTS set).
        caches = caches_under(fixtures_root(full))
        wanted = caches.espnet_cache / f"models--{hub_id(chosen.get('model') or options.model).replace('/', '--')}"
        if not (is_complete(caches, full) and wanted.is_dir()):
            caches = tts_fixture_caches(tts_fixture_root(full), full)
        os.environ.setdefault("NLTK_DATA", str(caches.nltk_data))  # g2p_en's import-time nltk.download
        options = replace(
            options,
            model_cache=str(caches.espnet_cache),
            vocoder_cache=str(caches.vocoder_cache),
            maxlenratio=frames_per_phone,
        )
    chosen_options = replace(options, **{key: value for key, value in chosen.items() if value is not None})
    check_values(chosen_options)  # a value the field does not take stops here, not when the stage is built
    return chosen_options
