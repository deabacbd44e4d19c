"""Adding a stage is one StageSpec entry plus its step function: everything else derives from steps.stages.STAGES.

An identity text stage ("echo", between machine translation and speech synthesis) is registered for the length of
a test; the in-process runtime runs it, and the pipeline plan, the command line, the ClearML parameters and the
summaries pick it up with no other edit.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clearml_pipeline.config import PipelineConfig, add_config_flags, config_from_flags
from clearml_pipeline.controller import step_overrides
from clearml_pipeline.inputs import discover_inputs
from clearml_pipeline.pipeline import parameters, parse_shards, pipeline_parameters, plan
from clearml_pipeline.runner import InProcessRuntime
from steps.base import ItemError, ModelInfo, Stage
from steps.options import option
from steps.results import ItemResult, load_rows
from steps.stages import STAGES, StageSpec, StepContext, stage_names
from tests.configs import fixture_config
from tests.speech import SPANISH_SENTENCES, speak


@dataclass(frozen=True)
class EchoOptions:
    backend: str = option("identity", "the only backend: returns the text it is given", pipeline=True)
    mark: str = option("", "appended to every text (so the test can see the stage ran)")


class Echo(Stage[str, str]):
    name = "echo"

    def __init__(self, options: EchoOptions) -> None:
        super().__init__()
        self.options = options

    def setup(self) -> None:
        pass

    def process(self, inputs: Sequence[str]) -> list[str | ItemError]:
        return [text + self.options.mark for text in inputs]

    def models(self) -> list[ModelInfo]:
        return []


def echo_step(stage: Stage[Any, Any], rows: list[ItemResult], ctx: StepContext) -> None:
    live = [r for r in rows if r.ok and r.zh_text]
    for row, result in zip(live, stage.run([r.zh_text for r in live]), strict=True):
        row.latency_s[stage.name] = result.latency_s
        if result.ok:
            row.zh_text = result.output
        else:
            row.fail(stage.name, result.error or "failed")


ECHO = StageSpec("echo", "echo", EchoOptions, {"identity": Echo}, echo_step, writes=("zh_text",))


@pytest.fixture
def echo_stage() -> Iterator[StageSpec]:
    """ECHO registered after machine translation, for one test (STAGES is a list that everything reads)."""
    STAGES.insert(2, ECHO)
    try:
        yield ECHO
    finally:
        STAGES.remove(ECHO)


def test_the_plan_flags_and_parameters_include_a_registered_stage(echo_stage: StageSpec) -> None:
    nodes = {node.name: node for node in plan(parse_shards("1:1:1:3"))}
    assert nodes["echo"].parents == ("machine_translation",)
    assert nodes["speech_synthesis_shard0"].parents == ("echo",)
    assert nodes["evaluation"].parents == tuple(f"speech_synthesis_shard{k}" for k in range(3))
    with pytest.raises(ValueError, match="4 positive counts"):
        parse_shards("1:1:1")
    config = PipelineConfig()
    params = parameters(nodes["echo"].step, config)
    assert params["echo/backend"] == "identity" and params["echo/mark"] == "" and params["runner/batch_size"] == 8
    assert {key.split("/")[0] for key in params} == {"runner", "echo"}
    assert pipeline_parameters(config)["echo_backend"] == "echo/backend"
    assert step_overrides(nodes["echo"], config)["echo/backend"] == "${pipeline.echo_backend}"
    assert stage_names() == ("input", "speech_translation", "machine_translation", "echo", "speech_synthesis")
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    assert config_from_flags(parser.parse_args(["--echo-mark", "!"])).echo.mark == "!"


def test_the_inprocess_runtime_runs_a_registered_stage(
    echo_stage: StageSpec, fixture_caches: Any, tmp_path: Path
) -> None:
    clips = tmp_path / "clips"
    for i, text in enumerate(SPANISH_SENTENCES[:2]):
        speak(text, clips / f"{i}.wav")
    config = fixture_config(
        {
            "speech_translation": {"max_new_tokens": 6},
            "machine_translation": {"max_new_tokens": 6},
            "echo": {"mark": "。"},
            "speech_synthesis": {"maxlenratio": 3.0},
        }
    )
    summary = InProcessRuntime(config).run(discover_inputs(clips), tmp_path / "out")
    assert summary["counts"]["items"] == summary["counts"]["ok"] == 2
    assert summary["stages"]["echo"]["items"] == 2 and summary["config"]["echo"]["mark"] == "。"
    rows = load_rows(tmp_path / "out" / "results.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert row.ok and row.zh_text and row.zh_text.endswith("。") and "echo" in row.latency_s
        assert row.zh_audio and (tmp_path / "out" / row.zh_audio).is_file()
        assert row.latency_s["total"] == pytest.approx(sum(row.latency_s.get(n, 0.0) for n in stage_names()))
