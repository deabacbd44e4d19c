"""Batched Tacotron2 decoding and batched HiFiGAN vocoding against ESPnet's own one-at-a-time Text2Speech.

With the prenet's inference dropout off, the batched path must reproduce Text2Speech item by item (mels
within 1e-4, lengths exactly), stop tokens and minlenratio included; with it on, lengths and statistics agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clearml_pipeline.config import RunConfig
from registry.fixtures import FixtureCaches
from steps.base import ItemError
from steps.speech_synthesis import EspnetSynthesizer, Speech, denormalized
from steps.tacotron_batch import (
    batchable,
    batched_hifigan,
    bucket,
    bucketed_vocode,
    prenet_dropout,
    reach_frames,
    receptive_field,
    tacotron2_inference,
    vocode,
    windowed_vocode,
)
from tests.configs import fixture_config

TEXTS = ["卡尔普陪外孙玩滑梯", "你好", "我有三只猫", "一", "明天见"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def config(fixture_caches: FixtureCaches) -> RunConfig:
    return fixture_config()


@pytest.fixture(scope="module")
def stage(config: RunConfig) -> EspnetSynthesizer:
    stage = EspnetSynthesizer(replace(config.speech_synthesis, batch_size=4, batch_vocoder="true"))
    stage.ensure_ready()
    return stage


def token_ids(stage: EspnetSynthesizer, texts: list[str]) -> list[torch.Tensor]:
    return [torch.as_tensor(stage.tts.preprocess_fn("<d>", {"text": t})["text"]).long() for t in texts]


@contextmanager
def stop_layer(tts: torch.nn.Module, seed: int = 0) -> Iterator[None]:
    """Give the stop-token layer (zero in the fixture: it never fires) random weights, then restore it."""
    layer = tts.dec.prob_out
    saved = {k: v.clone() for k, v in layer.state_dict().items()}
    torch.manual_seed(seed)
    with torch.no_grad():
        layer.weight.normal_(0.0, 3.0)
        layer.bias.fill_(-6.0)
    try:
        yield
    finally:
        layer.load_state_dict(saved)


def test_the_fixture_model_and_vocoder_are_batched(stage: EspnetSynthesizer) -> None:
    assert batchable(stage.tts.tts)
    assert batched_hifigan(stage.tts.vocoder) is not None


def test_batched_mels_equal_espnet_one_at_a_time(stage: EspnetSynthesizer) -> None:
    t2s = stage.tts
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0):
        single = [t2s(text) for text in TEXTS]
        batched = tacotron2_inference(t2s.tts, token_ids(stage, TEXTS))
    for one, ours, ids in zip(single, batched, token_ids(stage, TEXTS), strict=True):
        assert ours.feat_gen.shape == one["feat_gen"].shape == (10 * (len(ids) + 1), 80)
        assert float((ours.feat_gen - one["feat_gen"]).abs().max()) <= TOLERANCE
        assert float((denormalized(t2s.model, ours.feat_gen) - one["feat_gen_denorm"]).abs().max()) <= TOLERANCE


def test_under_bfloat16_a_lone_item_is_espnets_own_mels_bit_for_bit(stage: EspnetSynthesizer) -> None:
    """Under autocast the batched path keeps ESPnet's dtypes (bfloat16 activations between layers, outputs
    gathered and the postnet added in bfloat16), so one item alone gives exactly Text2Speech's mels; with
    float32 masks and buffers it gave more precise mels, 1.2e-02 away (one bfloat16 step: nothing to do with
    batching). Between batch sizes a bfloat16 kernel may still round a value differently (bench-tts measures it)."""
    t2s = stage.tts
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0), torch.autocast("cpu", dtype=torch.bfloat16):
        for text, ids in zip(TEXTS, token_ids(stage, TEXTS), strict=True):
            theirs = t2s(text)["feat_gen"]
            ours = tacotron2_inference(t2s.tts, [ids])[0].feat_gen
            assert ours.dtype == theirs.dtype == torch.bfloat16
            assert torch.equal(ours, theirs)


def test_each_item_stops_on_its_own_stop_token_and_minlenratio(stage: EspnetSynthesizer) -> None:
    t2s = stage.tts
    ids = token_ids(stage, TEXTS)
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0), stop_layer(t2s.tts):
        probe = [float(t2s(text, decode_conf={"maxlenratio": 4.0})["prob"].max()) for text in TEXTS]
        threshold = float(np.median(probe))  # about half the items stop early, the others run to maxlen
        for minlenratio in (0.0, 2.0):
            conf = {"threshold": threshold, "minlenratio": minlenratio, "maxlenratio": 4.0}
            single = [t2s(text, decode_conf=conf)["feat_gen"] for text in TEXTS]
            batched = tacotron2_inference(t2s.tts, ids, threshold, minlenratio, 4.0)
            lengths = [len(b.feat_gen) for b in batched]
            assert lengths == [len(s) for s in single]
            maxlens = [4 * (len(i) + 1) for i in ids]
            assert any(n < m for n, m in zip(lengths, maxlens, strict=True))  # some stopped on the token ...
            assert any(n == m for n, m in zip(lengths, maxlens, strict=True))  # ... and some ran to maxlen
            assert all(n >= int((len(i) + 1) * minlenratio) for n, i in zip(lengths, ids, strict=True))
            assert max(float((b.feat_gen - s).abs().max()) for b, s in zip(batched, single, strict=True)) <= TOLERANCE


def test_with_prenet_dropout_lengths_and_statistics_agree(stage: EspnetSynthesizer) -> None:
    t2s = stage.tts
    torch.manual_seed(1)
    with torch.inference_mode():
        single = [t2s(text)["feat_gen"] for text in TEXTS]
        batched = [d.feat_gen for d in tacotron2_inference(t2s.tts, token_ids(stage, TEXTS))]
        with prenet_dropout(t2s.tts, 0.0):
            plain = [d.feat_gen for d in tacotron2_inference(t2s.tts, token_ids(stage, TEXTS))]
    assert [len(b) for b in batched] == [len(s) for s in single]
    ours, theirs = torch.cat(batched), torch.cat(single)
    assert abs(float(ours.mean() - theirs.mean())) < 0.1 * float(theirs.std())
    assert abs(float(ours.std() / theirs.std()) - 1.0) < 0.1
    assert max(float((b - p).abs().max()) for b, p in zip(batched, plain, strict=True)) > TOLERANCE  # dropout ran


def test_batched_vocoding_cuts_each_wave_equal_to_a_lone_call(stage: EspnetSynthesizer) -> None:
    t2s = stage.tts
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0):
        feats = [t2s(text)["feat_gen_denorm"] for text in TEXTS]
        single = [t2s.vocoder(f).view(-1) for f in feats]
        batched = vocode(t2s.vocoder, feats)
        plain = vocode(t2s.vocoder, feats, masked=False)
        reach = receptive_field(batched_hifigan(t2s.vocoder))
    hop = 300
    longest = max(len(f) for f in feats)
    for f, one, ours, unmasked in zip(feats, single, batched, plain, strict=True):
        assert len(ours) == len(one) == len(f) * hop
        assert float((ours - one).abs().max()) <= 1e-5
        tail = (unmasked - one).abs() > 1e-5  # without masks only the receptive field before the end sees padding
        assert not bool(tail[: max(len(one) - reach, 0)].any())
        assert bool(tail.any()) == (len(f) < longest)


@contextmanager
def vocoder_input_widths(vocoder: torch.nn.Module) -> Iterator[list[int]]:
    """The frame counts the HiFiGAN's first convolution is called on (ESPnet's wrapper calls the generator's
    forward directly, so a hook on the generator itself would not fire)."""
    generator = batched_hifigan(vocoder)
    assert generator is not None
    first = next(m for m in generator.modules() if isinstance(m, torch.nn.Conv1d))
    widths: list[int] = []
    handle = first.register_forward_pre_hook(lambda _m, args: widths.append(args[0].size(-1)))
    try:
        yield widths
    finally:
        handle.remove()


def test_bucketed_vocoding_pads_each_piece_to_whole_buckets_with_a_lone_calls_samples(
    stage: EspnetSynthesizer,
) -> None:
    t2s = stage.tts
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0):
        feats = [t2s(text)["feat_gen_denorm"] for text in TEXTS]
        with vocoder_input_widths(t2s.vocoder) as exact:
            single = [t2s.vocoder(f).view(-1) for f in feats]
        with vocoder_input_widths(t2s.vocoder) as padded:
            bucketed = bucketed_vocode(t2s.vocoder, feats, 32)
    assert exact == [len(f) for f in feats] and any(len(f) % 32 for f in feats)
    assert padded == [-(-len(f) // 32) * 32 for f in feats]
    for one, ours in zip(single, bucketed, strict=True):
        assert len(ours) == len(one)
        assert float((ours - one).abs().max()) <= 1e-5


def test_the_stage_vocodes_piece_by_piece_in_buckets_as_on_exact_lengths(stage: EspnetSynthesizer) -> None:
    """The CPU path (one vocoder call per piece) with `vocoder_bucket_frames` 32 and 1 (exact lengths), no windows."""
    saved = stage.options
    outputs: dict[int, list[Speech | ItemError]] = {}
    try:
        with prenet_dropout(stage.tts.tts, 0.0):
            for frames in (32, 1):
                stage.options = replace(
                    saved, batch_vocoder="false", vocoder_windows="false", vocoder_bucket_frames=frames
                )
                with vocoder_input_widths(stage.tts.vocoder) as widths:
                    outputs[frames] = stage.process(TEXTS)
                assert len(widths) == len(TEXTS) and all(w % 32 == 0 for w in widths) == (frames == 32)
    finally:
        stage.options = saved
    for ours, theirs in zip(outputs[32], outputs[1], strict=True):
        assert isinstance(ours, Speech) and isinstance(theirs, Speech)
        assert ours.samples.shape == theirs.samples.shape
        assert float(np.abs(ours.samples - theirs.samples).max()) <= 1e-5


def test_the_reach_bounds_how_far_an_input_frame_moves_the_samples(stage: EspnetSynthesizer) -> None:
    """reach_frames, which windowed vocoding overlaps by, is at least how far one changed input frame moves the
    samples, on both sides."""
    generator = batched_hifigan(stage.tts.vocoder)
    assert generator is not None
    torch.manual_seed(0)
    with torch.inference_mode():
        reach = reach_frames(generator)
        mel = torch.randn(1, 80, 4 * reach + 1)
        moved = mel.clone()
        moved[..., 2 * reach] += 1.0
        before, after = generator(mel).view(-1), generator(moved).view(-1)
    hop = before.numel() // mel.size(-1)
    changed = (before != after).nonzero().view(-1)
    assert len(changed) > 0
    assert int(changed.min()) >= reach * hop and int(changed.max()) < (3 * reach + 1) * hop
    assert int(changed.min()) < (reach + 4) * hop  # and no looser than 4 frames (HiFiGAN's blocks side by side)


def test_windowed_vocoding_gives_a_lone_calls_samples_on_one_input_length(stage: EspnetSynthesizer) -> None:
    t2s = stage.tts
    generator = batched_hifigan(t2s.vocoder)
    assert generator is not None
    torch.manual_seed(1)
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0):
        reach = reach_frames(generator)
        window = 2 * reach + 24
        feats = [t2s(text)["feat_gen_denorm"] for text in TEXTS] + [torch.randn(n, 80) for n in (3 * window, 5)]
        single = [t2s.vocoder(f).view(-1) for f in feats]
        with vocoder_input_widths(t2s.vocoder) as widths:
            windowed = windowed_vocode(t2s.vocoder, feats, window, reach, 8)
    assert max(len(f) for f in feats) > 2 * window  # a piece of three windows or more
    assert all(w == window or (w % 8 == 0 and w <= window) for w in widths) and widths.count(window) >= 3
    for one, ours in zip(single, windowed, strict=True):
        assert len(ours) == len(one)
        assert float((ours - one).abs().max()) <= 1e-5
    with pytest.raises(ValueError, match="nothing between two reaches"):
        windowed_vocode(t2s.vocoder, feats, 2 * reach, reach, 8)


def test_the_stage_vocodes_long_pieces_in_windows_as_on_exact_lengths(stage: EspnetSynthesizer) -> None:
    saved = stage.options
    try:
        with prenet_dropout(stage.tts.tts, 0.0):
            stage.options = replace(saved, batch_vocoder="false", vocoder_windows="false", vocoder_bucket_frames=1)
            exact = stage.process(TEXTS)
            stage.options = replace(saved, batch_vocoder="false", vocoder_windows="true", vocoder_window_frames=96)
            with vocoder_input_widths(stage.tts.vocoder) as widths:
                windowed = stage.process(TEXTS)
    finally:
        stage.options = saved
    assert stage.vocoder_reach > 0 and max(widths) == 96 and len(widths) > len(TEXTS)
    for ours, theirs in zip(windowed, exact, strict=True):
        assert isinstance(ours, Speech) and isinstance(theirs, Speech)
        assert ours.samples.shape == theirs.samples.shape
        assert float(np.abs(ours.samples - theirs.samples).max()) <= 1e-5


def test_bucket_groups_by_length_and_keeps_every_index() -> None:
    groups = bucket([3, 9, 1, 7, 5], 2)
    assert groups == [[1, 3], [4, 0], [2]]


def test_the_stage_batches_all_pieces_of_a_call_like_one_at_a_time(stage: EspnetSynthesizer) -> None:
    items = ["卡尔普陪外孙玩滑梯。你好！", "Hello @#", "我有3只猫，名字叫Tom！", "一。二。三。四。五。"]
    one_by_one = replace(stage.options, batch_size=1)
    with prenet_dropout(stage.tts.tts, 0.0):
        batched = stage.process(items)
        saved, stage.options = stage.options, one_by_one
        try:
            single = stage.process(items)
        finally:
            stage.options = saved
    assert isinstance(batched[1], ItemError) and isinstance(single[1], ItemError)
    for ours, theirs in zip(batched, single, strict=True):
        if isinstance(theirs, Speech):
            assert isinstance(ours, Speech)
            assert (ours.pieces, ours.unsayable, ours.sample_rate) == (theirs.pieces, theirs.unsayable, 24_000)
            assert ours.samples.shape == theirs.samples.shape
            assert float(np.abs(ours.samples - theirs.samples).max()) <= 1e-5
    assert batched[3].pieces == 5 and batched[2].unsayable == ["T", "m", "o"]


def test_full_size_batched_mels_equal_espnet(fixture_caches: FixtureCaches) -> None:
    """The CSMSC recipe's widths (512-unit encoder, 1024-unit decoder LSTMs, 512-channel HiFiGAN), built once
    into ~/.cache/s2st/tts-fixtures-full ($S2ST_TTS_FIXTURES_DIR-full) and reused while the builders match."""
    from clearml_pipeline.tts_models import tts_fixture_caches, tts_fixture_root

    caches = tts_fixture_caches(tts_fixture_root(full=True), full=True)
    options = replace(
        fixture_config().speech_synthesis, model_cache=str(caches.espnet_cache), vocoder_cache=str(caches.vocoder_cache)
    )
    full = EspnetSynthesizer(options)
    full.ensure_ready()
    texts = ["你好", "明天见", "音乐使人快乐"]
    t2s = full.tts
    assert t2s.tts.dec.lstm[0].hidden_size == 1024
    assert full.decoder_cells() is not None  # auto packs full-size cells, float32 included
    assert full.fused_blocks == 12  # auto on a CPU: every stage of the full-size HiFiGAN (steps.fused_hifigan)
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0):
        single = [t2s(text)["feat_gen"] for text in texts]
        batched = tacotron2_inference(t2s.tts, token_ids(full, texts))
        packed = tacotron2_inference(t2s.tts, token_ids(full, texts), cells=full.decoder_cells())
        feats = [denormalized(t2s.model, s) for s in single]
        waves = vocode(t2s.vocoder, feats)
        lone = [t2s.vocoder(f).view(-1) for f in feats]
    for ours, on_packed, theirs in zip(batched, packed, single, strict=True):
        assert ours.feat_gen.shape == on_packed.feat_gen.shape == theirs.shape
        assert float((ours.feat_gen - theirs).abs().max()) <= TOLERANCE
        assert float((on_packed.feat_gen - theirs).abs().max()) <= TOLERANCE
    assert max(float((w - o).abs().max()) for w, o in zip(waves, lone, strict=True)) <= 1e-4
    # bfloat16 (the fast CPU path): a lone item is ESPnet's own mels bit for bit at these widths too, and the
    # batch stays within a few bfloat16 steps of them (bench-tts measured 0 on this machine's AMX kernels).
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0), torch.autocast("cpu", dtype=torch.bfloat16):
        single = [t2s(text)["feat_gen"] for text in texts]
        alone = tacotron2_inference(t2s.tts, token_ids(full, texts[:1]))[0].feat_gen
        batched = tacotron2_inference(t2s.tts, token_ids(full, texts))
        full.options = replace(full.options, dtype="bfloat16")
        on_packed = tacotron2_inference(t2s.tts, token_ids(full, texts[:1]), cells=full.decoder_cells())[0].feat_gen
    assert alone.dtype == torch.bfloat16 and torch.equal(alone, single[0]) and torch.equal(on_packed, single[0])
    for ours, theirs in zip(batched, single, strict=True):
        assert ours.feat_gen.shape == theirs.shape
        assert float((ours.feat_gen.float() - theirs.float()).abs().max()) <= 0.1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_tts_writes_its_report(
    fixture_caches: FixtureCaches,
    tmp_path: Path,
    dtype: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from clearml_pipeline.bench_tts import add_arguments, main
    from registry.fixtures.corpus import CHINESE

    calls: list[list[str]] = []
    run = EspnetSynthesizer.run

    def recording(self: EspnetSynthesizer, inputs: list[str]) -> Any:
        calls.append(list(inputs))
        return run(self, inputs)

    monkeypatch.setattr(EspnetSynthesizer, "run", recording)

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--models", "fixtures", "--batch-sizes", "1,3", "--requests", "3", "--items-per-call", "3"),
            *("--check-items", "2", "--frames-per-phone", "4", "--tts-dtype", dtype, "--output", str(tmp_path)),
        ]
    )
    assert main(args) == 0
    report = json.loads((tmp_path / "bench_tts.json").read_text(encoding="utf-8"))
    one, three = report["batch_sizes"]["1"], report["batch_sizes"]["3"]
    assert one["audio_seconds"] == three["audio_seconds"] > 0  # fixed decode lengths: the same audio
    assert all(row["items_per_s"] > 0 and row["rtf"] > 0 for row in (one, three))
    if dtype == "float32":
        assert report["max_abs_diff"] <= TOLERANCE and report["max_abs_diff_wave"] <= 1e-5
        assert report["max_abs_diff_float32"] is None
    else:  # both sides in bfloat16; the distance from float32 is reported apart, and is not nothing
        assert report["max_abs_diff"] <= 0.1 and report["max_abs_diff_wave"] <= 1e-2
        assert 0 < report["max_abs_diff_float32"] <= 0.5
    assert report["model"].startswith("espnet/kan-bayashi_csmsc_tts_train_tacotron2")
    assert report["vocoder"] == "parallel_wavegan/csmsc_hifigan.v1" and report["device"] == "cpu"
    assert report["threads"] >= 1 and report["frames_per_phone"] == 4.0 and report["dtype"] == dtype
    assert report["acoustic_rtf"] > 0 and report["vocoder_rtf"] > 0
    # HiFiGAN goes piece by piece on a CPU: batching the acoustic model can at most remove the rest of batch 1
    assert report["speedup_ceiling"] == pytest.approx(one["rtf"] / report["vocoder_rtf"])
    assert report["warmup_passes"] == 1  # the default: each batch size measured on shapes already seen
    # the texts longest first, as the speech synthesis step takes a dataset's rows (the corpus has them otherwise)
    assert report["order"] == "length" and [len(t) for t in CHINESE[:3]] != sorted(map(len, CHINESE[:3]), reverse=True)
    assert calls[-1] == sorted(CHINESE[:3], key=len, reverse=True)
    # three timed passes per size by default, one size after the other; each size reports its median pass
    printed = capsys.readouterr().out.splitlines()
    timed = [line.split(":")[1].strip() for line in printed if line.startswith("bench-tts: batch")]
    assert timed == [f"batch {b}, pass {r}" for b in (1, 3) for r in (1, 2, 3)]
    assert report["repeats"] == 3 and all(len(row["rtf_passes"]) == 3 for row in (one, three))
    assert all(row["rtf"] == sorted(row["rtf_passes"])[1] for row in (one, three))
    assert report["speedup"] == pytest.approx(one["rtf"] / three["rtf"])
    assert report["channels_last_layers"] > 0  # the CPU default: HiFiGAN's convolutions on channels-last views
    assert report["fused_vocoder_blocks"] == 0  # the tiny HiFiGAN's 16 channels and fewer: its own forward
    # auto: packed in bfloat16 (max_abs_diff above is then measured on the packed cells); the tiny fixture's
    # 32-unit cells stay torch's own in float32, where packing measured slower below 512 units
    assert report["packed_lstm"] is (dtype == "bfloat16")


def test_bench_tts_times_fresh_lengths_on_request(fixture_caches: FixtureCaches, tmp_path: Path) -> None:
    """--fresh-lengths: each batch size's timed pass decodes lengths no pass before it did (ESPnet's own path at
    batch 1 included), so the audio grows from batch size to batch size, and speedup compares rtfs."""
    import argparse

    from clearml_pipeline.bench_tts import add_arguments, main, run_bench_tts

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = ["--batch-sizes", "1,3", "--requests", "3", "--items-per-call", "3", "--check-items", "1"]
    common += ["--repeats", "1"]  # one timed pass per size: the second size's lengths are the longer ones
    args = parser.parse_args(
        ["--models", "fixtures", *common, "--frames-per-phone", "4", "--fresh-lengths", "--output", str(tmp_path)]
    )
    assert main(args) == 0
    report = json.loads((tmp_path / "bench_tts.json").read_text(encoding="utf-8"))
    one, three = report["batch_sizes"]["1"], report["batch_sizes"]["3"]
    assert report["fresh_lengths"] is True and report["vocoder_bucket_frames"] == 32
    plain = parser.parse_args(["--models", "fixtures", *common, "--frames-per-phone", "4", "--output", str(tmp_path)])
    seen = run_bench_tts(plain)["batch_sizes"]["1"]["audio_seconds"]  # 4 frames per phone, as in the warm-up
    assert 0 < seen < one["audio_seconds"] < three["audio_seconds"]  # then 4.25 and 4.5 frames per phone
    assert report["speedup"] == pytest.approx(one["rtf"] / three["rtf"])
    hub = parser.parse_args(["--models", "hub", *common, "--fresh-lengths", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="--fresh-lengths sets the fixtures' decode lengths"):
        run_bench_tts(hub)


def test_bfloat16_autocast_speaks_what_float32_does_at_its_precision(stage: EspnetSynthesizer) -> None:
    """`dtype` bfloat16 (the fast path on CPUs with AMX or AVX-512 BF16) on both paths, batched and ESPnet's."""
    items = ["卡尔普陪外孙玩滑梯。你好！", "我有三只猫"]
    outputs: dict[tuple[str, int], list[Speech]] = {}
    saved = stage.options
    try:
        with prenet_dropout(stage.tts.tts, 0.0):
            for dtype in ("float32", "bfloat16"):
                for size in (1, 4):  # ESPnet's own path and the batched one
                    stage.options = replace(saved, dtype=dtype, batch_size=size)
                    outputs[dtype, size] = [s for s in stage.process(items) if isinstance(s, Speech)]
    finally:
        stage.options = saved
    for size in (1, 4):
        for ours, theirs in zip(outputs["bfloat16", size], outputs["float32", size], strict=True):
            assert ours.samples.dtype == np.float32 and ours.samples.shape == theirs.samples.shape
            diff = float(np.abs(ours.samples - theirs.samples).max())
            snr = 10 * np.log10(np.mean(theirs.samples**2) / np.mean((ours.samples - theirs.samples) ** 2))
            assert diff > 0  # it did run in bfloat16 (about 50 dB here: bfloat16 keeps 8 bits of mantissa)
            assert snr >= 30, f"bfloat16 wave {snr:.1f} dB from float32's"


