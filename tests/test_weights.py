"""A model that is neither cached nor reachable fails at once, naming the model and how to supply it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resources import weights as hub
from tests.speech import speak

CLOSED_PORT = "http://127.0.0.1:9"  # discard port: nothing listens, the connection is refused at once


def test_unreachable_hub_and_empty_cache_raise_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.constants, "ENDPOINT", CLOSED_PORT)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(hub.ModelUnavailableError) as info:
        hub.resolve_hf_model("openai/whisper-large", cache_dir=tmp_path)
    message = str(info.value)
    assert "openai/whisper-large" in message and "cannot be reached" in message and "hf download" in message


def test_offline_mode_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.ModelUnavailableError, match="offline mode is on"):
        hub.resolve_hf_model("Helsinki-NLP/opus-mt-en-zh", cache_dir=tmp_path)


def test_a_local_folder_is_used_as_is(tmp_path: Path) -> None:
    local = hub.resolve_hf_model(str(tmp_path))
    assert local.path == tmp_path.resolve() and local.revision == "local"


def test_a_mistyped_folder_is_named_as_a_folder_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    """A path is never looked up on the hub (huggingface_hub answered 'Repo id must be in the form ...')."""
    (tmp_path / "weights.bin").write_bytes(b"")
    for given, what in ((tmp_path / "mdoel", "does not exist"), (tmp_path / "weights.bin", "is not a folder")):
        with pytest.raises(hub.ModelUnavailableError, match=re.escape(f"model folder '{given}' {what}")):
            hub.resolve_hf_model(str(given), cache_dir=tmp_path)
    with pytest.raises(hub.ModelUnavailableError, match=re.escape("model folder './opus-mt' does not exist")):
        hub.resolve_hf_model("./opus-mt", cache_dir=tmp_path)


def test_reachable_is_false_for_closed_ports_and_unknown_hosts() -> None:
    assert not hub.reachable(CLOSED_PORT, timeout_s=2)
    assert not hub.reachable("https://no-such-host.invalid", timeout_s=2)


def test_run_without_models_fails_fast_with_the_model_named(tmp_path: Path) -> None:
    speak("Hola.", tmp_path / "in" / "a.wav")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_ENDPOINT": CLOSED_PORT}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clearml_pipeline",
            "run",
            "--local",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "openai/whisper-large" in proc.stderr and "To supply it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_vocoder_is_located_without_loading_or_downloading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the run's model check uses: a cached zoo archive or a checkpoint is found; a tag neither cached nor
    reachable is a ModelUnavailableError naming it; Griffin-Lim needs nothing."""
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: False)
    (tmp_path / "csmsc_hifigan.v1.tar.gz").write_bytes(b"archive")
    checkpoint = tmp_path / "mine.pkl"
    checkpoint.write_bytes(b"weights")
    assert hub.locate_vocoder("parallel_wavegan/csmsc_hifigan.v1", tmp_path) == tmp_path / "csmsc_hifigan.v1.tar.gz"
    assert hub.locate_vocoder(str(checkpoint), tmp_path / "elsewhere") == checkpoint.resolve()
    assert hub.locate_vocoder(hub.GRIFFIN_LIM, tmp_path) is None
    with pytest.raises(hub.ModelUnavailableError, match=r"'parallel_wavegan/no_such_tag'.*cannot be reached"):
        hub.locate_vocoder("parallel_wavegan/no_such_tag", tmp_path)
    with pytest.raises(ValueError, match="must be 'parallel_wavegan/<tag>'"):
        hub.locate_vocoder("hifigan", tmp_path)


def test_the_model_check_finds_a_zoo_name_as_its_hub_mirror(fixture_caches: object) -> None:
    """`--tts-model kan-bayashi/<name>` is what the TTS step loads (as espnet/kan-bayashi_<name>); the check
    before the first step must look it up the same way, and name the flag when the mirror is missing too."""
    from clearml_pipeline.config import PipelineConfig
    from clearml_pipeline.model_check import check_models
    from tests.configs import fixture_config

    tacotron = "kan-bayashi/csmsc_tts_train_tacotron2_raw_phn_pypinyin_g2p_phone_train.loss.best"
    run = fixture_config({"speech_synthesis": {"model": tacotron}})
    config = PipelineConfig(run=run).updated({"evaluation": {"intelligibility": False, "spanish_wer": False}})
    found = check_models(config)
    assert any("espnet--kan-bayashi_csmsc_tts_train_tacotron2" in str(path) for path in found)
    missing = config.updated({"speech_synthesis": {"model": "kan-bayashi/no_such_model"}})
    with pytest.raises(hub.ModelUnavailableError, match=r"--tts-model.*espnet/kan-bayashi_no_such_model"):
        check_models(missing)
