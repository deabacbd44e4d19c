"""registry.fixtures: tiny models that the unchanged production loading calls load offline, under the real ids.

The production calls run in subprocesses with fixture_env (huggingface_hub reads it at import time) and with
sockets disabled, so any network attempt fails and is reported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import registry.fixtures as fx
from registry.fixtures import FixtureCaches, build_fixtures, fixture_env
from resources.weights import sha256_file

REPO = Path(__file__).resolve().parents[1]
TTS_TEXT = "卡尔普陪外孙玩滑梯"
# ESPnet's pypinyin_g2p_phone uses pypinyin's strict finals: 孙 is s + uen1 (loosely written "un1").
TTS_PHONES = ["k", "a3", "er3", "p", "u3", "p", "ei2", "uai4", "s", "uen1", "uan2", "h", "ua2", "t", "i1"]
WHISPER_MAX_NEW_TOKENS = 8

NO_NETWORK = """
import json, socket
network_attempts = []
def _refuse(*args, **kwargs):
    network_attempts.append(repr([a for a in args if not isinstance(a, socket.socket)]))
    raise OSError("network access is disabled in fixture tests")
socket.socket.connect = socket.socket.connect_ex = _refuse
socket.create_connection = socket.getaddrinfo = _refuse
result = {}
"""

HF_PROBE = f"""
import numpy as np
from transformers import MarianMTModel, MarianTokenizer, WhisperForConditionalGeneration, WhisperProcessor
from registry.fixtures import MARIAN_ID, WHISPER_ID

processor = WhisperProcessor.from_pretrained(WHISPER_ID, revision=None)
model = WhisperForConditionalGeneration.from_pretrained(WHISPER_ID, revision=None)
tok = processor.tokenizer
result["whisper_len"] = len(tok)
result["whisper_tokens"] = dict(zip(range(50256, 51865), tok.convert_ids_to_tokens(list(range(50256, 51865)))))
first_steps = []
model.model.decoder.register_forward_pre_hook(
    lambda _m, args, kwargs: first_steps.append((kwargs.get("input_ids") if kwargs.get("input_ids") is not None
                                                 else args[0]).tolist()),
    with_kwargs=True,
)
rng = np.random.default_rng(0)
audio = [rng.standard_normal(16000 * 30).astype("float32") * 0.1, rng.standard_normal(16000 * 2).astype("float32")]
features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
ids = model.generate(features, language="es", task="translate", return_timestamps=False,
                     max_new_tokens={WHISPER_MAX_NEW_TOKENS})
result["whisper_first_step"] = first_steps[0]
result["whisper_ids"] = ids.tolist()
texts = processor.batch_decode(ids, skip_special_tokens=True)
result["whisper_texts"] = texts

mt_tok = MarianTokenizer.from_pretrained(MARIAN_ID)
mt = MarianMTModel.from_pretrained(MARIAN_ID)
batch = mt_tok([">>cmn_Hans<< " + t for t in [*texts, "Hello, how are you?"]], return_tensors="pt", padding=True)
result["marian_target_id"] = mt_tok.convert_tokens_to_ids(">>cmn_Hans<<")
result["marian_unk_id"] = mt_tok.unk_token_id
result["marian_first_ids"] = batch.input_ids[:, 0].tolist()
out = mt.generate(**batch, num_beams=4, max_new_tokens=12)
result["marian_texts"] = mt_tok.batch_decode(out, skip_special_tokens=True)
"""

TTS_PROBE = f"""
import sys
import torch
from resources.compat import patch_scipy_kaiser
patch_scipy_kaiser()
from espnet2.bin.tts_inference import Text2Speech
from espnet_model_zoo.downloader import ModelDownloader
from parallel_wavegan.utils import download_pretrained_model
from registry.fixtures import ESPNET_TTS_ID, VOCODER_TAG

espnet_cache, vocoder_cache = sys.argv[1:3]
kwargs = ModelDownloader(cachedir=espnet_cache).download_and_unpack(ESPNET_TTS_ID)
vocoder_file = download_pretrained_model(VOCODER_TAG, download_dir=vocoder_cache)
tts = Text2Speech(**kwargs, vocoder_file=vocoder_file, device="cpu", maxlenratio=10.0, minlenratio=0.0,
                  threshold=0.5)
out = tts("{TTS_TEXT}")
token_list = tts.train_args.token_list
ids = tts.preprocess_fn("probe", dict(text="{TTS_TEXT}"))["text"].tolist()
missing, unexpected = tts.model.load_state_dict(torch.load(kwargs["model_file"], map_location="cpu"), strict=False)
result.update(
    fs=tts.fs, wav_len=len(out["wav"]), wav_dtype=str(out["wav"].dtype), frames=len(out["feat_gen"]),
    wav_peak=float(out["wav"].abs().max()), token_list=token_list, phones=[token_list[i] for i in ids],
    missing=list(missing), unexpected=list(unexpected), vocoder_normalizes=tts.vocoder.normalize_before,
    vocoder_file=vocoder_file, kwargs=kwargs,
)
"""

DONE = "\nresult['network_attempts'] = network_attempts\nprint(json.dumps(result, ensure_ascii=False))\n"


def run_probe(code: str, caches: FixtureCaches, *args: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter with the fixture environment; it prints its `result` as JSON."""
    env = {**os.environ, **fixture_env(caches)}
    script = NO_NETWORK + textwrap.dedent(code) + DONE
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hf(fixture_caches: FixtureCaches) -> dict[str, Any]:
    return run_probe(HF_PROBE, fixture_caches)


