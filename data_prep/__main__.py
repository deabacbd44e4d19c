"""`python -m data_prep ingest ...`: turn a source into a dataset folder (and optionally a ClearML Dataset).

Examples:
  python -m data_prep ingest --source common_voice --path cv-corpus-11.0/es --split test --limit 200 --seed 0 \\
      --covost covost_v2.es_en.tsv --out out/datasets
  python -m data_prep ingest --source hf --hf-name mozilla-foundation/common_voice_11_0 --hf-config es \\
      --split test --limit 100            # token from --hf-token, HF_TOKEN or `huggingface-cli login`
  python -m data_prep ingest --source fleurs --path fleurs/data --split test   # es_419 audio, cmn_hans_cn text
  python -m data_prep ingest --source folder --path my_recordings --clearml --dataset-project s2st/datasets
  python -m data_prep samples --output samples/   # (re)make the Spanish sample clips shipped in samples/
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data_prep.dataset import DatasetResult, build_dataset
from data_prep.ingest import SOURCES, IngestOptions
from data_prep.samples import DEFAULT_OUTPUT, SamplesError, write_samples
from data_prep.sources import HFLoader, SourceError, parse_splits
from resources.paths import UnsafePathError, safe_name

DEFAULT_SPLIT = {"common_voice": "test", "hf": "test", "folder": "all", "fleurs": "test"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help="turn a source into a dataset", formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", choices=SOURCES, required=True)
    p.add_argument(
        "--path",
        type=Path,
        help="Common Voice release folder (<lang>/ with clips/ and *.tsv), audio folder, or FLEURS release "
        "(es_419/, cmn_hans_cn/, en_us/; --source fleurs without --path: --hf-name google/fleurs downloads it)",
    )
    p.add_argument("--hf-name", help="Hugging Face dataset, e.g. mozilla-foundation/common_voice_11_0")
    p.add_argument("--hf-config", help="its config, e.g. es")
    p.add_argument("--hf-token", help="hub token (default: $HF_TOKEN, then the saved login); never stored")
    p.add_argument(
        "--split",
        help="split(s), comma-separated: Common Voice TSV names (validated, train, dev, test) "
        "or hub split names; default: test (folder: 'all', only a label)",
    )
    p.add_argument("--limit", type=int, help="keep N clips, chosen by --seed (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-seconds", type=float, default=0.5, help="shorter clips are rejected (default 0.5)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longer clips are rejected (default 30)")
    p.add_argument("--covost", type=Path, help="CoVoST 2 covost_v2.es_en.tsv: join English references by clip path")
    p.add_argument("--out", type=Path, default=Path("out/datasets"), help="local datasets root (default out/datasets)")
    p.add_argument("--parent", help="dataset this one extends: a local dataset folder, or with --clearml a dataset id")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("ClearML (register the dataset folder as a ClearML Dataset version)")
    g.add_argument("--clearml", action="store_true", help="register (needs a configured ClearML server)")
    g.add_argument("--dataset-project", default="s2st/datasets")
    g.add_argument("--dataset-name", help="dataset name (also the local folder name); default <source>-<split>")
    g.add_argument("--dataset-version", help="e.g. 1.2.0 (default: ClearML bumps the latest)")
    s = sub.add_parser("samples", help="speak the Spanish sample clips with espeak-ng (what samples/ ships)")
    s.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to write (default: samples/ here)")
    return parser


def options_from_args(args: argparse.Namespace, parent_folder: Path | None) -> IngestOptions:
    splits = parse_splits(args.split or DEFAULT_SPLIT[args.source])
    name = args.dataset_name or safe_name(f"{args.source}-{'_'.join(splits)}")
    return IngestOptions(
        source=args.source,
        splits=tuple(splits),
        out=args.out,
        name=name,
        path=args.path,
        hf_name=args.hf_name,
        hf_config=args.hf_config,
        hf_token=args.hf_token or os.environ.get("HF_TOKEN") or None,
        limit=args.limit,
        seed=args.seed,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        covost=args.covost,
        parent=parent_folder,
        show_progress=not args.no_progress,
    )


def summary(result: DatasetResult) -> str:
    info, report = result.info, result.report
    lines = [
        f"dataset  {result.folder}  ({'reused, identical content' if result.reused else 'new'})",
        f"hash     {result.content_hash}",
        f"clips    selected {report.selected} = accepted {report.accepted} + rejected {report.rejected}"
        + (f"; {info['counts']['inherited']} inherited from the parent" if info["counts"]["inherited"] else ""),
        (
            f"audio    {info['counts']['rows']} WAVs, {info['seconds'] / 60:.1f} min ({info['hours']} h) at "
            f"{info['sample_rate']} Hz mono"
        ),
        (
            f"text     {info['counts']['with_sentence']} with sentence, "
            f"{info['counts']['with_reference_en']} with an English reference, "
            f"{info['counts'].get('with_reference_zh', 0)} with a Mandarin one"
        ),
    ]
    if report.rejections:
        reasons = ", ".join(f"{k} {v}" for k, v in report.reason_counts().items())
        lines.append(f"rejected {reasons}  (see {result.folder / 'report.md'})")
    return "\n".join(lines)


def ingest(args: argparse.Namespace, loader: HFLoader | None = None) -> int:
    if args.clearml:  # a server that is down or not configured is reported now, not after the clips are converted
        from resources.clearml_server import check_server

        check_server()
    parent_folder: Path | None = None
    if args.parent:
        if args.clearml:
            from data_prep.clearml_dataset import parent_local_copy

            parent_folder = parent_local_copy(args.parent)
        else:
            parent_folder = Path(args.parent)
    opts = options_from_args(args, parent_folder)
    result = build_dataset(opts, loader=loader)
    print(summary(result))
    if args.clearml:
        from data_prep.clearml_dataset import ClearMLTarget, register

        target = ClearMLTarget(
            project=args.dataset_project, name=opts.name, parent_id=args.parent, version=args.dataset_version
        )
        reg = register(result, target)
        state = "reused existing version" if reg.reused else "registered new version"
        print(f"clearml  {state} {reg.version or ''} id={reg.dataset_id} ({target.project}/{target.name})")
    return 0


def samples(args: argparse.Namespace) -> int:
    try:
        paths = write_samples(args.output)
    except SamplesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"samples  {len(paths)} clips, {sum(p.stat().st_size for p in paths) // 1024} KB in {args.output}")
    return 0


def main(argv: list[str] | None = None, loader: HFLoader | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "samples":
        return samples(args)
    try:
        return ingest(args, loader=loader)
    except (SourceError, UnsafePathError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
