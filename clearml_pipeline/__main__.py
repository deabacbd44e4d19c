"""Spanish speech -> Mandarin speech.

python -m clearml_pipeline run --dataset DATASET_ID                  # on a ClearML server, steps on agent queues
python -m clearml_pipeline run --local --input DIR --output OUT      # no server: each step an offline task
python -m clearml_pipeline run --local --runtime streaming ...       # no server: all stages in worker processes
python -m clearml_pipeline evaluate --run OUT [--manifest M]         # score a finished run
python -m clearml_pipeline reproduce OUT_OR_TASK_ID --output NEW     # rerun it with the same data and models
python -m clearml_pipeline bench --input DIR --output OUT [--requests N] [--rate R] [--replicas 1:1:2|auto]
python -m clearml_pipeline bench-tts --models fixtures-full --batch-sizes 1,8 --requests 16 --output OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (a ClearML agent running the controller does): repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import time
from typing import Any

# Light imports only up here: SIGTERM must be handled (main) before the seconds torch takes to import.
from clearml_pipeline.interrupts import handle_signals, hold_signals, interrupted_exit_code, received, release_signals
from resources.json_text import dumps

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_SETUP_FAILED = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    from clearml_pipeline.bench import BenchOptions
    from clearml_pipeline.config import add_config_flags
    from clearml_pipeline.controller import RemoteOptions
    from clearml_pipeline.evaluation import add_evaluate_arguments
    from clearml_pipeline.replicas import StreamingOptions
    from steps.options import add_flags

    parser = argparse.ArgumentParser(
        prog="python -m clearml_pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="translate Spanish speech to Mandarin speech")
    run.add_argument("--local", action="store_true", help="run on this machine, no ClearML server")
    run.add_argument(
        "--runtime",
        choices=("steps", "inprocess", "streaming"),
        default="steps",
        help="with --local. steps: each pipeline step an offline ClearML task in its own process, as on agents; "
        "inprocess: one process, items in groups; streaming: worker processes per stage (see --replicas)",
    )
    add_flags(run, RemoteOptions(), "", "ClearML server (without --local)")
    bench = commands.add_parser("bench", help="throughput experiment: streaming runtime vs sequential baseline")
    add_flags(bench, BenchOptions(), "", "benchmark")
    from clearml_pipeline.bench_tts import add_arguments as add_bench_tts_arguments

    add_bench_tts_arguments(commands.add_parser("bench-tts", help="speech synthesis alone at each TTS batch size"))
    for command in (run, bench):
        command.add_argument("--input", type=Path, required=command is bench, help="an audio file or a folder of them")
        command.add_argument("--output", type=Path, required=command is bench, help="folder for the results")
        add_flags(command, StreamingOptions(), "", "streaming runtime")
        add_config_flags(command, evaluation=command is run)
    add_evaluate_arguments(commands.add_parser("evaluate", help="score a finished run: quality, speed, report"))
    reproduce = commands.add_parser("reproduce", help="rerun a finished run with its data, models and parameters")
    reproduce.add_argument("run", help="the earlier run: a local OUT folder, or a ClearML pipeline task id")
    reproduce.add_argument("--output", type=Path, required=True, help="folder for the new run")
    return parser


def print_summary(summary: dict[str, Any], out: Path) -> None:
    counts, e2e = summary["counts"], summary["end_to_end"]
    print(
        f"\n{counts['ok']}/{counts['items']} ok, {counts['error']} error, {counts['no_speech']} no speech "
        f"in {summary['wall_s']:.1f} s on {summary['device']}"
    )
    for name, stage in summary["stages"].items():
        rate = f"{stage['items_per_s']:.2f} items/s" if stage["items_per_s"] else "-"
        p50 = stage["latency_s"]["p50"]
        print(f"  {name:<20} {stage['items']:>4} items  {rate:>14}  p50 {p50 if p50 is None else round(p50, 3)} s")
    if e2e["real_time_factor"]:
        print(f"  real-time factor {e2e['real_time_factor']:.2f} over {e2e['audio_seconds']:.1f} s of input audio")
    if streaming := summary.get("streaming"):
        replicas = ":".join(str(n) for n in streaming["replicas"].values())
        print(f"  replicas {replicas} ({streaming['replicas_chosen_by']})")
    print(f"results: {out / 'results.jsonl'}\nsummary: {out / 'summary.json'}")
    clips = sorted((out / "audio").glob("*.wav"))
    if clips:
        print(f"audio:   {len(clips)} clip(s) in {out / 'audio'}, e.g. {clips[0]}")


def check_output(out: Path) -> None:
    """OUT must be a folder this process can write; otherwise the run stops now, in one sentence (exit 2)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file, not a folder: give a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".s2st-write-check"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise ValueError(
            f"--output {out} cannot be written ({exc.strerror or exc}): give a folder you can write"
        ) from None