@pytest.fixture(scope="module")
def tts(fixture_caches: FixtureCaches) -> dict[str, Any]:
    return run_probe(TTS_PROBE, fixture_caches, str(fixture_caches.espnet_cache), str(fixture_caches.vocoder_cache))


def snapshot(caches: FixtureCaches, repo_id: str) -> Path:
    repo = caches.hf_hub_cache / f"models--{repo_id.replace('/', '--')}"
    return repo / "snapshots" / (repo / "refs" / "main").read_text()


# --- Whisper ---------------------------------------------------------------------------------------------------


def test_whisper_special_tokens_sit_at_the_real_ids(hf: dict[str, Any]) -> None:
    tokens = {int(i): t for i, t in hf["whisper_tokens"].items()}
    assert hf["whisper_len"] == 51865
    assert tokens[50256] == ""  # CTranslate2 calls the vocabulary multilingual only if 50256 exists
    expected = {
        50257: "<|endoftext|>",
        50258: "<|startoftranscript|>",
        50259: "<|en|>",
        50260: "<|zh|>",
        50261: "<|de|>",
        50262: "<|es|>",
        50357: "<|su|>",
        50358: "<|translate|>",
        50359: "<|transcribe|>",
        50360: "<|startoflm|>",
        50361: "<|startofprev|>",
        50362: "<|nocaptions|>",
        50363: "<|notimestamps|>",
        50364: "<|0.00|>",
        50365: "<|0.02|>",
        51864: "<|30.00|>",
    }
    assert {i: tokens[i] for i in expected} == expected
    languages = [tokens[i] for i in range(50259, 50358)]
    assert len(set(languages)) == 99 and all(t.startswith("<|") and len(t) <= 7 for t in languages)


def test_whisper_generate_forces_spanish_translate_without_timestamps(hf: dict[str, Any]) -> None:
    assert [row[:4] for row in hf["whisper_first_step"]] == [[50258, 50262, 50358, 50363]] * 2


def test_whisper_generate_stops_at_max_new_tokens_on_30s_of_noise(hf: dict[str, Any]) -> None:
    for row in hf["whisper_ids"]:
        assert len(row) <= WHISPER_MAX_NEW_TOKENS
        assert all(i < 50256 or i == 50257 for i in row)  # control and timestamp tokens are suppressed
    assert all(isinstance(t, str) and t.strip() for t in hf["whisper_texts"])


