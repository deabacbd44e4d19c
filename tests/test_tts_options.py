"""The other TTS options on the fixtures: the multi-band MelGAN vocoder, the Conformer FastSpeech2 acoustic
model and the text-to-wave VITS, each loaded by the unchanged stage code from caches under the real ids, offline."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from registry.fixtures import FASTSPEECH2_ID, MB_MELGAN_TAG, VITS_ID, FixtureCaches
from registry.fixtures.espnet_fastspeech2 import FRAMES_PER_TOKEN, ZOO_TAG
from registry.fixtures.espnet_vits import ZOO_TAG as VITS_ZOO_TAG
from steps.channels_last import ChannelsLastConv1d, ChannelsLastConvTranspose1d
from steps.speech_synthesis import NO_VOCODER, EspnetSynthesizer, Speech, denormalized, hub_id
from steps.tacotron_batch import batchable, batched_hifigan, prenet_dropout, vocode
from tests.configs import fixture_config, tts_stage

MB_MELGAN = f"parallel_wavegan/{MB_MELGAN_TAG}"
HOP = 300
ITEMS = ["卡尔普陪外孙玩滑梯。你好！", "我有3只猫，名字叫Tom！", "一。二。三。"]


@pytest.fixture(scope="module")
def melgan(fixture_caches: FixtureCaches) -> EspnetSynthesizer:
    return tts_stage(vocoder=MB_MELGAN, batch_size=4, batch_vocoder="true")


@pytest.fixture(scope="module")
def fastspeech2(fixture_caches: FixtureCaches) -> EspnetSynthesizer:
    return tts_stage(model=FASTSPEECH2_ID, vocoder=MB_MELGAN)


def token_count(stage: EspnetSynthesizer, piece: str) -> int:
    return len(stage.tts.preprocess_fn("<d>", {"text": piece})["text"])


def test_multi_band_melgan_loads_with_its_pqmf(melgan: EspnetSynthesizer, fixture_caches: FixtureCaches) -> None:
    from parallel_wavegan.models import MelGANGenerator

    generator = melgan.tts.vocoder.vocoder
    assert isinstance(generator, MelGANGenerator) and generator.pqmf is not None  # load_model attached it
    assert generator.pqmf.subbands == 4 and melgan.tts.vocoder.normalize_before
    assert batched_hifigan(melgan.tts.vocoder) is None  # reflection padding: vocoded piece by piece
    roles = {m.role: m for m in melgan.models()}
    assert roles["vocoder"].model_id == MB_MELGAN and Path(roles["vocoder"].path).parent.name == MB_MELGAN_TAG


def test_multi_band_melgan_waves_are_the_pqmf_synthesis_of_the_bands(melgan: EspnetSynthesizer) -> None:
    t2s = melgan.tts
    generator = t2s.vocoder.vocoder
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0):
        feats = [t2s(text)["feat_gen_denorm"] for text in ("你好", "明天见")]
        waves = vocode(t2s.vocoder, feats)  # the batched path's call
        for f, wave in zip(feats, waves, strict=True):
            bands = generator.melgan(((f - generator.mean) / generator.scale).T[None])  # (1, 4, frames * 75)
            assert bands.shape == (1, 4, len(f) * HOP // 4)
            expected = generator.pqmf.synthesis(bands).view(-1)
            assert wave.shape == expected.shape == (len(f) * HOP,)
            assert float((wave - expected).abs().max()) <= 1e-6
            assert float((wave - bands.reshape(-1)).abs().max()) > 1e-3  # bands flattened would be another wave


def test_the_stage_synthesizes_with_multi_band_melgan_batched_like_one_by_one(melgan: EspnetSynthesizer) -> None:
    with prenet_dropout(melgan.tts.tts, 0.0):
        batched = melgan.process(ITEMS)
        saved, melgan.options = melgan.options, replace(melgan.options, batch_size=1)
        try:
            single = melgan.process(ITEMS)
        finally:
            melgan.options = saved
    pause = int(melgan.options.pause_seconds * 24_000)
    for item, ours, theirs in zip(ITEMS, batched, single, strict=True):
        assert isinstance(ours, Speech) and isinstance(theirs, Speech) and ours.sample_rate == 24_000
        pieces = melgan.pieces(item)
        assert not isinstance(pieces, Exception)
        frames = sum(10 * (token_count(melgan, p) + 1) for p in pieces[0])  # the Tacotron2 fixture's fixed length
        assert len(ours.samples) == frames * HOP + pause * (len(pieces[0]) - 1)
        assert ours.samples.shape == theirs.samples.shape
        assert float(np.abs(ours.samples - theirs.samples).max()) <= 1e-5


def test_vocoder_windows_need_a_hifigan(melgan: EspnetSynthesizer) -> None:
    """Windows overlap by a HiFiGAN's receptive field; on another vocoder the option stops with a clear error."""
    saved, melgan.options = melgan.options, replace(melgan.options, vocoder_windows="true")
    try:
        with pytest.raises(ValueError, match="vocoder_windows needs a parallel_wavegan HiFiGAN"):
            melgan.window_reach()
    finally:
        melgan.options = saved
    assert melgan.window_reach() == 0  # auto: no windows for it