def test_an_unknown_tts_dtype_stops_before_any_model_is_read(config: RunConfig) -> None:
    stage = EspnetSynthesizer(replace(config.speech_synthesis, dtype="int8"))
    with pytest.raises(ValueError, match="dtype must be one of auto, float16, bfloat16, float32; got 'int8'"):
        stage.setup()


def test_a_gpu_asked_for_where_there_is_none_stops_before_any_model_is_read(
    config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stage = EspnetSynthesizer(replace(config.speech_synthesis, device="cuda"))
    with pytest.raises(RuntimeError, match="device 'cuda' was asked for but no CUDA GPU is available"):
        stage.setup()
    assert stage.local is None


def test_the_bench_tts_table_reads_n_a_where_a_figure_could_not_be_measured() -> None:
    """Every item of batch 3's passes failed (no audio, so no rtf): the report is written first and the printed
    table says n/a there, instead of failing on the missing figures."""
    from clearml_pipeline.bench_tts import format_table, median_pass

    ran = [{"items_per_s": 2.0, "rtf": rtf, "audio_seconds": 4.0, "wall_s": 1.0, "errors": 0} for rtf in (0.5, 0.4)]
    failed = [{"items_per_s": 3.0, "rtf": None, "audio_seconds": 0.0, "wall_s": 1.0, "errors": 3}] * 2
    report = {
        "batch_sizes": {"1": median_pass(ran), "3": median_pass(failed)},
        "speedup": None,
        "repeats": 2,
        "acoustic_rtf": None,
        "vocoder_rtf": 0.1,
        "max_abs_diff": None,
        "max_abs_diff_wave": None,
        "threads": 2,
        "dtype": "float32",
        "speedup_ceiling": None,
    }
    lines = format_table(report).splitlines()
    assert lines[2:4] == ["| 1 | 2.000 | 0.400 | 4.0 |", "| 3 | 3.000 | n/a | 0.0 |"]
    assert "acoustic model rtf n/a, vocoder rtf 0.100" in lines[4]
    assert lines[5] == "speedup n/a: the median passes of 2 (rtf per pass: batch 1 0.500, 0.400; batch 3 n/a, n/a)"
    assert lines[6].startswith("max_abs_diff n/a (mels), n/a (waves)")
