"""Adding a stage is one StageSpec entry plus its step function: everything else derives from steps.stages.STAGES.

An identity text stage ("echo", between machine translation and speech synthesis) is registered for the length of
a test; the in-process runtime runs it, and the pipeline plan, the command line, the ClearML parameters and the
summaries pick it up with no other edit.
"""

from __future__ import annotations

import argparse
import json
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
from steps.results import ItemResult, load_rows, write_rows
from steps.stages import STAGES, StageSpec, StepContext, chinese_length, stage_names
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


class _Logger:
    """Stands in for a clearml Logger: every report is accepted and dropped (the figures are not under test)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def test_a_stage_step_takes_a_datasets_rows_longest_first(tmp_path: Path) -> None:
    """A step runs a whole dataset through its stage, so with a `size` in its StageSpec it takes the rows longest
    first: each call holds rows of like size (a batch costs what its longest item costs), and results.jsonl still
    lists every row in input order."""
    from clearml_pipeline.pipeline import PipelineStep, StepIO
    from clearml_pipeline.step_work import StepEnv, StepInput, run_stage

    calls: list[list[str]] = []

    class Recording(Echo):
        def process(self, inputs: Sequence[str]) -> list[str | ItemError]:
            calls.append(list(inputs))
            return super().process(inputs)

    spec = StageSpec("echo", "echo", EchoOptions, {"identity": Recording}, echo_step, writes=("zh_text",),
                     size=chinese_length)
    texts = ["你好吗", "今天的天气非常好啊", "好", "我们明天去北京", "谢谢你们", "这是一个很长的句", "再见"]
    given = tmp_path / "given"
    given.mkdir()
    write_rows(given / "results.jsonl", [ItemResult(f"item{i}", f"{i}.wav", zh_text=t) for i, t in enumerate(texts)])
    (given / "run.json").write_text(json.dumps({"busy_s": {}, "models": [], "stages": {}}), encoding="utf-8")
    STAGES.insert(2, spec)
    try:
        config = PipelineConfig().updated({"runner": {"batch_size": 3}, "echo": {"mark": "。"}})
        step = PipelineStep("echo", "inference", "cpu", ("machine_translation",), ("runner", "echo"), spec)
        out = tmp_path / "out"
        out.mkdir()
        env = StepEnv(step, StepIO(name="echo"), config, out, _Logger(), dataset_root=lambda: given)
        run_stage(env, StepInput(given / "results.jsonl", given / "run.json"))
    finally:
        STAGES.remove(spec)
    assert [[len(text) for text in call] for call in calls] == [[9, 8, 7], [4, 3, 2], [1]]
    rows = load_rows(out / "results.jsonl")
    assert [row.id for row in rows] == [f"item{i}" for i in range(len(texts))]
    assert [row.zh_text for row in rows] == [text + "。" for text in texts]