def test_zoo_names_resolve_to_their_hub_mirror(tmp_path: Path) -> None:
    assert hub_id(ZOO_TAG) == FASTSPEECH2_ID
    assert hub_id("kan-bayashi/csmsc_tts_train_tacotron2_raw_phn_pypinyin_g2p_phone_train.loss.best") == (
        "espnet/kan-bayashi_csmsc_tts_train_tacotron2_raw_phn_pypinyin_g2p_phone_train.loss.best"
    )
    assert hub_id(FASTSPEECH2_ID) == FASTSPEECH2_ID
    folder = tmp_path / "kan-bayashi" / "mine"
    folder.mkdir(parents=True)
    assert hub_id(str(folder)) == str(folder)  # a local folder stays a folder


def test_fastspeech2_synthesizes_what_espnet_does_piece_by_piece(fastspeech2: EspnetSynthesizer) -> None:
    from espnet2.tts.fastspeech2 import FastSpeech2

    t2s = fastspeech2.tts
    assert isinstance(t2s.tts, FastSpeech2) and not batchable(t2s.tts)
    assert {m.role: m.model_id for m in fastspeech2.models()}["speech_synthesis"] == FASTSPEECH2_ID
    results = fastspeech2.process(ITEMS)  # batch_size 8: not a Tacotron2, so ESPnet's own path per piece
    pause = int(fastspeech2.options.pause_seconds * 24_000)
    with torch.inference_mode():
        for item, speech in zip(ITEMS, results, strict=True):
            assert isinstance(speech, Speech)
            pieces = fastspeech2.pieces(item)
            assert not isinstance(pieces, Exception)
            outs = [t2s(p) for p in pieces[0]]
            for piece, out in zip(pieces[0], outs, strict=True):
                assert out["duration"].tolist() == [FRAMES_PER_TOKEN] * (token_count(fastspeech2, piece) + 1)
                assert out["pitch"] is not None and out["energy"] is not None  # the variance adaptor ran
            expected = np.concatenate(
                [w for i, o in enumerate(outs) for w in ([np.zeros(pause)] if i else []) + [o["wav"].numpy()]]
            )
            assert speech.samples.shape == expected.shape
            assert float(np.abs(speech.samples - expected).max()) <= 1e-5  # eval mode: deterministic


def test_fastspeech2_by_its_zoo_name_with_hifigan(fixture_caches: FixtureCaches) -> None:
    stage = tts_stage(model=ZOO_TAG)
    assert stage.local is not None and stage.local.model_id == FASTSPEECH2_ID
    assert batched_hifigan(stage.tts.vocoder) is not None  # the default vocoder
    speech = stage.process(["你好"])[0]
    assert isinstance(speech, Speech)
    with torch.inference_mode():
        feats = stage.tts("你好")["feat_gen"]
    assert len(speech.samples) == len(feats) * HOP == FRAMES_PER_TOKEN * (token_count(stage, "你好") + 1) * HOP
    assert float(np.abs(denormalized(stage.tts.model, feats)).max()) > 0


