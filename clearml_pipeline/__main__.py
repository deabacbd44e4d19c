"""Spanish speech -> Mandarin speech.

python -m clearml_pipeline run --dataset DATASET_ID                  # on a ClearML server, steps on agent queues
python -m clearml_pipeline run --local --input DIR --output OUT      # no server: each step an offline task
python -m clearml_pipeline run --local --runtime streaming ...       # no server: all stages in worker processes
python -m clearml_pipeline evaluate --run OUT [--manifest M]         # score a finished run
python -m clearml_pipeline reproduce OUT_OR_TASK_ID --output NEW     # rerun it with the same data and models
python -m clearml_pipeline bench --input DIR --output OUT [--requests N] [--rate R] [--replicas 1:1:2|auto]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file (a ClearML agent running the controller does): repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
from typing import Any

from clearml_pipeline.config import (
    add_config_arguments,
    add_section,
    config_from_args,
    section_from_args,
)
from clearml_pipeline.logs import quiet_libraries

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_SETUP_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    from clearml_pipeline.bench import BenchOptions
    from clearml_pipeline.controller import RemoteOptions
    from clearml_pipeline.evaluation import EvaluationOptions, add_evaluate_arguments
    from clearml_pipeline.streaming import StreamingOptions

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
    add_section(run, RemoteOptions(), "", "ClearML server (without --local)")
    add_section(run, EvaluationOptions(), "eval-", "evaluation")
    bench = commands.add_parser("bench", help="throughput experiment: streaming runtime vs sequential baseline")
    add_section(bench, BenchOptions(), "", "benchmark")
    for command in (run, bench):
        command.add_argument("--input", type=Path, required=command is bench, help="an audio file or a folder of them")
        command.add_argument("--output", type=Path, required=command is bench, help="folder for the results")
        add_section(command, StreamingOptions(), "", "streaming runtime")
        add_config_arguments(command)
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
    print(f"results: {out / 'results.jsonl'}\nsummary: {out / 'summary.json'}")


def prepare(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """Config, model set and inputs; raises the user-facing errors that end a run before it starts."""
    from clearml_pipeline.runner import discover_inputs
    from registry.model_sets import apply_model_set

    config = config_from_args(args)
    items = discover_inputs(args.input)
    if config.runner.limit:
        items = items[: config.runner.limit]
    if not items:
        raise ValueError(f"no audio files ({', '.join(('wav', 'flac', 'mp3', 'ogg'))}) under {args.input}")
    apply_model_set(config)
    return config, items


def pipeline_config(args: argparse.Namespace) -> Any:
    from clearml_pipeline.evaluation import EvaluationOptions
    from clearml_pipeline.pipeline import PipelineConfig

    return PipelineConfig(config_from_args(args), section_from_args(args, EvaluationOptions(), "eval-"))


def run_steps(args: argparse.Namespace) -> int:
    """The pipeline with no server: every step an offline ClearML task (clearml_pipeline.local_pipeline)."""
    from clearml_pipeline.local_pipeline import run_locally, sessions
    from registry.model_sets import apply_model_set

    config = pipeline_config(args)
    apply_model_set(config.run, config.evaluation)
    dataset = args.input.resolve()
    if dataset.is_file():  # one clip: a one-item dataset folder that links to it
        single = args.output.resolve() / "input"
        single.mkdir(parents=True, exist_ok=True)
        (single / dataset.name).unlink(missing_ok=True)
        (single / dataset.name).symlink_to(dataset)
        dataset = single
    elif not dataset.is_dir():
        raise FileNotFoundError(f"input {args.input} does not exist")
    from clearml_pipeline.pipeline import parse_shards

    summary = run_locally(config, dataset, args.output, parse_shards(args.shards))
    print_summary(summary, args.output)
    zips = sessions(args.output)
    print(f"ClearML offline sessions: {len(zips)} under {args.output / 'clearml'} "
          f"(upload: clearml-task --import-offline-session ZIP)")
    return EXIT_OK if summary["counts"]["error"] == 0 else EXIT_ITEMS_FAILED


def run_remote(args: argparse.Namespace) -> int:
    from clearml_pipeline.controller import RemoteOptions, launch
    from registry.model_sets import apply_model_set

    config = pipeline_config(args)
    apply_model_set(config.run, config.evaluation)
    options = section_from_args(args, RemoteOptions(), "")
    pipeline_id = launch(config, options)
    print(f"pipeline {pipeline_id} finished" if options.run_steps_locally else f"pipeline {pipeline_id} launched")
    return EXIT_OK


def run_local(args: argparse.Namespace) -> int:
    from clearml_pipeline.runner import LocalRunner
    from clearml_pipeline.streaming import StreamingOptions

    if args.runtime == "steps":
        return run_steps(args)
    config, items = prepare(args)
    runner = LocalRunner(
        config, section_from_args(args, StreamingOptions(), "") if args.runtime == "streaming" else None
    )
    summary = runner.run(items, args.output)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print_summary(summary, args.output)
    if summary.get("interrupted"):
        return EXIT_INTERRUPTED
    return EXIT_OK if summary["counts"]["error"] == 0 else EXIT_ITEMS_FAILED


def bench(args: argparse.Namespace) -> int:
    from clearml_pipeline.bench import BenchOptions, format_table, run_bench, track
    from clearml_pipeline.streaming import StreamingOptions

    config, items = prepare(args)
    options = section_from_args(args, BenchOptions(), "")
    report = run_bench(config, section_from_args(args, StreamingOptions(), ""), options, items, args.output)
    args.output.mkdir(parents=True, exist_ok=True)
    bench_json = args.output / "bench.json"
    bench_json.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    report["clearml_session"] = track(report, args.output, options.tracking)
    bench_json.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(format_table(report))
    print(f"bench: {bench_json}")
    if report["clearml_session"]:
        print(f"ClearML offline session: {report['clearml_session']} (upload: clearml-task --import-offline-session)")
    return EXIT_OK if report["errors"] == 0 else EXIT_ITEMS_FAILED


def main(argv: list[str] | None = None) -> int:
    from registry.hub import ModelUnavailableError

    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
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
        return EXIT_INTERRUPTED
    except (ModelUnavailableError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main())
