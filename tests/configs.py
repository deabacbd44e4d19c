"""Run configs for tests: the fixture model set (the session's tiny models), with the changes a test asks for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clearml_pipeline.config import RunConfig
from registry.model_sets import decode_caps, model_caches


def fixture_config(changes: Mapping[str, Mapping[str, Any]] | None = None) -> RunConfig:
    """RunConfig on the fixture caches (found through S2ST_FIXTURES_DIR, set by the fixture_caches fixture), with
    the fixture set's decode defaults as `run --models fixtures` has them, then the test's own changes."""
    config = RunConfig().updated({"runner": {"models": "fixtures"}})
    config = config.updated(model_caches("fixtures", config.sections()))
    return config.updated(decode_caps("fixtures", config.sections())).updated(changes or {})


def tts_stage(**changes: Any) -> Any:
    """The speech synthesis stage on the fixture caches with some options changed, loaded."""
    from dataclasses import replace

    from steps.speech_synthesis import EspnetSynthesizer

    stage = EspnetSynthesizer(replace(fixture_config().speech_synthesis, **changes))
    stage.ensure_ready()
    return stage