def test_bench_tts_reports_fastspeech2_with_multi_band_melgan(fixture_caches: FixtureCaches, tmp_path: Path) -> None:
    import argparse

    from clearml_pipeline.bench_tts import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--models", "fixtures", "--batch-sizes", "1,3", "--requests", "3", "--items-per-call", "3"),
            *("--check-items", "2", "--tts-model", FASTSPEECH2_ID, "--tts-vocoder", MB_MELGAN),
            *("--tts-dtype", "bfloat16", "--output", str(tmp_path)),  # ESPnet's own path under autocast
        ]
    )
    assert main(args) == 0
    report = json.loads((tmp_path / "bench_tts.json").read_text(encoding="utf-8"))
    one, three = report["batch_sizes"]["1"], report["batch_sizes"]["3"]
    assert one["audio_seconds"] == three["audio_seconds"] > 0 and one["errors"] == three["errors"] == 0
    assert report["max_abs_diff"] is None  # FastSpeech2 is not batched: no batched mels to compare
    assert report["max_abs_diff_float32"] is None
    assert report["max_abs_diff_wave"] <= 1e-6  # the vocoder goes piece by piece either way
    assert report["speedup_ceiling"] is None  # nothing is batched, so there is no batching ceiling
    assert (report["model"], report["vocoder"], report["dtype"]) == (FASTSPEECH2_ID, MB_MELGAN, "bfloat16")
    assert report["acoustic_rtf"] > 0 and report["vocoder_rtf"] > 0


def test_full_size_options_have_the_recipes_widths(fixture_caches: FixtureCaches) -> None:
    """The full-size FastSpeech2 (384-dim Conformer, 4 + 4 blocks) and MB-MelGAN (384 channels) load too."""
    from clearml_pipeline.tts_models import tts_fixture_caches, tts_fixture_root

    caches = tts_fixture_caches(tts_fixture_root(full=True), full=True)
    options = replace(
        fixture_config().speech_synthesis,
        model=FASTSPEECH2_ID,
        vocoder=MB_MELGAN,
        model_cache=str(caches.espnet_cache),
        vocoder_cache=str(caches.vocoder_cache),
    )
    full = EspnetSynthesizer(options)
    full.ensure_ready()
    tts = full.tts.tts
    assert (tts.encoder.embed[0].embedding_dim, len(tts.encoder.encoders), len(tts.decoder.encoders)) == (384, 4, 4)
    assert full.tts.vocoder.vocoder.melgan[1].out_channels == 384
    speech = full.process(["你好"])[0]
    assert isinstance(speech, Speech)
    assert len(speech.samples) == FRAMES_PER_TOKEN * (token_count(full, "你好") + 1) * HOP


@pytest.fixture(scope="module")
def vits_cache(tmp_path_factory: pytest.TempPathFactory, fixture_caches: FixtureCaches) -> Path:
    """A tiny VITS alone, seeded under its hub id (the model sets leave VITS out; see build_tts)."""
    from registry.fixtures import espnet_vits, quiet_build
    from registry.fixtures._files import seed_hf_repo

    root = tmp_path_factory.mktemp("vits")
    with quiet_build(fixture_caches):
        espnet_vits.build(root / "staged", scratch=root / "recipe")
    seed_hf_repo(root / "espnet", VITS_ID, root / "staged")
    return root / "espnet"


