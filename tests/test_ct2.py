"""The CTranslate2 backends against the transformers ones, on the fixture models, and the conversion cache.

Agreement is token for token with a fixed decode length (min_new_tokens = max_new_tokens; random weights never
pick end-of-sequence anyway), in float32: int8 changes the logits, so int8 is only checked to run and return the
right number of tokens. Why the lengths and beams agree only with the corrections in steps/ is explained in
FasterWhisperTranslator (ct2_whisper_max_length) and Ct2MarianTranslator; two tests below pin CTranslate2's own
behaviour that those corrections rely on, so an upgrade that changes it fails here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from registry.fixtures import FixtureCaches
from resources import weights
from resources.audio import Audio, load_audio
from steps import ct2
from steps.machine_translation import Ct2MarianTranslator, MachineTranslationOptions, MarianTranslator
from steps.speech_translation import (
    FasterWhisperTranslator,
    SpeechTranslationOptions,
    WhisperTranslator,
    ct2_whisper_max_length,
)
from steps.stages import MACHINE_TRANSLATION, SPEECH_TRANSLATION, build_stage
from tests.speech import SPANISH_SENTENCES, speak, tone

N = 10  # fixed decode length of every agreement test
ENGLISH = ["Hello, how are you? The weather is nice today.", "The cat sleeps in my grandmother's house.", "Go!"]


@pytest.fixture(scope="module")
def ct2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ct2_cache")


@pytest.fixture(scope="module")
def st_options(fixture_caches: FixtureCaches, ct2_cache: Path) -> SpeechTranslationOptions:
    return SpeechTranslationOptions(
        model_cache=str(fixture_caches.hf_hub_cache),
        ct2_cache=str(ct2_cache),
        max_new_tokens=N,
        min_new_tokens=N,
        compute_type="float32",
        # No fallback: two engines' sampled retries never agree token for token (tested in test_whisper_stage)
        temperature_increment=0.0,
    )


@pytest.fixture(scope="module")
def mt_options(fixture_caches: FixtureCaches, ct2_cache: Path) -> MachineTranslationOptions:
    return MachineTranslationOptions(
        model_cache=str(fixture_caches.hf_hub_cache),
        ct2_cache=str(ct2_cache),
        max_new_tokens=N,
        min_new_tokens=N,
        num_beams=1,
        compute_type="float32",
    )


def ready(stage: Any) -> Any:
    stage.ensure_ready()
    return stage


@pytest.fixture(scope="module")
def hf_whisper(st_options: SpeechTranslationOptions) -> WhisperTranslator:
    return ready(WhisperTranslator(st_options))


@pytest.fixture(scope="module")
def ct_whisper(st_options: SpeechTranslationOptions) -> FasterWhisperTranslator:
    return ready(FasterWhisperTranslator(st_options))


@pytest.fixture(scope="module")
def hf_marian(mt_options: MachineTranslationOptions) -> MarianTranslator:
    return ready(MarianTranslator(mt_options))


@pytest.fixture(scope="module")
def ct_marian(mt_options: MachineTranslationOptions) -> Ct2MarianTranslator:
    return ready(Ct2MarianTranslator(mt_options))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Audio]:
    folder = tmp_path_factory.mktemp("ct2_clips")
    return [load_audio(speak(text, folder / f"{i}.wav")) for i, text in enumerate(SPANISH_SENTENCES)]


@pytest.fixture(scope="module")
def features(hf_whisper: WhisperTranslator, clips: list[Audio]) -> np.ndarray:
    return hf_whisper.features(clips)


def marian_pieces(stage: MarianTranslator, rows: Any) -> list[list[int]]:
    """Target pieces only: transformers' rows carry the decoder start (<pad>), </s> and padding."""
    special = {stage.tokenizer.pad_token_id, stage.tokenizer.eos_token_id}
    return [[t for t in row if t not in special] for row in (rows.tolist() if hasattr(rows, "tolist") else rows)]


def with_beams(stage: Any, monkeypatch: pytest.MonkeyPatch, beams: int) -> None:
    monkeypatch.setattr(stage, "options", replace(stage.options, num_beams=beams))


# --- speech translation ---------------------------------------------------------------------------------------


def test_whisper_greedy_matches_transformers_token_for_token(
    hf_whisper: WhisperTranslator, ct_whisper: FasterWhisperTranslator, features: np.ndarray
) -> None:
    expected = hf_whisper.generate_ids(features).tolist()
    got = ct_whisper.generate_ids(features)
    assert [len(ids) for ids in expected] == [N, N, N]
    assert got == expected
    assert len({tuple(ids) for ids in got}) == 3  # the output depends on the audio: no batch mix-up could pass


