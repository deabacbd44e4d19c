"""One typed round trip for options: flags -> dataclass -> ClearML parameters -> dataclass, one parser throughout."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from clearml_pipeline.config import PipelineConfig, RunConfig, add_config_flags, config_from_flags
from clearml_pipeline.pipeline import pipeline_parameters
from steps.options import parse_value, to_params, with_values

# What the README promises the web UI's new-run dialog edits (besides dataset and the queues).
UI_PARAMETERS = {
    "limit": "runner/limit",
    "batch_size": "runner/batch_size",
    "models": "runner/models",
    "st_model": "speech_translation/model",
    "st_backend": "speech_translation/backend",
    "st_batch_size": "speech_translation/batch_size",
    "mt_model": "machine_translation/model",
    "mt_backend": "machine_translation/backend",
    "mt_num_beams": "machine_translation/num_beams",
    "tts_model": "speech_synthesis/model",
    "tts_vocoder": "speech_synthesis/vocoder",
    "asr_model": "evaluation/asr_model",
}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, evaluation=True)
    return parser.parse_args(list(argv))


def test_the_pipeline_parameters_are_the_ones_the_readme_names() -> None:
    assert pipeline_parameters(PipelineConfig()) == UI_PARAMETERS


def test_flags_to_parameters_and_back_give_the_same_config() -> None:
    config = config_from_flags(
        parse("--st-model", "openai/whisper-large-v3", "--mt-num-beams", "2", "--st-revision", "abc",
              "--eval-plots", "false", "--max-audio-seconds", "60.5"),
        evaluation=True,
    )
    assert config.run.speech_translation.model == "openai/whisper-large-v3"
    assert config.run.machine_translation.num_beams == 2 and config.evaluation.plots is False
    # ClearML stores every parameter as a string: None becomes "" and comes back as None.
    params = {name: {k: str(v) for k, v in to_params(options).items()} for name, options in config.sections().items()}
    assert params["speech_translation"]["model_cache"] == ""
    assert PipelineConfig().updated(params) == config


def test_options_are_frozen_and_updates_return_new_configs() -> None:
    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.speech_translation.model = "x"  # type: ignore[misc]
    changed = config.updated({"speech_translation": {"num_beams": "3"}})
    assert changed.speech_translation.num_beams == 3 and config.speech_translation.num_beams == 1
    with pytest.raises(ValueError, match="unknown option section"):
        config.updated({"nope": {}})


def test_an_explicit_option_beats_the_model_sets_defaults() -> None:
    capped = config_from_flags(parse("--models", "fixtures"), evaluation=True)
    assert capped.run.speech_translation.max_new_tokens == 32 and capped.evaluation.asr_max_new_tokens == 32
    # Equal to the dataclass default, and still the user's choice.
    explicit = config_from_flags(parse("--models", "fixtures", "--st-max-new-tokens", "440"), evaluation=True)
    assert explicit.run.speech_translation.max_new_tokens == 440
    assert config_from_flags(parse()).speech_translation.max_new_tokens == 440  # hub: no caps


def test_the_one_parser() -> None:
    assert parse_value("yes", bool) is True and parse_value("0", bool) is False and parse_value("False", bool) is False
    with pytest.raises(ValueError, match="a boolean is true or false"):
        parse_value("ture", bool)
    assert parse_value(" 7 ", int) == 7 and parse_value("", int | None) is None
    assert with_values(RunConfig().runner, {"limit": "5", "unknown": 1}).limit == 5
    with pytest.raises(ValueError):
        parse_value("many", int)


def test_every_command_prints_its_help() -> None:
    """argparse formats each help text with %: a stray percent sign in an option's help made `run --help` fail."""
    from clearml_pipeline.__main__ import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"run", "bench", "bench-tts", "evaluate", "reproduce"} <= set(commands)
    for name, command in commands.items():
        text = command.format_help()
        assert f"usage: python -m clearml_pipeline {name}" in text, name
    assert "--replica-memory" in commands["run"].format_help()


