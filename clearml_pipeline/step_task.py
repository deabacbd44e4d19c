"""One pipeline step as a ClearML task: Task.init -> connect the parameters -> (execute_remotely) -> work.

The controller creates one task per step from this script (its parameters set from the pipeline's), and a
ClearML agent, or a local process for `run --run-steps-locally`, runs it from the repository root. The
serverless local runner runs it with --offline. By hand, the step-script way:

    python clearml_pipeline/step_task.py --step speech_translation --dataset DATASET_ID --input INGEST_TASK_ID \\
        --queue gpu          # registers the task, then an agent on `gpu` runs it; clone and edit it in the UI

Inputs are references: a dataset (local folder or ClearML Dataset id) and the previous step's output (local
folder or task id, whose `results`, `run` and `audio` artifacts are downloaded).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (ClearML agents and local jobs do): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from typing import Any

EXIT_OK, EXIT_SETUP_FAILED = 0, 2
PARENT_ENV = "S2ST_PARENT_PID"  # set by the local runner: a step process dies with it (SIGTERM, handled)


def build_parser() -> argparse.ArgumentParser:
    from clearml_pipeline.pipeline import StepIO

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", default="", help="ingest, speech_translation, machine_translation, ...")
    parser.add_argument("--dataset", default="", help="local dataset folder or ClearML Dataset id")
    parser.add_argument("--input", default="", help="previous step's output folder or task id (comma-separated)")
    parser.add_argument("--shard", default="", help="k/N: process the items whose index %% N == k")
    parser.add_argument("--checkpoint-every", type=int, default=StepIO().checkpoint_every,
                        help="batches between checkpoints of partial results (a retried task resumes from them)")
    parser.add_argument("--output", default="", help="output folder (default: a temporary folder)")
    parser.add_argument("--config", type=Path, help="pipeline config JSON (PipelineConfig.to_dict) for defaults")
    parser.add_argument("--offline", action="store_true", help="record an offline ClearML session, no server")
    parser.add_argument("--sessions", type=Path, help="where offline session zips go (default OUTPUT/../../clearml)")
    parser.add_argument("--queue", help="enqueue this task on QUEUE for an agent instead of running it here")
    return parser


def connect_section(task: Any, options: Any, name: str) -> Any:
    """Show a dataclass in the UI as parameters `name/field`; returns it with the values set there (on an agent,
    the ones the pipeline or a user edited)."""
    from steps.options import to_params, with_values

    return with_values(options, task.connect(to_params(options), name=name))


@functools.cache
def dataset_folder(ref: str, offline: bool) -> Path:
    folder = Path(ref).expanduser()
    if folder.is_dir():  # absolute, links not resolved: rows' `source` paths are the user's own
        return folder.absolute()
    if not ref:
        raise ValueError("no dataset given (step/dataset): a local folder or a ClearML Dataset id")
    if offline:
        raise ValueError(
            f"dataset {ref!r} is not a local folder, and ClearML Dataset ids need a server (offline mode cannot "
            f"fetch datasets): pass the folder that `python -m data_prep ingest` wrote"
        )
    from clearml import Dataset

    return Path(Dataset.get(dataset_id=ref).get_local_copy())


def fetch_inputs(refs: str, dest: Path) -> Any:
    """The previous step's output; with several refs (its shards) merged into `dest`."""
    from clearml_pipeline.step_work import merge_inputs

    parts = [ref.strip() for ref in refs.split(",") if ref.strip()]
    if not parts:
        raise ValueError("no input given (step/input): the previous step's output folder or task id")
    return merge_inputs([fetch_input(ref) for ref in parts], dest)


def fetch_input(ref: str) -> Any:
    """One previous step's output: its folder, or its task's artifacts downloaded."""
    from clearml_pipeline.step_work import RESULTS, RUN, StepInput

    folder = Path(ref).expanduser()
    if folder.is_dir():
        audio = folder / "audio"
        return StepInput(folder / RESULTS, folder / RUN, audio if audio.is_dir() else None)
    from clearml import Task

    artifacts = Task.get_task(task_id=ref).artifacts
    missing = [name for name in ("results", "run") if name not in artifacts]
    if missing:
        raise ValueError(f"task {ref} has no {', '.join(missing)} artifact: is it a finished step of this pipeline?")
    audio = artifacts["audio"].get_local_copy() if "audio" in artifacts else None
    return StepInput(
        Path(artifacts["results"].get_local_copy()),
        Path(artifacts["run"].get_local_copy()),
        Path(audio) if audio else None,
    )


def upload_outputs(task: Any, out: Path) -> None:
    for name, filename in (("results", "results.jsonl"), ("run", "run.json"), ("summary", "summary.json"),
                           ("metrics", "metrics.json"), ("report", "report.md")):
        if (out / filename).is_file():
            task.upload_artifact(name, artifact_object=str(out / filename), wait_on_upload=True)
    if (out / "audio").is_dir() and any((out / "audio").iterdir()):
        task.upload_artifact("audio", artifact_object=str(out / "audio"), wait_on_upload=True)


def previous_attempt(task: Any) -> Path | None:
    """Partial results a failed attempt of this same task checkpointed (the pipeline retries a task in place)."""
    artifact = task.artifacts.get("partial")
    return Path(artifact.get_local_copy()) if artifact is not None else None


def main(argv: list[str] | None = None) -> int:
    """The step, with SIGTERM handled as Ctrl-C from the first line (an agent's abort, the local runner's
    forwarded signal, or its death): the step then writes every row it has and exits 128 + the signal."""
    from clearml_pipeline.interrupts import die_with_parent, handle_signals, interrupted_exit_code
    from clearml_pipeline.memory import retain_freed_memory

    handle_signals()
    if parent := os.environ.get(PARENT_ENV):
        die_with_parent(int(parent))
    retain_freed_memory()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return interrupted_exit_code()


