"""Each stage on the tiny fixture models, loaded through the production code under the real model ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from clearml_pipeline import stream_worker
from clearml_pipeline.config import RunConfig
from clearml_pipeline.stream_worker import warm_up
from resources.audio import Audio, load_audio
from steps.base import ItemError, ModelInfo, Stage
from steps.machine_translation import MarianTranslator
from steps.speech_synthesis import EspnetSynthesizer
from steps.speech_translation import WhisperTranslator
from steps.stages import StepContext, stage
from tests.configs import fixture_config
from tests.speech import speak, tone


@pytest.fixture(scope="module")
def config(fixture_caches: object) -> RunConfig:
    return fixture_config({"speech_translation": {"max_new_tokens": 12}, "machine_translation": {"max_new_tokens": 12}})


@pytest.fixture(scope="module")
def whisper(config: RunConfig) -> WhisperTranslator:
    stage = WhisperTranslator(config.speech_translation)
    stage.ensure_ready()
    return stage


@pytest.fixture(scope="module")
def marian(config: RunConfig) -> MarianTranslator:
    stage = MarianTranslator(config.machine_translation)
    stage.ensure_ready()
    return stage


@pytest.fixture(scope="module")
def tts(config: RunConfig) -> EspnetSynthesizer:
    stage = EspnetSynthesizer(config.speech_synthesis)
    stage.ensure_ready()
    return stage


@pytest.fixture(scope="module")
def spanish(tmp_path_factory: pytest.TempPathFactory) -> Audio:
    return load_audio(speak("Hola, ¿cómo estás?", tmp_path_factory.mktemp("st") / "hola.wav"))


def test_whisper_is_loaded_from_the_real_id_on_cpu_in_fp32(whisper: WhisperTranslator) -> None:
    (info,) = whisper.models()
    assert info.model_id == "openai/whisper-large"
    assert len(info.revision) == 40  # the snapshot's commit sha from the cache
    assert whisper.device == "cpu" and next(whisper.model.parameters()).dtype.is_floating_point
    assert str(next(whisper.model.parameters()).dtype) == "torch.float32"


def test_whisper_decoder_is_forced_to_spanish_translate_without_timestamps(
    whisper: WhisperTranslator, spanish: Audio
) -> None:
    assert whisper.decoder_prefix() == [50258, 50262, 50358, 50363]
    seen: list[list[int]] = []
    hook = whisper.model.model.decoder.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(
            (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0])[0].tolist()
        ),
        with_kwargs=True,
    )
    try:
        whisper.run([spanish])
    finally:
        hook.remove()
    assert seen[0] == [50258, 50262, 50358, 50363]  # the first decoder step sees exactly the forced prefix


def test_whisper_batches_and_translates_long_audio_whole(whisper: WhisperTranslator, spanish: Audio) -> None:
    long = Audio(np.tile(spanish.samples, int(np.ceil(45 / spanish.seconds))), spanish.sample_rate)
    results = whisper.run([spanish, long, spanish])
    assert [r.ok for r in results] == [True, True, True]
    assert results[0].output.chunks == 1 and results[1].output.chunks == 2
    assert results[0].batch_size == 3


def test_whisper_silence_is_no_speech_and_never_reaches_the_model(
    whisper: WhisperTranslator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silence = load_audio(tone(tmp_path / "s.wav", 3.0))
    monkeypatch.setattr(whisper.model, "generate", lambda *a, **k: pytest.fail("silence reached the model"))
    (result,) = whisper.run([silence])
    assert result.ok and result.output.no_speech and result.output.text == ""


def test_the_streaming_warm_up_reaches_whisper_with_speech_of_different_lengths(
    whisper: WhisperTranslator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker's warm-up once fed a noise clip: the real Silero VAD found no speech in it, so Whisper first ran
    # on the first real batch. Now every warm-up row is speech (the shipped samples, cut), and each reaches Whisper.
    segments: list[int] = []
    translate = whisper.translate_segments

    def counting(pieces: Sequence[Audio]) -> list[str]:
        segments.extend(len(p.samples) for p in pieces)
        return translate(pieces)

    monkeypatch.setattr(whisper, "translate_segments", counting)
    spec = stage("speech_translation")
    warm_up(whisper, spec, StepContext(tmp_path, 60.0), worker_id=1, rows=4)
    assert len(segments) == 4 and segments == sorted(segments, reverse=True) and len(set(segments)) == 4
    assert segments[-1] >= 16_000 * 2  # the shortest is half of 5.9 s of speech, VAD padding aside
    assert list(tmp_path.iterdir()) == []  # the warm-up folder is gone

    segments.clear()  # without the samples (a checkout that lacks them): noise, said in the log, Whisper cold
    monkeypatch.setattr(stream_worker, "WARM_UP_SPEECH", (tmp_path / "missing.wav",))
    with caplog.at_level(logging.WARNING, logger=stream_worker.__name__):
        warm_up(whisper, spec, StepContext(tmp_path, 60.0), worker_id=1, rows=2)
    assert segments == [] and "warms up on noise" in caplog.text


def test_whisper_rejects_audio_at_the_wrong_rate(whisper: WhisperTranslator) -> None:
    (result,) = whisper.run([Audio(np.zeros(8000, np.float32), 8000)])
    assert not result.ok and "16000 Hz" in (result.error or "")


def test_marian_prefixes_the_mandarin_target_token(marian: MarianTranslator) -> None:
    token_id = marian.tokenizer.convert_tokens_to_ids(">>cmn_Hans<<")
    ids = marian.tokenizer(marian.source_text("Hello, how are you?")).input_ids
    assert ids[0] == token_id != marian.tokenizer.unk_token_id
    (info,) = marian.models()
    assert info.model_id == "Helsinki-NLP/opus-mt-en-zh" and len(info.revision) == 40


def test_marian_translates_sentence_by_sentence_in_order(marian: MarianTranslator) -> None:
    results = marian.run(["Hello. How are you?", "", "The cat sleeps."])
    assert all(r.ok for r in results)
    assert results[1].output == ""
    for result in (results[0], results[2]):
        assert any("\u4e00" <= ch <= "\u9fff" for ch in result.output)  # the fixture's target pieces are Chinese


def test_marian_without_the_target_token_is_a_clear_error(config: RunConfig) -> None:
    options = type(config.machine_translation)(**{**vars(config.machine_translation), "target_token": ">>xx<<"})
    with pytest.raises(ValueError, match=">>xx<<"):
        MarianTranslator(options).setup()


def test_tts_makes_24k_speech_with_pauses_between_sentences(tts: EspnetSynthesizer) -> None:
    one, two = tts.run(["卡尔普陪外孙玩滑梯。", "卡尔普陪外孙玩滑梯。卡尔普陪外孙玩滑梯。"])
    assert one.ok and two.ok
    assert one.output.sample_rate == tts.sample_rate == 24_000
    assert one.output.pieces == 1 and two.output.pieces == 2
    pause = int(tts.options.pause_seconds * 24_000)
    assert len(two.output.samples) == 2 * len(one.output.samples) + pause
    assert np.abs(one.output.samples).max() > 0


def test_tts_reads_numbers_and_records_what_it_cannot_say(tts: EspnetSynthesizer) -> None:
    (result,) = tts.run(["我有3只猫，名字叫Tom！"])
    assert result.ok
    assert result.output.unsayable == ["T", "m", "o"]
    clean, dropped = tts.sayable("我有三只猫")
    assert clean == "我有三只猫" and dropped == []


def test_tts_with_nothing_sayable_is_an_item_error(tts: EspnetSynthesizer) -> None:
    ok, bad = tts.run(["你好", "Hello world @#"])
    assert ok.ok and not bad.ok
    assert "nothing the TTS model can say" in (bad.error or "")


def test_tts_models_name_the_acoustic_model_and_the_vocoder(tts: EspnetSynthesizer) -> None:
    roles = {m.role: m for m in tts.models()}
    assert roles["speech_synthesis"].model_id.startswith("espnet/kan-bayashi_csmsc_tts_train_tacotron2")
    assert roles["vocoder"].model_id == "parallel_wavegan/csmsc_hifigan.v1"
    assert roles["vocoder"].revision.startswith("sha256:")


class _Flaky(Stage[int, int]):
    """Fails the batch whenever item 13 is in it: the base class must isolate it."""

    name = "flaky"

    def setup(self) -> None:
        self.calls: list[list[int]] = []

    def process(self, inputs: Sequence[int]) -> list[int | ItemError]:
        self.calls.append(list(inputs))
        if 13 in inputs:
            raise RuntimeError("unlucky")
        return [ItemError("negative") if i < 0 else i * 2 for i in inputs]

    def models(self) -> list[ModelInfo]:
        return []


def test_one_bad_item_never_takes_down_the_batch() -> None:
    stage = _Flaky()
    results = stage.run([1, 13, -1, 4])
    assert [r.output for r in results] == [2, None, None, 8]
    assert results[1].error == "RuntimeError: unlucky" and results[2].error == "negative"
    assert stage.calls[0] == [1, 13, -1, 4] and [13] in stage.calls
    assert stage.stats.items == 4 and stage.stats.errors == 2


def test_griffin_lim_is_the_no_vocoder_option(config: RunConfig) -> None:
    options = type(config.speech_synthesis)(**{**vars(config.speech_synthesis), "vocoder": "griffin_lim"})
    stage = EspnetSynthesizer(options)
    (result,) = stage.run(["你好。"])
    assert result.ok and result.output.sample_rate == 24_000 and len(result.output.samples) > 0
    assert {m.role: m.model_id for m in stage.models()}["vocoder"] == "griffin_lim"