def list_inputs(args: argparse.Namespace, limit: int) -> list[Any]:
    """The inputs under --input, this run's OUT left out (said so when it is inside the input folder)."""
    from clearml_pipeline.inputs import discover_inputs

    source, out = args.input.absolute(), args.output.absolute()
    if source.is_dir() and out.is_relative_to(source):
        print(f"note: the output folder {args.output} is inside the input folder; it is not read as input")
    items = discover_inputs(args.input, exclude=[args.output])
    return items[:limit] if limit else items


def prepare(args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[Any]]:
    """Config (models resolved) and inputs; raises the user-facing errors that end a run before it starts."""
    from clearml_pipeline.config import config_from_flags
    from clearml_pipeline.model_check import ready_config

    config = config_from_flags(args)
    items = list_inputs(args, config.runner.limit)
    if not items:
        raise ValueError(no_inputs(args))
    config, resolved = ready_config(config)
    return config, resolved, items


def no_inputs(args: argparse.Namespace) -> str:
    return f"no audio files ({audio_suffixes()}) under {args.input}"


def audio_suffixes() -> str:
    from resources.audio import AUDIO_EXTENSIONS

    return ", ".join(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)


def check_dataset(args: argparse.Namespace) -> None:
    """The steps runtime's input holds at least one item, as its ingest step lists them (a folder's manifest.jsonl
    when it has one), found before OUT is emptied: an empty folder must not cost an earlier run's output. One file
    is one item when the ingest step will list it: an audio suffix, a regular file (a FIFO would block the read)."""
    from clearml_pipeline.step_work import dataset_rows
    from resources.audio import AUDIO_EXTENSIONS, check_file

    if args.input.is_dir():
        if not dataset_rows(args.input.absolute(), 1):
            raise ValueError(f"{no_inputs(args)}, and no items in a manifest.jsonl there")
        return
    if not args.input.is_file():
        check_file(args.input)  # raises what it is: a FIFO, a device, a socket
    if args.input.suffix.lower() not in AUDIO_EXTENSIONS:  # the ingest step lists a dataset's clips by suffix
        raise ValueError(f"input {args.input} is not an audio file ({audio_suffixes()}): the steps runtime reads "
                         f"audio files by their suffix (--runtime inprocess tries to decode any one file)")


def run_steps(args: argparse.Namespace, started: float) -> int:
    """The pipeline with no server: every step an offline ClearML task (clearml_pipeline.local_pipeline)."""
    from clearml_pipeline.config import config_from_flags
    from clearml_pipeline.controller import RemoteOptions
    from clearml_pipeline.local_pipeline import run_locally, sessions
    from clearml_pipeline.pipeline import parse_shards
    from steps.options import from_flags

    config = config_from_flags(args, evaluation=True)
    dataset = steps_dataset(args)
    if dataset.is_dir() and args.output.absolute().is_relative_to(dataset):
        print(f"note: the output folder {args.output} is inside the input folder; it is not read as input")
    summary = run_locally(config, dataset, args.output, parse_shards(from_flags(args, RemoteOptions(), "").shards))
    print_summary(summary, args.output)
    zips = sessions(args.output, since=started)
    print(f"ClearML offline sessions: {len(zips)} under {args.output / 'clearml'} "
          f"(upload: clearml-task --import-offline-session ZIP)")
    if summary.get("interrupted"):
        return exit_interrupted(summary)
    if summary.get("failed_step"):  # every row may be fine, and still the run did not finish (the evaluation)
        return EXIT_ITEMS_FAILED
    return EXIT_OK if summary["counts"]["error"] == 0 else EXIT_ITEMS_FAILED