def _main(argv: list[str] | None) -> int:
    from clearml_pipeline.config import PipelineConfig
    from clearml_pipeline.logs import quiet_libraries
    from clearml_pipeline.pipeline import PROJECT, StepIO, step_names
    from clearml_pipeline.pipeline import step as pipeline_step
    from clearml_pipeline.step_work import StepEnv
    from clearml_pipeline.tracking import offline_environment

    quiet_libraries()
    args = build_parser().parse_args(argv)
    if args.offline:
        sessions = args.sessions or (Path(args.output or ".").resolve().parent.parent / "clearml")
        os.environ.update(offline_environment(sessions))
        # A repository without a remote matters to agents, not to an offline session.
        logging.getLogger("clearml.Repository Detection").setLevel(logging.ERROR)
    from clearml import Task

    if args.offline:
        Task.set_offline(True)
    shard_suffix = f"_shard{args.shard.split('/')[0]}" if args.shard else ""
    task = Task.init(
        project_name=PROJECT,
        task_name=f"{args.step or 'step'}{shard_suffix}",
        task_type=pipeline_step(args.step).task_type if args.step in step_names() else "custom",
        reuse_last_task_id=False,
        auto_connect_frameworks=False,
        auto_connect_arg_parser=False,
        auto_resource_monitoring=False,
    )
    io = StepIO(
        name=args.step,
        dataset=args.dataset,
        input=args.input,
        output=args.output,
        shard=args.shard,
        checkpoint_every=args.checkpoint_every,
    )
    io = connect_section(task, io, "step")
    if io.name not in step_names():
        print(f"error: unknown step {io.name!r}; choose from {', '.join(step_names())}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    step = pipeline_step(io.name)
    try:  # a value its field does not take (steps.options checks), as edited in the web UI: one line, exit 2
        config = PipelineConfig.from_dict(json.loads(args.config.read_text())) if args.config else PipelineConfig()
        config = config.updated(
            {section: asdict(connect_section(task, config.section(section), section)) for section in step.sections}
        )
    except ValueError as exc:
        print(f"error: {io.name}: {exc}", file=sys.stderr)
        if not (args.offline or Task.is_offline()):  # the controller sees the failure by the task's status
            task.mark_failed(status_reason=str(exc)[:250], force=True)
        return EXIT_SETUP_FAILED
    if args.queue and task.running_locally():
        task.execute_remotely(queue_name=args.queue, exit_process=True)
    offline = args.offline or Task.is_offline()
    out = Path(io.output).expanduser() if io.output else Path(tempfile.mkdtemp(prefix=f"s2st-{io.name}-"))
    env = StepEnv(
        step,
        io,
        config,
        out,
        task.get_logger(),
        dataset_root=lambda: dataset_folder(io.dataset, offline),
        checkpoint=(lambda path: None)
        if offline
        else (lambda path: task.upload_artifact("partial", artifact_object=str(path), wait_on_upload=True)),
        resume_from=None if offline else previous_attempt(task),
    )
    return run_step(task, env, offline, args.sessions)


def run_step(task: Any, env: Any, offline: bool, sessions: Path | None) -> int:
    from clearml_pipeline.step_work import execute
    from registry.model_sets import model_caches
    from resources.clearml_server import ServerUnavailableError
    from resources.weights import ModelUnavailableError

    (env.out / "error.txt").unlink(missing_ok=True)  # a failed earlier attempt's message is not this one's
    try:
        # A fixture model set's caches are this machine's, wherever the config was made.
        env.config = env.config.updated(model_caches(env.config.run.runner.models, env.config.sections()))
        given = fetch_inputs(env.io.input, env.out / "input") if env.step.parents else None
        execute(env, given)
        upload_outputs(task, env.out)
    except KeyboardInterrupt:
        from clearml_pipeline.interrupts import interrupted_exit_code

        print(f"{env.step.name}: interrupted", file=sys.stderr)
        with contextlib.suppress(Exception):  # the task's status is a courtesy; the exit status is the answer
            task.mark_stopped(force=True, status_message="interrupted")
        return interrupted_exit_code()
    except (ModelUnavailableError, ServerUnavailableError, FileNotFoundError, ValueError, LookupError) as exc:
        print(f"error: {env.step.name}: {exc}", file=sys.stderr)
        env.out.mkdir(parents=True, exist_ok=True)
        # for the local runner's message; a file name that is not UTF-8 keeps its escapes
        (env.out / "error.txt").write_text(f"{exc}\n", encoding="utf-8", errors="backslashreplace")
        task.get_logger().report_text(f"error: {exc}")
        if not offline:  # the controller sees the failure (and may retry) by the task's status
            task.mark_failed(status_reason=str(exc)[:250], force=True)
        close(task, offline, sessions, env)
        return EXIT_SETUP_FAILED
    close(task, offline, sessions, env)
    return EXIT_OK


def close(task: Any, offline: bool, sessions: Path | None, env: Any) -> None:
    """Close the task; offline, copy its session zip to OUT/clearml/<step>.<task id>.zip for a later import."""
    folder = task.get_offline_mode_folder() if offline else None
    task.close()
    if folder is not None:
        target_dir = sessions or env.out.resolve().parent.parent / "clearml"
        target_dir.mkdir(parents=True, exist_ok=True)
        shard = f"_shard{env.io.shard.split('/')[0]}" if env.io.shard else ""
        shutil.copy2(f"{folder}.zip", target_dir / f"{env.step.name}{shard}.{Path(folder).name}.zip")


if __name__ == "__main__":
    sys.exit(main())