def test_a_value_an_option_does_not_take_stops_at_the_flag_and_at_the_parameter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """dtypes, auto / true / false switches and the streaming runtime's ratios and memory are checked where they are
    read: a typo used to surface only when its stage started (the steps runtime: after the earlier steps had run)."""
    from clearml_pipeline.__main__ import build_parser

    tts = parse("--tts-dtype", "bfloat16", "--tts-packed-lstm", "False", "--tts-channels-last", "no")
    assert (tts.tts_dtype, tts.tts_packed_lstm, tts.tts_channels_last) == ("bfloat16", "False", "no")
    for argv, message in (
        (["--tts-dtype", "float8"], "--tts-dtype: takes one of auto, float32, float16, bfloat16; got 'float8'"),
        (["--st-dtype", "fp16"], "argument --st-dtype: takes one of"),
        (["--tts-packed-lstm", "ture"], "argument --tts-packed-lstm: takes auto, true or false; got 'ture'"),
        (["--limit", "abc"], "argument --limit: takes a whole number; got 'abc'"),
        (["--eval-plots", "ture"], "argument --eval-plots: takes true or false; got 'ture'"),
        (["--models", "fixture"], "argument --models: takes one of hub, fixtures, fixtures-full; got 'fixture'"),
        (["--tts-pause-seconds", "1,5"], "argument --tts-pause-seconds: takes a number; got '1,5'"),
    ):
        with pytest.raises(SystemExit) as stopped:
            parse(*argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    run = build_parser()
    for argv, message in (
        (["--replicas", "1:x"], "--replicas takes 3 positive integers"),
        (["--replica-threads", "0:1:1"], "--replica-threads takes 3 positive integers"),
        (["--replica-memory", "lots"], "--replica-memory takes auto or a number of GiB >= 0"),
    ):
        with pytest.raises(SystemExit):
            run.parse_args(["run", "--local", "--runtime", "streaming", *argv])
        assert message in capsys.readouterr().err
    # ClearML parameters (a step task's, a run edited in the web UI) are read through with_values
    tts_options = RunConfig().speech_synthesis
    with pytest.raises(ValueError, match=r"^dtype takes one of auto, float32, float16, bfloat16; got 'float8'$"):
        with_values(tts_options, {"dtype": "float8"})
    with pytest.raises(ValueError, match=r"^vocoder_windows takes auto, true or false"):
        with_values(tts_options, {"vocoder_windows": "sometimes"})
    assert with_values(tts_options, {"vocoder_windows": "TRUE", "dtype": "auto"}).vocoder_windows == "TRUE"
    with pytest.raises(ValueError, match=r"^batch_size: invalid literal for int"):
        with_values(tts_options, {"batch_size": "eight"})
    for argv, message in (
        (["--st-device", "gpu"], "--st-device: takes auto, cpu, cuda or cuda:N; got 'gpu'"),
        (["--mt-compute-type", "int4"], "--mt-compute-type: takes one of auto, int8,"),
        (["--mt-backend", "marian"], "--mt-backend: takes one of transformers, ctranslate2; got 'marian'"),
        (["--eval-device", "cuda:x"], "--eval-device: takes auto, cpu, cuda or cuda:N"),
    ):
        with pytest.raises(SystemExit):
            parse(*argv)
        assert message in capsys.readouterr().err
    assert parse("--st-device", "cuda:1", "--tts-device", "cpu").st_device == "cuda:1"


def test_bench_tts_checks_the_stage_fields_it_offers_as_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """bench-tts's --tts-* flags are the stage's fields, parsed and checked by the field's own check at the flag
    (they were plain strings: a bad dtype surfaced when the stage was built); stage_options checks a value too."""
    from clearml_pipeline.__main__ import build_parser
    from clearml_pipeline.tts_models import stage_options

    parser = build_parser()
    args = parser.parse_args(["bench-tts", "--output", "x", "--tts-dtype", "bfloat16", "--tts-vocoder-windows", "no",
                              "--tts-vocoder-window-frames", "256"])
    assert (args.tts_dtype, args.tts_vocoder_windows, args.tts_vocoder_window_frames) == ("bfloat16", "no", 256)
    assert args.tts_device is None and args.tts_packed_lstm is None  # not given: the stage's own value
    for argv, message in (
        (["--tts-dtype", "float8"], "argument --tts-dtype: takes one of auto, float32, float16, bfloat16; got"),
        (["--tts-device", "gpu"], "argument --tts-device: takes auto, cpu, cuda or cuda:N; got 'gpu'"),
        (["--tts-fused-vocoder", "ture"], "argument --tts-fused-vocoder: takes auto, true or false; got 'ture'"),
        (["--tts-vocoder-bucket-frames", "x"], "argument --tts-vocoder-bucket-frames: takes a whole number"),
    ):
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(["bench-tts", "--output", "x", *argv])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^dtype takes one of"):
        stage_options("hub", 10.0, dtype="float8")


def test_every_stage_takes_exactly_the_backends_it_has() -> None:
    """The backend flags' check lists the backends by name; the stage registry (steps.stages) is what runs them."""
    from steps.options import check_values
    from steps.stages import STAGES

    for spec in STAGES:
        for backend in spec.backends:
            check_values(dataclasses.replace(spec.options(), backend=backend))
        with pytest.raises(ValueError, match=r"^backend takes one of"):
            check_values(dataclasses.replace(spec.options(), backend="nope"))
