"""The pipeline on a ClearML server: a PipelineController whose steps are step_task.py tasks on agent queues.

`python -m clearml_pipeline run --dataset ID` registers the pipeline (versioned by PIPELINE_VERSION) and enqueues
its controller on the services queue; the controller creates one task per step from the repository's
clearml_pipeline/step_task.py and enqueues it on the GPU or CPU queue. The parameters users change most are
pipeline parameters (the UI's "new run" dialog edits them); every other option is fixed per step from the command
line and can still be edited on the step task. With --run-steps-locally the controller runs here and each step
runs as a local process (ClearML's debugging mode), against the same server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clearml_pipeline.config import PipelineConfig
from clearml_pipeline.pipeline import (
    PIPELINE_NAME,
    PIPELINE_VERSION,
    PROJECT,
    STEP_SCRIPT,
    Node,
    parameters,
    parse_shards,
    pipeline_parameters,
    plan,
)
from steps.options import option

REPO_ROOT = Path(__file__).resolve().parents[1]

@dataclass(frozen=True)
class RemoteOptions:
    dataset: str = option("", "ClearML Dataset id (from `python -m data_prep ingest --clearml`)")
    project: str = option(PROJECT, "ClearML project of the pipeline and its step tasks")
    gpu_queue: str = option("gpu", "agent queue for the GPU steps (speech and machine translation, evaluation)")
    cpu_queue: str = option("cpu", "agent queue for the CPU steps (ingestion, speech synthesis)")
    services_queue: str = option("services", "where the controller itself runs (an agent in --services-mode)")
    step_retries: int = option(2, "a failed step is relaunched in place and resumes from its checkpoint")
    cache_steps: bool = option(True, "reuse a step's earlier task when its code and inputs are unchanged")
    run_steps_locally: bool = option(
        False, "controller here, steps as local processes (ClearML's debugging mode; still on the server)"
    )
    shards: str = option("1:1:1", "tasks per stage (st:mt:tts), each on its own agent; e.g. 1:1:4 for four TTS")
    poll_seconds: float = option(5.0, "how often the controller checks its steps")
    agent_check_seconds: float = option(
        60.0, "how often the controller checks that each running step's agent is still registered (a step whose "
        "agent is gone is failed, then relaunched by --step-retries)"
    )


def step_overrides(node: Node, config: PipelineConfig) -> dict[str, Any]:
    """The task's parameters: fixed values from `config`, pipeline-parameter refs where there is one, and its
    input: the task ids of the previous step (all its shards)."""
    overrides = parameters(node.step, config)
    overrides["step/name"] = node.step.name
    overrides["step/dataset"] = "${pipeline.dataset}"
    overrides["step/shard"] = node.shard_spec
    if node.parents:
        overrides["step/input"] = ",".join("${%s.id}" % parent for parent in node.parents)  # noqa: UP031
    for param, key in pipeline_parameters(config).items():
        if key in overrides:
            overrides[key] = "${pipeline.%s}" % param  # noqa: UP031
    return overrides


def pipeline_defaults(config: PipelineConfig, options: RemoteOptions) -> dict[str, Any]:
    defaults: dict[str, Any] = {"dataset": options.dataset}
    flat = {f"{s}/{k}": v for s, values in config.to_dict().items() for k, v in values.items()}
    defaults.update({param: flat[key] for param, key in pipeline_parameters(config).items()})
    defaults.update(gpu_queue=options.gpu_queue, cpu_queue=options.cpu_queue)
    return defaults


def task_factory(node: Node, project: str) -> Any:
    """Creates the task from the repository (commit, uncommitted diff, requirements.txt) when it launches."""

    def create(_: Any) -> Any:
        from clearml import Task

        return Task.create(
            project_name=project,
            task_name=node.name,
            task_type=node.step.task_type,
            script=str(REPO_ROOT / STEP_SCRIPT),
            working_directory=".",
            requirements_file=str(REPO_ROOT / "requirements.txt"),
            add_task_init_call=False,
        )

    return create


def build_pipeline(config: PipelineConfig, options: RemoteOptions) -> Any:
    from clearml import PipelineController, Task

    # The controller imports the package (torch included): its agent installs requirements.txt, not a guess.
    Task.force_requirements_env_freeze(force=False, requirements_file=str(REPO_ROOT / "requirements.txt"))
    pipe = PipelineController(
        name=PIPELINE_NAME,
        project=options.project,
        version=PIPELINE_VERSION,
        pool_frequency=options.poll_seconds / 60,  # minutes
        add_pipeline_tags=True,
        retry_on_failure=options.step_retries,
        # The controller's own code is this repository (`-m clearml_pipeline` from its root), not the file that
        # creates the task (clearml/automation, in site-packages): record this checkout's remote and commit, or
        # the services agent has nothing to clone.
        **({} if options.run_steps_locally else dict(zip(("repo", "repo_commit"), repository(), strict=True),
                                                     working_dir=".")),
    )
    for name, value in pipeline_defaults(config, options).items():
        pipe.add_parameter(name, "" if value is None else value)
    for node in plan(parse_shards(options.shards)):
        pipe.add_step(
            name=node.name,
            parents=list(node.parents),
            base_task_factory=task_factory(node, options.project),
            parameter_override=step_overrides(node, config),
            execution_queue="${pipeline.%s_queue}" % node.step.queue,  # noqa: UP031
            cache_executed_step=options.cache_steps,
        )
    return pipe


def repository() -> tuple[str, str]:
    """This checkout's origin URL and HEAD commit (what an agent clones and checks out)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    return git("remote", "get-url", "origin"), git("rev-parse", "HEAD")


