"""Run configuration: every stage's options plus the runner's own, with a command line made from the dataclasses.

The command line is generated from the options dataclasses (--st-model, --mt-num-beams, --tts-vocoder ...)
so that a new option is one dataclass field, and the same dict later becomes the ClearML task parameters.
"""

from __future__ import annotations

import argparse
import types
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from clearml_pipeline.stages import STAGES, StageSpec
from steps.machine_translation import MachineTranslationOptions
from steps.speech_synthesis import SpeechSynthesisOptions
from steps.speech_translation import SpeechTranslationOptions

T = TypeVar("T")


@dataclass
class RunnerOptions:
    batch_size: int = 8  # items that travel the three stages together
    max_audio_seconds: float = 1200.0  # longer inputs are error rows, not silently cut
    limit: int = 0  # 0: every input
    models: str = "hub"  # model set: hub (real ids) or fixtures (tiny random models)
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default


@dataclass
class RunConfig:
    runner: RunnerOptions = field(default_factory=RunnerOptions)
    speech_translation: SpeechTranslationOptions = field(default_factory=SpeechTranslationOptions)
    machine_translation: MachineTranslationOptions = field(default_factory=MachineTranslationOptions)
    speech_synthesis: SpeechSynthesisOptions = field(default_factory=SpeechSynthesisOptions)

    def stage_options(self, spec: StageSpec) -> Any:
        return getattr(self, spec.name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {section.name: asdict(getattr(self, section.name)) for section in fields(self)}


def _arg_type(hint: Any) -> Any:
    """The argparse type for a field: Optional[X] -> X; bool parsed from words."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is bool:
        return lambda text: text.lower() in ("1", "true", "yes", "on")
    return hint


def add_section(parser: argparse.ArgumentParser, options: Any, prefix: str, title: str) -> None:
    group = parser.add_argument_group(title)
    hints = get_type_hints(type(options))
    for f in fields(options):
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        group.add_argument(
            flag,
            dest=f"{prefix.replace('-', '_')}{f.name}",
            type=_arg_type(hints[f.name]),
            default=getattr(options, f.name),
            help=f"(default: {getattr(options, f.name)!r})",
        )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    config = RunConfig()
    add_section(parser, config.runner, "", "run")
    for spec in STAGES:
        add_section(parser, config.stage_options(spec), f"{spec.prefix}-", spec.name.replace("_", " "))


def section_from_args(args: argparse.Namespace, options: T, prefix: str) -> T:
    """Fill `options` from the arguments `add_section` made for it."""
    for f in fields(options):  # type: ignore[arg-type]
        setattr(options, f.name, getattr(args, f"{prefix.replace('-', '_')}{f.name}"))
    return options


def config_from_args(args: argparse.Namespace) -> RunConfig:
    config = RunConfig()
    section_from_args(args, config.runner, "")
    for spec in STAGES:
        section_from_args(args, config.stage_options(spec), f"{spec.prefix}-")
    return config
