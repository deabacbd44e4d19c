"""The `evaluate` command: its flags and its entry (clearml_pipeline/__main__.py wires them in)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clearml_pipeline.evaluation.options import EvaluationOptions
from clearml_pipeline.evaluation.report import METRICS, REPORT, format_quality_table, format_table, track_evaluation
from clearml_pipeline.evaluation.scoring import evaluate_run
from clearml_pipeline.tracking import check_offline_folder
from steps.options import add_flags, from_flags


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """`evaluate` flags: --run, --manifest, --tracking and one flag per EvaluationOptions field (--asr-model ...)."""
    parser.add_argument("--run", type=Path, required=True, help="a finished run's output folder (results.jsonl)")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="the dataset's manifest.jsonl (reference_en, sentence); optional"
    )
    parser.add_argument(
        "--tracking",
        choices=("offline", "server", "none"),
        default="offline",
        help="record the evaluation as a ClearML task: offline session under RUN/clearml/, your server, or none",
    )
    add_flags(parser, EvaluationOptions(), "", "evaluation")


def evaluate_command(args: argparse.Namespace) -> int:
    """Run evaluate_run from parsed arguments; 0 on success, 2 on a setup error (message on stderr)."""
    from resources.weights import ModelUnavailableError

    options = from_flags(args, EvaluationOptions(), "")
    try:
        if args.tracking == "offline":  # refused before scoring writes metrics.json, not after (tracking.py)
            check_offline_folder(args.run / "clearml")
        metrics = evaluate_run(args.run, args.manifest, options)
    except (FileNotFoundError, ValueError, ModelUnavailableError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    print(f"\n{format_quality_table(metrics)}")
    if metrics["fixture_models"]:
        print(f"WARNING: fixture models ({metrics['model_set']}): the quality figures are noise")
    print(f"metrics: {args.run / METRICS}\nreport: {args.run / REPORT}")
    session = track_evaluation(metrics, args.run, args.tracking)
    if session:
        print(f"ClearML offline session: {session} (upload: clearml-task --import-offline-session)")
    return 0