def test_vits_needs_no_vocoder_and_speaks_as_espnet_does(vits_cache: Path) -> None:
    from espnet2.gan_tts.vits import VITS

    stage = tts_stage(model=VITS_ID, model_cache=str(vits_cache), vocoder="parallel_wavegan/not_cached.v1")
    assert isinstance(stage.tts.tts, VITS) and stage.tts.vocoder is None and stage.text_to_wave
    assert {m.role: m.model_id for m in stage.models()} == {"speech_synthesis": VITS_ID, "vocoder": NO_VOCODER}
    item = "你好。明天见！"
    torch.manual_seed(0)  # VITS samples its durations and latents
    speech = stage.process([item])[0]
    assert isinstance(speech, Speech) and speech.sample_rate == 22_050 and speech.pieces == 2
    pieces = stage.pieces(item)
    assert not isinstance(pieces, Exception)
    torch.manual_seed(0)
    with torch.inference_mode():
        waves = [stage.tts(p)["wav"].numpy() for p in pieces[0]]
    pause = np.zeros(int(stage.options.pause_seconds * 22_050))
    expected = np.concatenate([waves[0], pause, waves[1]])
    assert speech.samples.shape == expected.shape and float(np.abs(speech.samples - expected).max()) <= 1e-5
    assert all(len(w) % 256 == 0 and len(w) > 0 for w in waves)  # whole frames of the 256-sample hop
    # VITS's HiFiGAN decoder is computed on channels-last views on a CPU (steps.channels_last), with the same wave
    decoder = stage.tts.tts.generator.decoder
    converted = sum(isinstance(m, (ChannelsLastConv1d, ChannelsLastConvTranspose1d)) for m in decoder.modules())
    assert stage.channels_last_layers == converted > 0
    plain = tts_stage(model=VITS_ID, model_cache=str(vits_cache), channels_last="false")
    assert plain.channels_last_layers == 0
    torch.manual_seed(0)
    same = plain.process([item])[0]
    assert isinstance(same, Speech) and float(np.abs(same.samples - speech.samples).max()) <= 1e-5


def test_vits_by_its_zoo_name(vits_cache: Path) -> None:
    stage = tts_stage(model=VITS_ZOO_TAG, model_cache=str(vits_cache))
    assert stage.local is not None and stage.local.model_id == VITS_ID and stage.vocoder is None


def test_bench_tts_reports_vits_without_a_vocoder(fixture_caches: FixtureCaches, tmp_path: Path) -> None:
    """The whole tiny set has no VITS, so bench-tts builds its own TTS caches (they hold VITS) and uses those."""
    import argparse

    from clearml_pipeline.bench_tts import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--models", "fixtures", "--batch-sizes", "1,2", "--requests", "2", "--items-per-call", "2"),
            *("--check-items", "1", "--tts-model", VITS_ZOO_TAG, "--tts-dtype", "bfloat16"),
            *("--output", str(tmp_path)),
        ]
    )
    assert main(args) == 0
    report = json.loads((tmp_path / "bench_tts.json").read_text(encoding="utf-8"))
    assert (report["model"], report["vocoder"], report["dtype"]) == (VITS_ID, NO_VOCODER, "bfloat16")
    assert report["max_abs_diff"] is None and report["max_abs_diff_wave"] is None and report["vocoder_rtf"] is None
    assert report["speedup_ceiling"] is None  # no vocoder to bound it
    assert report["acoustic_rtf"] > 0 and all(row["audio_seconds"] > 0 for row in report["batch_sizes"].values())


def test_espnet_loads_without_its_flash_attn_notice_in_the_log() -> None:
    """espnet prints a notice at import wherever the optional flash_attn is missing (every CPU install, once per
    streaming worker); the stage imports it with that line left out."""
    import subprocess
    import sys
    from importlib.util import find_spec

    from resources.compat import FLASH_ATTN_NOTICE

    root = Path(__file__).resolve().parents[1]
    quiet = "from resources.compat import import_espnet_quietly; import_espnet_quietly(); "
    quiet += "import espnet2.bin.tts_inference; print('ok')"
    plain = "import espnet.nets.pytorch_backend.transformer.attention; print('ok')"
    runs = {
        name: subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
        for name, code in (("quiet", quiet), ("plain", plain))
    }
    assert all(run.returncode == 0 and run.stdout.splitlines()[-1] == "ok" for run in runs.values())
    assert FLASH_ATTN_NOTICE not in runs["quiet"].stdout
    if find_spec("flash_attn") is None:  # what the plain import prints here, and the quiet one leaves out
        assert FLASH_ATTN_NOTICE in runs["plain"].stdout