def test_whisper_repo_has_what_transformers_and_ctranslate2_read(fixture_caches: FixtureCaches) -> None:
    folder = snapshot(fixture_caches, fx.WHISPER_ID)
    names = {p.name for p in folder.iterdir()}
    assert names >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "special_tokens_map.json",
        "normalizer.json",
    }
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["is_multilingual"] is True and gen["forced_decoder_ids"] is None and gen["max_length"] == 448
    assert gen["lang_to_id"]["<|es|>"] == 50262 and gen["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert gen["decoder_start_token_id"] == 50258 and gen["no_timestamps_token_id"] == 50363
    assert gen["begin_suppress_tokens"] == [220, 50257] and gen["alignment_heads"]
    features = json.loads((folder / "preprocessor_config.json").read_text())
    assert features["feature_size"] == 80 and features["sampling_rate"] == 16000


# --- Marian ----------------------------------------------------------------------------------------------------


def test_marian_target_language_token_is_one_id(hf: dict[str, Any]) -> None:
    target = hf["marian_target_id"]
    assert target != hf["marian_unk_id"]
    assert hf["marian_first_ids"] == [target] * len(hf["marian_first_ids"])


def test_marian_generates_chinese_characters(hf: dict[str, Any]) -> None:
    for text in hf["marian_texts"]:
        assert text and all("\u4e00" <= ch <= "\u9fff" or ch in "，。？！ " for ch in text), text


# --- ESPnet Tacotron2 + HiFiGAN --------------------------------------------------------------------------------


def test_tts_makes_a_float_waveform_at_24k_in_whole_frames(tts: dict[str, Any]) -> None:
    assert tts["fs"] == 24000 and tts["wav_dtype"] == "torch.float32" and tts["wav_peak"] > 0
    assert tts["wav_len"] == 300 * tts["frames"]


def test_tts_runs_to_about_ten_frames_per_phone(tts: dict[str, Any]) -> None:
    n_phones = len(tts["phones"])
    assert tts["frames"] == 10 * (n_phones + 1)  # maxlenratio x (tokens + <sos/eos>): the stop token never fires
    assert 9 <= tts["frames"] / n_phones <= 12


def test_tts_vocabulary_covers_the_sentence(tts: dict[str, Any]) -> None:
    assert tts["phones"] == TTS_PHONES  # no <unk> among them
    tokens = tts["token_list"]
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>" and len(set(tokens)) == len(tokens)
    assert 180 <= len(tokens) <= 260  # initials + tonal finals of the whole CJK block


def test_tts_weights_and_vocoder_load_completely(tts: dict[str, Any], fixture_caches: FixtureCaches) -> None:
    assert tts["missing"] == [] and tts["unexpected"] == []  # ESPnet itself loads with strict=False
    assert tts["vocoder_normalizes"] is True  # stats.h5 found beside the checkpoint
    assert Path(tts["vocoder_file"]).parent == fixture_caches.vocoder_cache / fx.VOCODER_TAG
    assert set(tts["kwargs"]) == {"train_config", "model_file"}


def test_no_network_was_attempted(hf: dict[str, Any], tts: dict[str, Any]) -> None:
    assert hf["network_attempts"] == [] and tts["network_attempts"] == []


# --- Building --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, str, FixtureCaches]:
    """One build from the command line in a fresh interpreter (timed), one through the API in this one."""
    cli_root = tmp_path_factory.mktemp("build_cli")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "registry.fixtures", "--root", str(cli_root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cli_root, seconds, proc.stdout + proc.stderr, build_fixtures(tmp_path_factory.mktemp("build_api"))


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (fx.MARKER, ".lock")
    }


def test_a_cold_build_takes_well_under_a_minute(two_builds: tuple[Path, float, str, FixtureCaches]) -> None:
    cli_root, seconds, stdout, _ = two_builds
    assert seconds < 45, f"building took {seconds:.1f} s"
    assert f"hf_hub_cache: {cli_root.resolve() / 'hf_hub'}" in stdout and "HF_HUB_OFFLINE=1" in stdout


def test_a_build_says_where_its_caches_are_and_nothing_else(two_builds: tuple[Path, float, str, FixtureCaches]) -> None:
    """A newcomer's first run builds the fixtures: no notice from the libraries about what we build from (espnet's
    flash_attn import, its FastSpeech2 config fallbacks, deprecations)."""
    output = two_builds[2]
    assert output.startswith("fixtures ready in ") and "HF_HUB_OFFLINE=1" in output
    assert not [line for line in output.splitlines() if re.search(r"warning|flash|fallback", line, re.IGNORECASE)]


def test_two_builds_are_identical_byte_for_byte(two_builds: tuple[Path, float, str, FixtureCaches]) -> None:
    cli_root, _, _, api = two_builds
    first, second = file_hashes(cli_root.resolve()), file_hashes(api.root)
    weights = [name for name in first if name.endswith((".safetensors", ".pth", ".pkl"))]
    assert len(weights) == 6  # whisper, marian, tacotron2, fastspeech2, hifigan, multi-band melgan
    assert first == second


def test_a_complete_build_is_returned_at_once(two_builds: tuple[Path, float, str, FixtureCaches]) -> None:
    api = two_builds[3]
    marker = api.root / fx.MARKER
    stamp = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert build_fixtures(api.root) == api
    assert time.perf_counter() - start < 1.0 and marker.stat().st_mtime_ns == stamp


def test_an_interrupted_build_is_not_taken_for_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    caches = fx.caches_under(tmp_path)
    (tmp_path / fx.MARKER).write_text(json.dumps(fx.marker_content(caches)))
    assert fx.is_complete(caches)

    def crash(caches: FixtureCaches, staging: Path, full: bool = False) -> None:
        (caches.hf_hub_cache / "half").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(fx, "build_all", crash)
    with pytest.raises(KeyboardInterrupt):
        build_fixtures(tmp_path, force=True)
    assert not (tmp_path / fx.MARKER).exists() and not fx.is_complete(caches)


def test_a_moved_or_other_version_build_is_rebuilt(tmp_path: Path) -> None:
    caches = fx.caches_under(tmp_path)
    for change in ({"root": "/elsewhere"}, {"fixture_version": fx.FIXTURE_VERSION - 1}, {"source": "older code"}):
        (tmp_path / fx.MARKER).write_text(json.dumps({**fx.marker_content(caches), **change}))
        assert not fx.is_complete(caches)


def test_the_api_imports_no_model_libraries() -> None:
    code = "import sys, registry.fixtures; print(sorted({'torch', 'transformers', 'espnet2'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_fixture_env_points_offline_at_the_caches(fixture_caches: FixtureCaches) -> None:
    env = fixture_env(fixture_caches)
    assert env["HF_HUB_CACHE"] == str(fixture_caches.hf_hub_cache)
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert (Path(env["NLTK_DATA"]) / "corpora" / "cmudict.zip").is_file()
