"""The pipeline's steps, defined once: the serverless local runner and the ClearML controller both read this.

ingest -> speech_translation -> machine_translation -> speech_synthesis -> evaluation. Each step is one ClearML
task running `clearml_pipeline/step_task.py`; what differs between the two execution modes is only how a step
names its input: a folder written by the previous step (local, offline tasks) or the previous step's task id,
whose artifacts it downloads (ClearML). Step parameters live in sections named after the options dataclasses,
so the UI shows `speech_translation/model`, `machine_translation/num_beams`, ... and a user edits one field.
"""

from __future__ import annotations

import types
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from clearml_pipeline.config import RunConfig
from clearml_pipeline.evaluation import EvaluationOptions
from clearml_pipeline.stages import MACHINE_TRANSLATION, SPEECH_SYNTHESIS, SPEECH_TRANSLATION, StageSpec

PROJECT = "s2st"
PIPELINE_NAME = "spanish-to-mandarin"
PIPELINE_VERSION = "1.0.0"  # bump when the steps or their contract change: ClearML versions the pipeline by it
STEP_SCRIPT = "clearml_pipeline/step_task.py"


@dataclass
class StepIO:
    """The `step` parameter section: what a step reads and where it writes."""

    name: str = ""
    dataset: str = ""  # a local dataset folder (or folder of audio), or a ClearML Dataset id
    input: str = ""  # the previous step's output: a local folder or ClearML task id (comma-separated when sharded)
    shard: str = ""  # "k/N": this task processes the items whose index % N == k (a stage fanned out to N tasks)
    output: str = ""  # where this step writes; "" on an agent: a fresh temporary folder
    audio_samples: int = 8  # output clips reported as playable debug samples
    checkpoint_every: int = 4  # batches between checkpoints of partial results (a retried task resumes from them)


@dataclass(frozen=True)
class PipelineStep:
    name: str
    task_type: str  # ClearML task type, shown and filtered on in the UI
    queue: str  # queue role: "gpu" or "cpu"; the queue names are pipeline parameters
    parents: tuple[str, ...]
    sections: tuple[str, ...]  # parameter sections the step connects, besides `step`
    stage: StageSpec | None = None


PIPELINE: tuple[PipelineStep, ...] = (
    PipelineStep("ingest", "data_processing", "cpu", (), ("runner",)),
    PipelineStep(
        "speech_translation", "inference", SPEECH_TRANSLATION.queue, ("ingest",), ("runner", "speech_translation"),
        SPEECH_TRANSLATION,
    ),
    PipelineStep(
        "machine_translation", "inference", MACHINE_TRANSLATION.queue, ("speech_translation",),
        ("runner", "machine_translation"), MACHINE_TRANSLATION,
    ),
    PipelineStep(
        "speech_synthesis", "inference", SPEECH_SYNTHESIS.queue, ("machine_translation",),
        ("runner", "speech_synthesis"), SPEECH_SYNTHESIS,
    ),
    # Intelligibility re-transcribes the synthesized audio with Whisper: a GPU job.
    PipelineStep("evaluation", "qc", "gpu", ("speech_synthesis",), ("runner", "evaluation")),
)
STEPS = {step.name: step for step in PIPELINE}
STAGE_STEPS = tuple(step.name for step in PIPELINE if step.stage is not None)


@dataclass(frozen=True)
class Node:
    """One task of a run: a step, or one shard of a stage fanned out over several machines."""

    name: str
    step: PipelineStep
    shard: int = 0
    shards: int = 1
    parents: tuple[str, ...] = ()

    @property
    def shard_spec(self) -> str:
        return f"{self.shard}/{self.shards}" if self.shards > 1 else ""


def parse_shards(text: str) -> dict[str, int]:
    """"1:1:2" -> tasks per stage (speech translation : machine translation : speech synthesis)."""
    try:
        counts = [int(part) for part in text.split(":")]
    except ValueError:
        counts = []
    if len(counts) != len(STAGE_STEPS) or min(counts) < 1:
        raise ValueError(f"--shards takes {len(STAGE_STEPS)} positive counts like 1:1:2, got {text!r}")
    return dict(zip(STAGE_STEPS, counts, strict=True))


def plan(shards: dict[str, int] | None = None) -> list[Node]:
    """The run's tasks in execution order; every shard of a step depends on every shard of the step before."""
    nodes: list[Node] = []
    previous: tuple[str, ...] = ()
    for step in PIPELINE:
        count = (shards or {}).get(step.name, 1)
        names = tuple(f"{step.name}_shard{k}" if count > 1 else step.name for k in range(count))
        nodes.extend(Node(name, step, k, count, previous) for k, name in enumerate(names))
        previous = names
    return nodes


@dataclass
class PipelineConfig:
    """Everything a pipeline run is parameterized by: the run config plus evaluation options."""

    run: RunConfig = field(default_factory=RunConfig)
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)

    def section(self, name: str) -> Any:
        return self.evaluation if name == "evaluation" else getattr(self.run, name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return self.run.to_dict() | {"evaluation": asdict(self.evaluation)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        config = cls()
        for name, values in data.items():
            if name != "shards":  # pipeline.json also records the topology, which is not a step section
                fill(config.section(name), values)
        return config


def fill(options: Any, values: dict[str, Any]) -> Any:
    """Set dataclass fields from a dict whose values may be strings (as ClearML returns parameters)."""
    hints = get_type_hints(type(options))
    for f in fields(options):
        if f.name in values:
            setattr(options, f.name, coerce(values[f.name], hints[f.name]))
    return options


def coerce(value: Any, hint: Any) -> Any:
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        optional = type(None) in get_args(hint)
        hint = next(a for a in get_args(hint) if a is not type(None))
    if isinstance(value, str):
        if optional and value.strip() in ("", "None"):
            return None
        if hint is bool:
            return value.strip().lower() in ("1", "true", "yes", "on")
        if hint in (int, float):
            return hint(value)
    if value is None and not optional:
        raise ValueError(f"a value of type {hint.__name__} is required, got None")
    return hint(value) if hint in (int, float, str) and value is not None else value


def parameters(step: PipelineStep, config: PipelineConfig) -> dict[str, Any]:
    """The step's parameters as ClearML names them ("section/key"), with `config`'s values."""
    params: dict[str, Any] = {}
    for section in step.sections:
        for key, value in asdict(config.section(section)).items():
            params[f"{section}/{key}"] = "" if value is None else value
    return params
