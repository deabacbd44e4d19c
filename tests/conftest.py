"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.fixtures import FixtureCaches, build_fixtures, fixture_env


@pytest.fixture(scope="session")
def fixture_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixtureCaches]:
    """The tiny model caches, built once per session (reused across sessions under $S2ST_FIXTURES_DIR).

    Their environment (offline hub, HF_HUB_CACHE, NLTK_DATA) is set for the rest of the session, so
    subprocesses started by tests load from them. huggingface_hub reads it at import time: code in this
    process should pass the cache dirs explicitly rather than rely on it.
    """
    configured = os.environ.get("S2ST_FIXTURES_DIR")
    caches = build_fixtures(Path(configured) if configured else tmp_path_factory.mktemp("fixtures"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in fixture_env(caches).items():
            patch.setenv(key, value)
        patch.setenv("S2ST_FIXTURES_DIR", str(caches.root))  # `--models fixtures` in subprocesses finds them
        yield caches