@pytest.mark.parametrize("beams", [2, 4])
def test_whisper_beam_search_matches_transformers(
    hf_whisper: WhisperTranslator,
    ct_whisper: FasterWhisperTranslator,
    features: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    beams: int,
) -> None:
    with_beams(hf_whisper, monkeypatch, beams)
    with_beams(ct_whisper, monkeypatch, beams)
    expected = hf_whisper.generate_ids(features).tolist()
    assert ct_whisper.generate_ids(features) == expected
    monkeypatch.setattr(hf_whisper, "options", replace(hf_whisper.options, num_beams=1))
    assert hf_whisper.generate_ids(features).tolist() != expected  # the beams do search: greedy differs here


def test_whisper_stage_path_is_shared_silence_long_audio_and_batches(
    hf_whisper: WhisperTranslator, ct_whisper: FasterWhisperTranslator, clips: list[Audio], tmp_path: Path
) -> None:
    silence = load_audio(tone(tmp_path / "silence.wav", 2.0))
    long = Audio(np.tile(clips[0].samples, int(np.ceil(45 / clips[0].seconds))), clips[0].sample_rate)
    got = ct_whisper.run([clips[1], long, silence])
    expected = hf_whisper.run([clips[1], long, silence])
    assert [r.output for r in got] == [r.output for r in expected]
    assert [r.output.chunks for r in got] == [1, 2, 0]
    assert got[2].output.no_speech and got[2].output.text == ""
    assert got[0].batch_size == 3 and got[0].output.text


def test_whisper_decodes_the_forced_prefix_as_faster_whisper_would(ct_whisper: FasterWhisperTranslator) -> None:
    import faster_whisper
    from faster_whisper.tokenizer import Tokenizer

    assert ct_whisper.decoder_prefix() == [50258, 50262, 50358, 50363]
    # The converted folder is a faster-whisper model: tokenizer.json, preprocessor_config.json, multilingual.
    model = faster_whisper.WhisperModel(str(ct_whisper.converted.path), device="cpu", compute_type="float32")
    assert model.model.is_multilingual and model.model.n_mels == 80
    tokenizer = Tokenizer(model.hf_tokenizer, True, task="translate", language="es")
    assert [*tokenizer.sot_sequence, tokenizer.no_timestamps] == ct_whisper.decoder_prefix()


def test_ct2_whisper_max_length_is_not_new_tokens(ct_whisper: FasterWhisperTranslator, features: np.ndarray) -> None:
    """CTranslate2 decodes min(max_length // 2, max_length - 3) steps after a 4-token prefix: the half-length bug."""
    import ctranslate2

    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[:1]))
    prefix = [ct_whisper.decoder_prefix()]

    def length(max_length: int) -> int:
        (result,) = ct_whisper.model.generate(
            storage, prefix, beam_size=1, max_length=max_length, suppress_tokens=[-1, 50257]
        )
        return len(result.sequences_ids[0])

    assert [length(n) for n in (10, 20, 30)] == [5, 10, 15]
    assert [length(ct2_whisper_max_length(4, n)) for n in (1, 2, 3, 10)] == [1, 2, 3, 10]


def test_whisper_int8_runs_with_the_requested_length(
    st_options: SpeechTranslationOptions, features: np.ndarray
) -> None:
    stage = ready(FasterWhisperTranslator(replace(st_options, compute_type="int8")))
    ids = stage.generate_ids(features)
    assert [len(row) for row in ids] == [N, N, N]
    assert all(0 <= t < 50257 for row in ids for t in row)  # text tokens: the suppressions hold in int8 too
    assert stage.models()[1].role == "speech_translation/ctranslate2-int8"
    assert stage.converted.manifest()["quantization"] == "int8"


def test_whisper_refuses_a_minimum_below_the_maximum(st_options: SpeechTranslationOptions) -> None:
    with pytest.raises(ValueError, match="min_new_tokens"):
        FasterWhisperTranslator(replace(st_options, min_new_tokens=3)).setup()


# --- machine translation --------------------------------------------------------------------------------------


def test_marian_greedy_matches_transformers_token_for_token(
    hf_marian: MarianTranslator, ct_marian: Ct2MarianTranslator
) -> None:
    texts = [hf_marian.source_text(t) for t in ENGLISH]
    raw = hf_marian.generate_ids(texts).tolist()
    assert all(row[-1] == hf_marian.tokenizer.eos_token_id for row in raw)  # forced </s> at the last step
    expected = marian_pieces(hf_marian, raw)
    got = ct_marian.generate_ids(texts)
    assert [len(ids) for ids in got] == [N - 1] * 3
    assert got == expected
    assert [r.output for r in ct_marian.run(ENGLISH)] == [r.output for r in hf_marian.run(ENGLISH)]


