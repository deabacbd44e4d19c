"""Command line: `python -m clearml_pipeline run --local --input DIR --output OUT [--models fixtures]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clearml_pipeline.config import add_config_arguments, config_from_args

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_SETUP_FAILED = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clearml_pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="translate Spanish speech to Mandarin speech")
    run.add_argument("--local", action="store_true", help="run every stage in this process, no ClearML server")
    run.add_argument("--input", type=Path, required=True, help="an audio file or a folder of them")
    run.add_argument("--output", type=Path, required=True, help="folder for results.jsonl, summary.json, audio/")
    add_config_arguments(run)
    return parser


def print_summary(summary: dict, out: Path) -> None:
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


def run_local(args: argparse.Namespace) -> int:
    from clearml_pipeline.runner import LocalRunner, discover_inputs
    from registry.hub import ModelUnavailableError
    from registry.model_sets import apply_model_set

    config = config_from_args(args)
    try:
        items = discover_inputs(args.input)
        if config.runner.limit:
            items = items[: config.runner.limit]
        apply_model_set(config)
        runner = LocalRunner(config)
        runner.setup()
    except (ModelUnavailableError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    summary = runner.run(items, args.output)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print_summary(summary, args.output)
    return EXIT_OK if summary["counts"]["error"] == 0 else EXIT_ITEMS_FAILED


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "run":
        if not args.local:
            print("error: remote ClearML execution is not available yet; run with --local", file=sys.stderr)
            return EXIT_SETUP_FAILED
        return run_local(args)
    return EXIT_SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main())