def steps_dataset(args: argparse.Namespace) -> Path:
    """The steps runtime's dataset folder: --input as given (absolute, links kept), or for one clip a one-item
    folder OUT/input that links to it."""
    dataset = args.input.absolute()
    if dataset.is_file():
        single = args.output.absolute() / "input"
        single.mkdir(parents=True, exist_ok=True)
        (single / dataset.name).unlink(missing_ok=True)
        (single / dataset.name).symlink_to(dataset)
        return single
    if not dataset.is_dir():
        raise FileNotFoundError(f"input {args.input} does not exist")
    return dataset


def exit_interrupted(summary: dict[str, Any]) -> int:
    """128 + the signal: ours, or the one a step process alone was stopped with."""
    if received() is None and summary.get("interrupted_by"):
        return 128 + int(summary["interrupted_by"])
    return interrupted_exit_code()


def run_remote(args: argparse.Namespace) -> int:
    from clearml_pipeline.config import config_from_flags
    from clearml_pipeline.controller import RemoteOptions, launch
    from steps.options import from_flags

    options = from_flags(args, RemoteOptions(), "")
    pipeline_id = launch(config_from_flags(args, evaluation=True), options)
    print(f"pipeline {pipeline_id} finished")  # launching on an agent ends this process earlier (see launch)
    return EXIT_OK


def run_local(args: argparse.Namespace) -> int:
    """`run --local`: what stops a run at once (a missing input or model) is found before OUT is emptied of an
    earlier run's files; interrupted anywhere (even while the models are located), every input still gets a row in
    OUT/results.jsonl."""
    from clearml_pipeline.config import config_from_flags
    from clearml_pipeline.execution import start_outputs
    from clearml_pipeline.model_check import check_models, locate_models
    from clearml_pipeline.tracking import check_offline_folder

    started = time.time()
    if not args.input.exists():
        raise FileNotFoundError(f"input {args.input} does not exist")
    check_output(args.output)
    if args.runtime == "steps":  # each step an offline ClearML task, its session under OUT/clearml
        check_offline_folder(args.output / "clearml")
    emptied = False
    try:
        release_signals()  # one held back while the command started lands here, where it is handled
        # Inputs listed and every model located (none loaded) before OUT is emptied. The steps runtime checks its
        # models again as it starts, from the caches this filled; it alone evaluates.
        if args.runtime == "steps":
            check_dataset(args)
            check_models(config_from_flags(args, evaluation=True))
        else:
            prepared = prepare(args)
            locate_models(prepared[0])
        start_outputs(args.output)
        emptied = True
        if args.runtime == "steps":
            return run_steps(args, started)
        return run_in_this_process(args, *prepared)
    except KeyboardInterrupt:
        if not emptied:
            start_outputs(args.output)
        write_interrupted(args)
        return interrupted_exit_code()


def run_in_this_process(args: argparse.Namespace, config: Any, resolved: dict[str, Any], items: list[Any]) -> int:
    """The in-process or streaming runtime on what `prepare` gave: the ready config, its registry record, the inputs."""
    from clearml_pipeline.replicas import StreamingOptions
    from clearml_pipeline.runner import InProcessRuntime, StreamingRuntime
    from steps.options import from_flags

    runtime = (
        StreamingRuntime(config, from_flags(args, StreamingOptions(), ""))
        if args.runtime == "streaming"
        else InProcessRuntime(config)
    )
    summary = runtime.run(items, args.output)
    summary["registry"] = resolved
    (args.output / "summary.json").write_text(dumps(summary, indent=2), encoding="utf-8")
    print_summary(summary, args.output)
    if summary.get("interrupted"):
        return exit_interrupted(summary)
    return EXIT_OK if summary["counts"]["error"] == 0 else EXIT_ITEMS_FAILED


