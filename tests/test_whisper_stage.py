"""Stage 1's model folders, decoding safeguards and compute-type check, on the fixture Whisper (both backends).

The fallback rules themselves are checked on scripted decodes (no model: each case is exact); on the fixture, with a
log-probability threshold no decode meets, each backend must retry hotter, keep the forced prefix (language and
translate task) on every retry, and sample best_of hypotheses.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from registry.fixtures import FixtureCaches
from resources.audio import Audio, load_audio
from steps import ct2
from steps.speech_translation import FasterWhisperTranslator, SpeechTranslationOptions, WhisperTranslator, whisper_for
from steps.whisper_decoding import Decoded, FallbackRules, decode_with_fallback, skipped, temperatures
from tests.speech import SPANISH_SENTENCES, speak

PREFIX = [50258, 50262, 50358, 50363]  # sot, es, translate, notimestamps
READY_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.json")


@pytest.fixture(scope="module")
def options(fixture_caches: FixtureCaches, tmp_path_factory: pytest.TempPathFactory) -> SpeechTranslationOptions:
    return SpeechTranslationOptions(
        model_cache=str(fixture_caches.hf_hub_cache),
        ct2_cache=str(tmp_path_factory.mktemp("ct2_cache")),
        max_new_tokens=6,
        compute_type="float32",
        temperature_increment=0.5,  # 0.0, 0.5, 1.0: three passes
        best_of=2,
        # The fixture decodes confidently (init_std 1.0: peaked logits); at 0.0 every decode counts as unsure.
        logprob_threshold=0.0,
    )


@pytest.fixture(scope="module")
def hf(options: SpeechTranslationOptions) -> WhisperTranslator:
    stage = WhisperTranslator(options)
    stage.ensure_ready()
    return stage


@pytest.fixture(scope="module")
def ct(options: SpeechTranslationOptions) -> FasterWhisperTranslator:
    stage = FasterWhisperTranslator(options)
    stage.ensure_ready()
    return stage


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Audio:
    return load_audio(speak(SPANISH_SENTENCES[1], tmp_path_factory.mktemp("ws") / "clip.wav"))


def ready_folder(ct: FasterWhisperTranslator, where: Path, drop: str = "") -> Path:
    """The conversion reduced to what a faster-whisper repository holds (no preprocessor_config.json)."""
    assert ct.converted is not None
    where.mkdir()
    for name in READY_FILES:
        if name != drop:
            shutil.copy2(ct.converted.path / name, where / name)
    return where


# --- the rules, on scripted decodes ----------------------------------------------------------------------------


def scripted(answers: dict[float, list[Decoded]]) -> tuple[Any, list[tuple[list[int], float]]]:
    calls: list[tuple[list[int], float]] = []

    def decode(indices: Any, temperature: float) -> list[Decoded]:
        calls.append((list(indices), temperature))
        return [answers[temperature][i] for i in indices]

    return decode, calls


def text_of(tokens: list[int]) -> str:
    return "I'm sorry, " * 40 if tokens == [1] else f"words {tokens}"


def test_loops_and_unsure_decodes_are_retried_hotter_silence_is_not() -> None:
    rules = FallbackRules(temperatures=(0.0, 0.5, 1.0))
    loop, unsure, fine = Decoded([1], -0.2, 0.0), Decoded([2], -1.5, 0.1), Decoded([3], -0.3, 0.1)
    silence = Decoded([4], -1.5, 0.9)
    decode, calls = scripted({0.0: [loop, unsure, fine, silence], 0.5: [fine, unsure, fine, fine], 1.0: [fine] * 4})
    kept = decode_with_fallback(4, decode, text_of, rules)
    assert calls == [([0, 1, 2, 3], 0.0), ([0, 1], 0.5), ([1], 1.0)]  # each temperature once, only what failed
    assert kept[0].temperature == 0.5 and kept[0].compression_ratio < 2.4 and kept[0].tokens == [3]
    assert kept[1].temperature == 1.0 and kept[1].tokens == [3]
    assert kept[2].temperature == 0.0 and not skipped(kept[2], rules)
    assert kept[3].temperature == 0.0 and skipped(kept[3], rules)  # silence: no retry, and no text


def test_when_every_temperature_fails_the_likeliest_non_loop_is_kept() -> None:
    rules = FallbackRules(temperatures=(0.0, 0.5))
    decode, _ = scripted({0.0: [Decoded([2], -1.8, 0.0)], 0.5: [Decoded([1], -0.1, 0.0)]})
    (kept,) = decode_with_fallback(1, decode, text_of, rules)
    assert kept.tokens == [2] and kept.temperature == 0.5  # the loop had the better log-probability: not kept
    confident = Decoded([5], -0.5, 0.95)  # a high no-speech probability, but text good enough to trust
    assert not skipped(confident, rules) and skipped(replace(confident, avg_logprob=-1.2), rules)


def test_thresholds_off_mean_one_pass_and_temperatures_follow_openais_cli() -> None:
    off = FallbackRules(temperatures=(0.0, 0.5), compression_ratio_threshold=None, logprob_threshold=None)
    decode, calls = scripted({0.0: [Decoded([1], -9.0, 0.99)]})
    (kept,) = decode_with_fallback(1, decode, text_of, off)
    assert len(calls) == 1 and not skipped(kept, replace(off, no_speech_threshold=None))
    assert temperatures(0.0, 0.2) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperatures(0.0, 0.0) == temperatures(0.0, None) == (0.0,)
    assert SpeechTranslationOptions().rules() == FallbackRules()  # the defaults are Whisper's


# --- both backends retry hotter, with the forced prefix --------------------------------------------------------


def test_transformers_retries_hotter_keeping_the_prefix(
    hf: WhisperTranslator, clip: Audio, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, int, list[int]]] = []
    generate = hf.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = generate(*args, **kwargs)
        seen.append((kwargs["temperature"], kwargs["encoder_outputs"].last_hidden_state.shape[0], []))
        return out

    def first_input(_module: Any, args: Any, kwargs: Any) -> None:  # the decoder input after each generate()
        if seen and not seen[-1][2]:
            ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
            seen[-1][2].extend(ids[0].tolist())

    hook = hf.model.model.decoder.register_forward_pre_hook(first_input, with_kwargs=True)
    monkeypatch.setattr(hf.model, "generate", spy)
    try:
        (result,) = hf.run([clip])
    finally:
        hook.remove()
    assert [(t, rows) for t, rows, _ in seen] == [(0.0, 1), (0.5, 2), (1.0, 2)]  # best_of 2 samples when hot
    assert all(prefix[:4] == PREFIX for _, _, prefix in seen)  # the rescoring pass starts from the prefix
    assert result.ok and result.output.chunks == 1


def test_ctranslate2_retries_hotter_keeping_the_prefix(
    ct: FasterWhisperTranslator, clip: Audio, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    model = ct.model

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(model, name)

        def generate(self, encoded: Any, prompts: list[list[int]], **kwargs: Any) -> Any:
            seen.append({"prompts": prompts, **kwargs})
            return model.generate(encoded, prompts, **kwargs)

    monkeypatch.setattr(ct, "model", Spy())
    (result,) = ct.run([clip])
    assert [call.get("sampling_temperature", 0.0) for call in seen] == [0.0, 0.5, 1.0]
    assert [call.get("num_hypotheses", 1) for call in seen] == [1, 2, 2]
    assert all(call["prompts"] == [PREFIX] and call["return_no_speech_prob"] for call in seen)
    assert result.ok and result.output.chunks == 1


# --- model folders ---------------------------------------------------------------------------------------------


def test_a_ready_ctranslate2_folder_loads_as_it_is_and_decodes_like_the_conversion(
    ct: FasterWhisperTranslator, clip: Audio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = ready_folder(ct, tmp_path / "faster-whisper-fixture")
    monkeypatch.setattr(ct2, "convert", lambda *a, **k: pytest.fail("a ready folder was converted"))
    stage = FasterWhisperTranslator(replace(ct.options, model=str(folder)))
    stage.ensure_ready()
    assert stage.converted is None and ct2.whisper_layout(folder) == ct2.CTRANSLATE2
    (info,) = stage.models()
    assert info.path == str(folder.resolve()) and info.revision.startswith("local-")
    features = ct.features([clip])
    assert np.array_equal(stage.features([clip]), features)  # no preprocessor_config.json: 80 mels from the model
    assert stage.generate_ids(features) == ct.generate_ids(features)
    assert type(whisper_for(replace(ct.options, model=str(folder), backend="transformers"))) is FasterWhisperTranslator
    with pytest.raises(ct2.ModelLayoutError, match="--st-backend ctranslate2"):
        WhisperTranslator(replace(ct.options, model=str(folder))).setup()


def test_a_folder_that_is_neither_layout_says_what_it_misses(ct: FasterWhisperTranslator, tmp_path: Path) -> None:
    with pytest.raises(ct2.ModelLayoutError, match=r"missing tokenizer\.json"):
        ct2.whisper_layout(ready_folder(ct, tmp_path / "no-tokenizer", drop="tokenizer.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ct2.ModelLayoutError, match=r"model\.safetensors.*model\.bin, config\.json, tokenizer\.json"):
        ct2.whisper_layout(tmp_path / "empty")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(ct2.ModelLayoutError, match=r"no weights.*model\.safetensors"):
        ct2.whisper_layout(tmp_path / "no-weights")
    (tmp_path / "marian").mkdir()
    (tmp_path / "marian" / "config.json").write_text('{"model_type": "marian"}')
    with pytest.raises(ct2.ModelLayoutError, match="'marian' checkpoint, not Whisper"):
        ct2.whisper_layout(tmp_path / "marian")


def test_the_transformers_backend_loads_a_checkpoint_without_preprocessor_config(
    hf: WhisperTranslator, clip: Audio, tmp_path: Path
) -> None:
    assert hf.local is not None and ct2.whisper_layout(hf.local.path) == ct2.TRANSFORMERS
    saved = shutil.copytree(hf.local.path, tmp_path / "saved")  # the hub cache's links become files
    (saved / "preprocessor_config.json").unlink()
    stage = WhisperTranslator(replace(hf.options, model=str(saved)))
    stage.ensure_ready()
    assert stage.feature_extractor.feature_size == 80
    assert np.array_equal(stage.features([clip]), hf.features([clip]))


def test_unsupported_compute_types_fail_before_anything_is_converted(
    options: SpeechTranslationOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctranslate2

    unsupported = sorted(set(ct2.COMPUTE_TYPES) - {"auto"} - ctranslate2.get_supported_compute_types("cpu"))
    assert {"float16", "int8_float16"} <= set(unsupported)  # CPUs have no float16 kernels
    monkeypatch.setattr(ct2, "convert", lambda *a, **k: pytest.fail("converted before the check"))
    for compute_type in unsupported:
        cache = tmp_path / compute_type
        stage = FasterWhisperTranslator(replace(options, compute_type=compute_type, device="cpu", ct2_cache=str(cache)))
        with pytest.raises(ValueError, match=f"{compute_type!r} is not supported on cpu.*int8"):
            stage.setup()
        assert not cache.exists()  # no conversion and no empty cache folders left behind


def test_features_one_chunk_at_a_time_are_the_batched_extractors(hf: WhisperTranslator, clip: Audio) -> None:
    """features() runs the extractor chunk by chunk (a batched STFT was mapped and faulted in on every call):
    the numbers are what one batched call gives, chunks of other lengths included."""
    from resources.audio import WHISPER_SAMPLE_RATE

    short = Audio(clip.samples[: len(clip.samples) // 3], clip.sample_rate)
    chunks = [clip, short, clip]
    batched = hf.feature_extractor(
        [c.samples for c in chunks], sampling_rate=WHISPER_SAMPLE_RATE, return_tensors="np"
    ).input_features
    ours = hf.features(chunks)
    assert ours.shape == batched.shape == (3, 80, 3000)
    assert np.array_equal(ours, batched) and not np.array_equal(ours[0], ours[1])


def test_rescoring_a_few_logits_at_a_time_gives_the_whole_pass_figures(
    hf: WhisperTranslator, clip: Audio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rescore() makes its logits a few positions at a time (whole, they were mapped and faulted in on every
    batch): the no-speech probability and average log-probabilities equal those of one whole teacher-forced
    pass with log_softmax over every position, at any chunk size, the end token and suppressed tokens counted as
    OpenAI counts them."""
    import torch

    from steps import whisper_transformers

    features = hf.features([clip, Audio(clip.samples[: len(clip.samples) // 2], clip.sample_rate)])
    hidden = hf.encode(features)
    eot = hf.generation_config.eos_token_id
    token = next(t for t in range(eot) if not hf.suppress_first[t])
    # one row ends early (padded with the end token, as generate pads), one runs to the length limit
    sequences = torch.tensor([[token, eot] + [eot] * 7, [token] * 9])

    prefix = torch.tensor(hf.decoder_prefix()).expand(2, -1)
    with torch.inference_mode():
        logits = hf.model(encoder_outputs=(hidden,), decoder_input_ids=torch.cat([prefix, sequences[:, :-1]], 1)).logits
    no_speech = logits[:, 0].softmax(-1)[:, hf.generation_config.no_timestamps_token_id - 1]
    steps = logits[:, len(PREFIX) - 1 :].clone()
    steps[:, 1:, hf.suppress] = float("-inf")
    steps[:, 0, hf.suppress_first] = float("-inf")
    logprobs = steps.log_softmax(-1).gather(-1, sequences.unsqueeze(-1)).squeeze(-1)
    ids = sequences.tolist()
    ends = [row.index(eot) if eot in row else len(row) for row in ids]
    expected = [float(logprobs[r, : ends[r] + (eot in ids[r])].sum()) / (ends[r] + 1) for r in range(2)]
    assert ends[0] < len(ids[0]) and eot not in ids[1]

    for budget in (whisper_transformers.LOGITS_BYTES, 4 * hf.model.config.vocab_size * 2 * 3, 1):
        monkeypatch.setattr(whisper_transformers, "LOGITS_BYTES", budget)
        with torch.inference_mode():
            got = hf.rescore(hidden, sequences)
        assert [d.tokens for d in got] == [row[: end] for row, end in zip(ids, ends, strict=True)]
        assert [d.avg_logprob for d in got] == pytest.approx(expected, abs=1e-5)
        assert [d.no_speech_prob for d in got] == pytest.approx(no_speech.tolist(), abs=1e-6)