@pytest.mark.parametrize("beams", [2, 4])
def test_marian_beam_search_matches_transformers(
    hf_marian: MarianTranslator, ct_marian: Ct2MarianTranslator, monkeypatch: pytest.MonkeyPatch, beams: int
) -> None:
    with_beams(hf_marian, monkeypatch, beams)
    with_beams(ct_marian, monkeypatch, beams)
    texts = [hf_marian.source_text(t) for t in ENGLISH]
    expected = marian_pieces(hf_marian, hf_marian.generate_ids(texts))
    assert ct_marian.generate_ids(texts) == expected
    assert [r.output for r in ct_marian.run(ENGLISH)] == [r.output for r in hf_marian.run(ENGLISH)]


def test_marian_budget_without_the_forced_eos_diverges_at_beam_2(
    hf_marian: MarianTranslator, ct_marian: Ct2MarianTranslator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt's divergence: N free CTranslate2 steps vs transformers' N - 1 pieces + forced </s>.

    At beam 2 the N-th piece's log-prob reorders the finalists for some lengths (here: where the naive
    budget's first N - 1 pieces differ from transformers'); deciding N - 1 steps agrees at every length.
    """
    assert ct_marian.forced_eos  # opus-mt's generation_config has forced_eos_token_id
    texts = [hf_marian.source_text(t) for t in ENGLISH]
    sources = [ct_marian.tokenizer.convert_ids_to_tokens(ids) for ids in ct_marian.tokenizer(texts).input_ids]
    diverged = []
    for n in range(3, 17):
        options = replace(hf_marian.options, num_beams=2, max_new_tokens=n, min_new_tokens=n)
        monkeypatch.setattr(hf_marian, "options", options)
        monkeypatch.setattr(ct_marian, "options", options)
        expected = marian_pieces(hf_marian, hf_marian.generate_ids(texts))
        assert ct_marian.generate_ids(texts) == expected
        naive = ct_marian.translator.translate_batch(sources, beam_size=2, max_decoding_length=n, min_decoding_length=n)
        assert [len(r.hypotheses[0]) for r in naive] == [n] * 3  # one piece more than transformers' n - 1
        pieces = [ct_marian.tokenizer.convert_tokens_to_ids(r.hypotheses[0])[: n - 1] for r in naive]
        if pieces != expected:  # not just one extra piece: another beam won
            diverged.append(n)
    assert diverged


def test_marian_int8_runs_with_the_requested_length(mt_options: MachineTranslationOptions) -> None:
    stage = ready(Ct2MarianTranslator(replace(mt_options, compute_type="int8")))
    ids = stage.generate_ids([stage.source_text(t) for t in ENGLISH])
    assert [len(row) for row in ids] == [N - 1] * 3
    outputs = [r.output for r in stage.run(ENGLISH)]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in outputs)
    assert stage.models()[1].role == "machine_translation/ctranslate2-int8"


def test_marian_checks_the_target_token(mt_options: MachineTranslationOptions) -> None:
    with pytest.raises(ValueError, match=">>xx<<"):
        Ct2MarianTranslator(replace(mt_options, target_token=">>xx<<")).setup()


# --- conversion cache, model info, registration ---------------------------------------------------------------


def test_models_report_the_snapshot_and_the_converted_folder(
    hf_whisper: WhisperTranslator, ct_whisper: FasterWhisperTranslator, ct2_cache: Path
) -> None:
    source, converted = ct_whisper.models()
    assert source == hf_whisper.models()[0]
    assert converted.model_id == "openai/whisper-large" and converted.revision.startswith("sha256:")
    assert Path(converted.path).parent == ct2_cache / "openai--whisper-large" / source.revision
    manifest = ct_whisper.converted.manifest()
    assert manifest["source"] == {"model_id": source.model_id, "revision": source.revision, "path": source.path}
    assert {"model.bin", "vocabulary.json", "tokenizer.json", "preprocessor_config.json"} <= set(manifest["files"])
    assert converted.revision == "sha256:" + manifest["content_sha256"]


def test_a_second_load_reuses_the_conversion(
    st_options: SpeechTranslationOptions,
    mt_options: MachineTranslationOptions,
    ct_whisper: FasterWhisperTranslator,
    ct_marian: Ct2MarianTranslator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ct2, "convert", lambda *a, **k: pytest.fail("converted again"))
    again = ready(FasterWhisperTranslator(st_options))
    assert not again.converted.converted and again.converted.path == ct_whisper.converted.path
    marian = ready(Ct2MarianTranslator(mt_options))
    assert not marian.converted.converted and marian.converted.path == ct_marian.converted.path


def fake_source(tmp_path: Path) -> weights.LocalModel:
    return weights.LocalModel("org/model", "0123abc", tmp_path / "snapshot")


def test_a_conversion_finished_by_a_racer_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers converting at once: the loser's complete folder never replaces or corrupts the winner's."""
    source, cache = fake_source(tmp_path), tmp_path / "cache"
    final = ct2.conversion_dir(source, "int8", cache)

    def racing_convert(local: weights.LocalModel, out: Path, quantization: str) -> None:
        for folder, who in ((final, "winner"), (out, "loser")):  # the racer renames its folder in first
            folder.mkdir(parents=True)
            (folder / ct2.MANIFEST).write_text(json.dumps({"who": who}))

    monkeypatch.setattr(ct2, "convert", racing_convert)
    result = ct2.ensure_converted(source, "int8", cache)
    assert result.path == final and not result.converted
    assert json.loads((final / ct2.MANIFEST).read_text()) == {"who": "winner"}
    assert sorted(p.name for p in final.parent.iterdir() if not p.name.endswith(".lock")) == ["int8"]