def check_repository() -> None:
    """Agents run the steps from a clone of this repository: it needs a remote they can clone."""
    import subprocess

    proc = subprocess.run(["git", "remote", "get-url", "origin"], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ValueError(
            f"{REPO_ROOT} has no git remote 'origin': agents clone the repository to run the steps, so push it "
            f"somewhere they can reach (or use --run-steps-locally true to run the steps on this machine)"
        )


def check_queues(options: RemoteOptions) -> None:
    from resources.clearml_server import check_queues as check

    check({"the controller": options.services_queue, "the GPU steps": options.gpu_queue,
           "the CPU steps": options.cpu_queue}, "--services-queue/--gpu-queue/--cpu-queue",
          services_queue=options.services_queue)


def launch(config: PipelineConfig, options: RemoteOptions) -> str:
    """Start the pipeline (enqueued for agents, or here with local steps); returns the controller task id once it
    has finished (with local steps, or on the services agent)."""
    from resources.clearml_server import check_server

    if not options.dataset:
        raise ValueError(
            "--dataset is required for a ClearML run: a ClearML Dataset id from `python -m data_prep ingest "
            "--clearml` (or run with --local and --input DIR, which needs no server)"
        )
    check_server()
    if options.run_steps_locally:  # the steps load their models here: every one located before the first starts
        from clearml_pipeline.model_check import check_models

        check_models(config)
    else:  # agents find their models in their own caches (or download them); this machine's say nothing
        check_repository()
    from clearml import Task

    if not options.run_steps_locally and Task.running_locally():
        check_queues(options)
    pipe = build_pipeline(config, options)
    if options.run_steps_locally:
        pipe.start_locally(run_pipeline_steps_locally=True)
        return str(pipe.id)
    if Task.running_locally():
        # Here start() enqueues the controller and ends this process (the SDK's execute_remotely): say so first.
        # On the services agent the same call runs the pipeline and returns when it is done.
        print(f"pipeline {pipe.id} launched: its controller is queued on {options.services_queue!r} for a "
              f"services agent", flush=True)
        pipe.start(queue=options.services_queue)
        return str(pipe.id)
    from clearml_pipeline.agent_watch import watch_agents

    watch = watch_agents(str(pipe.id), options.agent_check_seconds)
    try:
        pipe.start(queue=options.services_queue)
    finally:
        watch.set()
    return str(pipe.id)
