"""The pipeline's steps, defined once: the serverless local runner and the ClearML controller both read this.

ingest -> speech_translation -> machine_translation -> speech_synthesis -> evaluation. Each step is one ClearML
task running `clearml_pipeline/step_task.py`; what differs between the two execution modes is only how a step
names its input: a folder written by the previous step (local, offline tasks) or the previous step's task id,
whose artifacts it downloads (ClearML). Step parameters live in sections named after the options dataclasses,
so the UI shows `speech_translation/model`, `machine_translation/num_beams`, ... and a user edits one field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from clearml_pipeline.config import PipelineConfig, flag_prefix
from steps.options import option, to_params
from steps.stages import STAGES, StageSpec

PROJECT = "s2st"
PIPELINE_NAME = "spanish-to-mandarin"
PIPELINE_VERSION = "1.0.0"  # bump when the steps or their contract change: ClearML versions the pipeline by it
STEP_SCRIPT = "clearml_pipeline/step_task.py"


@dataclass(frozen=True)
class StepIO:
    """The `step` parameter section: what a step reads and where it writes."""

    name: str = option("", "the pipeline step this task runs: ingest, a stage's name, or evaluation")
    dataset: str = option("", "a local dataset folder (or folder of audio), or a ClearML Dataset id")
    input: str = option("", "the previous step's output: a local folder or task id (comma-separated when sharded)")
    shard: str = option("", "k/N: this task processes the items whose index % N == k (a stage fanned out)")
    output: str = option("", "where this step writes; empty on an agent: a fresh temporary folder")
    audio_samples: int = option(8, "output clips reported as playable debug samples")
    checkpoint_every: int = option(4, "groups between checkpoints of partial results (a retried task resumes)")


@dataclass(frozen=True)
class PipelineStep:
    name: str
    task_type: str  # ClearML task type, shown and filtered on in the UI
    queue: str  # queue role: "gpu" or "cpu"; the queue names are pipeline parameters
    parents: tuple[str, ...]
    sections: tuple[str, ...]  # parameter sections the step connects, besides `step`
    stage: StageSpec | None = None


INGEST = PipelineStep("ingest", "data_processing", "cpu", (), ("runner",))
# Intelligibility re-transcribes the synthesized audio with Whisper: a GPU job.
EVALUATION = PipelineStep("evaluation", "qc", "gpu", (), ("runner", "evaluation"))


def pipeline() -> tuple[PipelineStep, ...]:
    """ingest -> every stage of steps.stages.STAGES in order -> evaluation, each step the parent of the next."""
    steps = [INGEST, *(PipelineStep(s.name, s.task_type, s.queue, (), ("runner", s.name), s) for s in STAGES)]
    steps.append(EVALUATION)
    return tuple(
        PipelineStep(step.name, step.task_type, step.queue, (steps[i - 1].name,) if i else (), step.sections,
                     step.stage)
        for i, step in enumerate(steps)
    )


def step(name: str) -> PipelineStep:
    for candidate in pipeline():
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def step_names() -> tuple[str, ...]:
    return tuple(candidate.name for candidate in pipeline())


def stage_steps() -> tuple[str, ...]:
    return tuple(spec.name for spec in STAGES)


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
    names = stage_steps()
    if len(counts) != len(names) or min(counts) < 1:
        example = ":".join(["1"] * (len(names) - 1) + ["2"])
        raise ValueError(
            f"--shards takes {len(names)} positive counts like {example} ({', '.join(names)}), got {text!r}"
        )
    return dict(zip(names, counts, strict=True))


def plan(shards: dict[str, int] | None = None) -> list[Node]:
    """The run's tasks in execution order; every shard of a step depends on every shard of the step before."""
    nodes: list[Node] = []
    previous: tuple[str, ...] = ()
    for each in pipeline():
        count = (shards or {}).get(each.name, 1)
        names = tuple(f"{each.name}_shard{k}" if count > 1 else each.name for k in range(count))
        nodes.extend(Node(name, each, k, count, previous) for k, name in enumerate(names))
        previous = names
    return nodes


def parameters(step: PipelineStep, config: PipelineConfig) -> dict[str, Any]:
    """The step's parameters as ClearML names them ("section/key"), with `config`'s values."""
    return {
        f"{section}/{key}": value
        for section in step.sections
        for key, value in to_params(config.section(section)).items()
    }


def pipeline_parameters(config: PipelineConfig) -> dict[str, str]:
    """Pipeline parameter -> the step parameter it sets ("section/field"): the fields marked `pipeline=True`,
    named like their flags (st_model, mt_num_beams, limit ...). These are what the web UI's "new run" dialog
    edits; every other option is fixed per step and can still be edited on the step task."""
    found = {}
    for section, options in config.sections().items():
        prefix = flag_prefix(section).replace("-", "_") if section in {s.name for s in STAGES} else ""
        for f in fields(options):
            if f.metadata.get("pipeline"):
                found[f"{prefix}{f.name}"] = f"{section}/{f.name}"
    return found