def test_a_failed_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, cache = fake_source(tmp_path), tmp_path / "cache"

    def crashing_convert(local: weights.LocalModel, out: Path, quantization: str) -> None:
        out.mkdir(parents=True)
        (out / "model.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(ct2, "convert", crashing_convert)
    with pytest.raises(RuntimeError, match="mid-conversion"):
        ct2.ensure_converted(source, "int8", cache)
    parent = ct2.conversion_dir(source, "int8", cache).parent
    assert [p.name for p in parent.iterdir() if not p.name.endswith(".lock")] == []


def test_the_cache_key_is_model_revision_and_quantization(tmp_path: Path) -> None:
    source = fake_source(tmp_path)
    keys = {
        ct2.conversion_dir(source, "int8", tmp_path),
        ct2.conversion_dir(source, "float16", tmp_path),
        ct2.conversion_dir(replace(source, revision="fedcba9"), "int8", tmp_path),
        ct2.conversion_dir(replace(source, model_id="org/other"), "int8", tmp_path),
    }
    assert len(keys) == 4
    folder = tmp_path / "local-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    local = weights.LocalModel(str(folder), "local", folder)
    before = ct2.conversion_dir(local, "int8", tmp_path)
    (folder / "config.json").write_text('{"edited": true}')
    assert ct2.conversion_dir(local, "int8", tmp_path) != before  # an edited local folder is converted again


def test_whisper_conversion_writes_the_preprocessor_config_transformers_5_omits(
    hf_whisper: WhisperTranslator, ct_whisper: FasterWhisperTranslator, tmp_path: Path
) -> None:
    saved = tmp_path / "saved"
    hf_whisper.processor.save_pretrained(saved)  # transformers 5: processor_config.json, no preprocessor_config
    assert not (saved / "preprocessor_config.json").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / "vocabulary.json").write_bytes((ct_whisper.converted.path / "vocabulary.json").read_bytes())
    ct2.complete_whisper(saved, out)
    config = json.loads((out / "preprocessor_config.json").read_text())
    assert config["feature_size"] == 80 and config["sampling_rate"] == 16000


def test_a_missing_model_fails_as_in_the_transformers_backend(
    st_options: SpeechTranslationOptions,
    mt_options: MachineTranslationOptions,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(weights.constants, "HF_HUB_OFFLINE", True)
    empty, cache = tmp_path / "empty-hub", tmp_path / "ct2"
    pairs = [
        (WhisperTranslator, FasterWhisperTranslator, replace(st_options, model_cache=str(empty), ct2_cache=str(cache))),
        (MarianTranslator, Ct2MarianTranslator, replace(mt_options, model_cache=str(empty), ct2_cache=str(cache))),
    ]
    for reference, backend, options in pairs:
        with pytest.raises(weights.ModelUnavailableError) as expected:
            reference(options).setup()
        with pytest.raises(weights.ModelUnavailableError) as got:
            backend(options).setup()
        assert str(got.value) == str(expected.value) and options.model in str(got.value)
    assert not cache.exists()


def test_both_backends_are_registered_and_compute_type_auto_is_per_device(
    st_options: SpeechTranslationOptions, mt_options: MachineTranslationOptions
) -> None:
    assert type(build_stage(SPEECH_TRANSLATION, replace(st_options, backend="ctranslate2"))) is FasterWhisperTranslator
    assert type(build_stage(MACHINE_TRANSLATION, replace(mt_options, backend="ctranslate2"))) is Ct2MarianTranslator
    assert ct2.resolve_compute_type("auto", "cpu") == "int8"
    assert ct2.resolve_compute_type("auto", "cuda:0") == "float16"
    assert ct2.resolve_compute_type("int8_float16", "cuda") == "int8_float16"
    assert ct2.device_kwargs("cuda:1") == {"device": "cuda", "device_index": 1}
    with pytest.raises(ValueError, match="compute_type"):
        ct2.resolve_compute_type("fp8", "cpu")
