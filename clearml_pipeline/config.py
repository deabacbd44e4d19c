"""Run configuration: the runner's options plus every stage's, frozen, with one way in from flags and parameters.

A run's configuration is a set of named sections, one options dataclass each: `runner`, one per stage in
steps.stages.STAGES (named after the stage), and for a pipeline run `evaluation`. The same sections become the
command-line flag groups (--st-model, --mt-num-beams ...), the ClearML task parameters (speech_translation/model
...) and pipeline.json; steps.options parses all three the same way. Configs are never edited in place:
`updated` returns a new one.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from registry.model_sets import MODEL_SETS
from steps.options import add_flags, flags_given, one_of, option, with_values
from steps.stages import STAGES, StageSpec

Changes = Mapping[str, Mapping[str, Any]]  # section -> {field: value}; values may be strings


@dataclass(frozen=True)
class RunnerOptions:
    batch_size: int = option(
        8,
        "items that go through a stage together, in every runtime (each stage's own batch size then bounds one "
        "forward pass)",
        pipeline=True,
    )
    max_audio_seconds: float = option(1200.0, "longer inputs are error rows, not silently cut")
    limit: int = option(0, "process only the first N inputs; 0: every input", pipeline=True)
    models: str = option(
        "hub",
        "model set: hub (the real model ids), fixtures (tiny random models: noise out, offline), fixtures-full",
        pipeline=True,
        check=one_of(*MODEL_SETS),
    )
    threads: int = option(0, "torch intra-op threads; 0 leaves torch's default")


def _default_stages() -> dict[str, Any]:
    return {spec.name: spec.options() for spec in STAGES}


def _update(sections: Mapping[str, Any], changes: Changes) -> dict[str, Any]:
    unknown = set(changes) - set(sections)
    if unknown:
        raise ValueError(f"unknown option section(s) {', '.join(sorted(unknown))}; known: {', '.join(sections)}")
    return {name: with_values(options, changes.get(name, {})) for name, options in sections.items()}


@dataclass(frozen=True)
class RunConfig:
    """What the runtimes need: the runner's options and each stage's, by stage name."""

    runner: RunnerOptions = field(default_factory=RunnerOptions)
    stages: dict[str, Any] = field(default_factory=_default_stages)

    def __getattr__(self, name: str) -> Any:
        # config.speech_translation reads that stage's options (only called when normal lookup fails).
        stages = self.__dict__.get("stages") or {}
        if name in stages:
            return stages[name]
        raise AttributeError(f"{type(self).__name__} has no section {name!r}")

    def stage_options(self, spec: StageSpec) -> Any:
        return self.stages[spec.name]

    def sections(self) -> dict[str, Any]:
        return {"runner": self.runner, **self.stages}

    def updated(self, changes: Changes) -> RunConfig:
        sections = _update(self.sections(), changes)
        runner = sections.pop("runner")
        return RunConfig(runner, sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(options) for name, options in self.sections().items()}


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a pipeline run is parameterized by: the run config plus the evaluation's options."""

    run: RunConfig = field(default_factory=RunConfig)
    evaluation: Any = field(default_factory=lambda: _evaluation_options()())

    def sections(self) -> dict[str, Any]:
        return self.run.sections() | {"evaluation": self.evaluation}

    def section(self, name: str) -> Any:
        return self.sections()[name]

    def updated(self, changes: Changes) -> PipelineConfig:
        sections = _update(self.sections(), changes)
        evaluation = sections.pop("evaluation")
        return PipelineConfig(RunConfig(sections.pop("runner"), sections), evaluation)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(options) for name, options in self.sections().items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        # pipeline.json also records the topology ("shards"), which is not an options section.
        return cls().updated({name: values for name, values in data.items() if name != "shards"})


def _evaluation_options() -> type:
    from clearml_pipeline.evaluation import EvaluationOptions  # the evaluation package imports this module

    return EvaluationOptions


def flag_prefix(section: str) -> str:
    """The command-line prefix of a section's flags: none for the runner, --st-, --mt-, --tts- for the stages."""
    if section == "runner":
        return ""
    if section == "evaluation":
        return "eval-"
    return next(spec.prefix for spec in STAGES if spec.name == section) + "-"


def add_config_flags(parser: argparse.ArgumentParser, evaluation: bool = False) -> None:
    config = PipelineConfig() if evaluation else RunConfig()
    for name, options in config.sections().items():
        add_flags(parser, options, flag_prefix(name), "run" if name == "runner" else name.replace("_", " "))


def config_from_flags(args: argparse.Namespace, evaluation: bool = False) -> Any:
    """The run's config: dataclass defaults, then the model set's defaults, then every flag given (which always
    wins, even when it equals a default: `--st-max-new-tokens 440` stays 440 with `--models fixtures`)."""
    from registry.model_sets import decode_caps

    base: RunConfig | PipelineConfig = PipelineConfig() if evaluation else RunConfig()
    given = {name: flags_given(args, options, flag_prefix(name)) for name, options in base.sections().items()}
    chosen = base.updated({"runner": given["runner"]})
    return chosen.updated(decode_caps(chosen.sections()["runner"].models, chosen.sections())).updated(given)