def write_interrupted(args: argparse.Namespace, rows: list[Any] | None = None) -> None:
    """The last resort after an interrupt outside a runtime's own handling: every input's row in
    OUT/results.jsonl, kept where it is already there, `interrupted` where not."""
    from clearml_pipeline.config import config_from_flags
    from clearml_pipeline.execution import RESULTS, complete_results
    from steps.results import ItemResult

    if rows is None:
        limit = config_from_flags(args).runner.limit
        if args.runtime == "steps" and args.command == "run":
            from clearml_pipeline.step_work import dataset_rows

            rows = dataset_rows(steps_dataset(args), limit, absolute=True)
        else:
            rows = [ItemResult(item.id, str(item.path)) for item in list_inputs(args, limit)]
    rows = complete_results(args.output / RESULTS, rows, "run interrupted before this item finished")
    if not (args.output / "summary.json").is_file():
        from clearml_pipeline.results import configured_models, run_device, summarize

        config = config_from_flags(args)  # no model was loaded yet: the ones the config names
        summary = summarize(rows, configured_models(config), {}, 0.0, config.to_dict(), run_device(config))
        summary["interrupted"] = True
        (args.output / "summary.json").write_text(dumps(summary, indent=2), encoding="utf-8")
    print(f"interrupted: {sum(r.ok for r in rows)} of {len(rows)} item(s) done; every row in "
          f"{args.output / RESULTS}", file=sys.stderr)


def bench(args: argparse.Namespace) -> int:
    from clearml_pipeline.bench import BenchOptions, enqueue, expand, format_table, run_bench, track
    from clearml_pipeline.execution import start_outputs
    from clearml_pipeline.model_check import locate_models
    from clearml_pipeline.replicas import StreamingOptions
    from clearml_pipeline.tracking import check_offline_folder
    from steps.options import from_flags

    options = from_flags(args, BenchOptions(), "")
    tracker = enqueue(options, args.output) if options.queue else None  # here, ends the process once enqueued
    check_output(args.output)
    if options.tracking == "offline":
        check_offline_folder(args.output / "clearml")
    config, _, items = prepare(args)  # inputs listed and every model located before OUT is emptied
    locate_models(config)
    start_outputs(args.output)
    (args.output / "bench.json").unlink(missing_ok=True)  # an earlier bench's figures are not this one's
    try:
        release_signals()
        report = run_bench(config, from_flags(args, StreamingOptions(), ""), options, items, args.output)
    except KeyboardInterrupt:  # no figures from a measurement cut short; every request still has its row
        write_interrupted(args, expand(items, options.requests))
        return interrupted_exit_code()
    bench_json = args.output / "bench.json"
    bench_json.write_text(dumps(report, indent=2), encoding="utf-8")
    report["clearml_session"] = track(report, args.output, options.tracking, tracker)
    bench_json.write_text(dumps(report, indent=2), encoding="utf-8")
    print(format_table(report))
    print(f"bench: {bench_json}")
    if report["clearml_session"]:
        print(f"ClearML offline session: {report['clearml_session']} (upload: clearml-task --import-offline-session)")
    return EXIT_OK if report["errors"] == 0 else EXIT_ITEMS_FAILED


def main(argv: list[str] | None = None) -> int:
    from clearml_pipeline.logs import quiet_libraries
    from clearml_pipeline.memory import retain_freed_memory
    from resources.weights import ModelUnavailableError

    retain_freed_memory()  # before any model: the sequential runtime and the bench's baseline run in this process
    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        if not (args.command == "bench" or (args.command == "run" and args.local)):
            release_signals()  # `run --local` and `bench` release them once they can write every row
        if args.command == "bench-tts":
            from clearml_pipeline.bench_tts import main as bench_tts

            return bench_tts(args)
        if args.command == "bench":
            return bench(args)
        if args.command == "evaluate":
            from clearml_pipeline.evaluation import evaluate_command

            return evaluate_command(args)
        if args.command == "reproduce":
            from clearml_pipeline.reproduce import reproduce

            return reproduce(args.run, args.output)
        if not args.local:
            return run_remote(args)
        if args.input is None or args.output is None:
            raise ValueError("run --local needs --input (an audio file or folder) and --output")
        return run_local(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return interrupted_exit_code()
    except (ModelUnavailableError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED


def program() -> int:
    """The command: SIGTERM handled as Ctrl-C (clearml_pipeline.interrupts) before anything heavy is imported."""
    handle_signals()
    hold_signals()
    try:
        return main()
    except KeyboardInterrupt:  # one that landed outside main's own handling (while importing)
        print("interrupted", file=sys.stderr)
        return interrupted_exit_code()


if __name__ == "__main__":
    sys.exit(program())
