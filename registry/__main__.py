"""The model registry from the command line.

python -m registry register --stage speech_translation --source openai/whisper-large [--name whisper-large]
python -m registry list [--stage speech_translation]
python -m registry resolve registry:whisper-large

With a ClearML server configured (clearml.conf or CLEARML_API_* variables) the models go to ClearML's model
registry; otherwise, or with --registry local, to a local folder ($S2ST_REGISTRY_DIR, ~/.cache/s2st/registry).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from registry.catalog import ModelRecord, folder_hash
from registry.refs import open_registry, resolve

STAGE_DEFAULTS = {  # stage -> (backend, languages)
    "speech_translation": ("transformers", "es-en"),
    "machine_translation": ("transformers", "en-zh"),
    "speech_synthesis": ("espnet", "zh"),
    "vocoder": ("parallel_wavegan", "zh"),
    "evaluation": ("transformers", "zh"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m registry", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registry", choices=("auto", "local", "clearml"), default="auto")
    commands = parser.add_subparsers(dest="command", required=True)
    reg = commands.add_parser("register", help="put a model into the registry")
    reg.add_argument("--stage", choices=tuple(STAGE_DEFAULTS), required=True)
    reg.add_argument("--source", required=True, help="hub id, parallel_wavegan/<tag>, or a local folder or file")
    reg.add_argument("--name", help="registry name (default: the source's last path part)")
    reg.add_argument("--revision", help="hub revision (default: main)")
    reg.add_argument("--backend", help="default per stage: transformers, espnet, parallel_wavegan")
    reg.add_argument("--languages", help="default per stage: es-en, en-zh, zh")
    reg.add_argument("--cache", help="model cache to look in (default: the stage's usual cache)")
    reg.add_argument("--tags", nargs="*", default=[])
    listing = commands.add_parser("list", help="show registered models")
    listing.add_argument("--stage", choices=tuple(STAGE_DEFAULTS))
    listing.add_argument("--name")
    res = commands.add_parser("resolve", help="print the local folder of a registry ref")
    res.add_argument("ref", help="registry:<id or name>")
    return parser


def locate(stage: str, source: str, revision: str | None, cache: str | None) -> tuple[Path, str, str]:
    """The source as (folder to register, entry file inside it, revision)."""
    from resources.weights import resolve_hf_model

    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), "", "local"
    if path.is_file():  # a vocoder checkpoint: its config.yml and stats sit beside it
        return path.resolve().parent, path.name, "local"
    if stage == "vocoder":
        from resources.weights import resolve_vocoder
        from steps.speech_synthesis import SpeechSynthesisOptions

        local = resolve_vocoder(source, Path(cache or SpeechSynthesisOptions().vocoder_cache).expanduser())
        if local is None:
            raise ValueError("griffin_lim has no weights to register")
        return local.path.parent, local.path.name, local.revision
    if stage == "speech_synthesis":
        from steps.speech_synthesis import SpeechSynthesisOptions

        local = resolve_hf_model(source, revision, cache or SpeechSynthesisOptions().model_cache, library_name="espnet")
    else:
        local = resolve_hf_model(source, revision, cache)
    return local.path, "", local.revision


def register(args: argparse.Namespace) -> int:
    backend, languages = STAGE_DEFAULTS[args.stage]
    folder, entry, revision = locate(args.stage, args.source, args.revision, args.cache)
    record = ModelRecord(
        name=args.name or args.source.rstrip("/").split("/")[-1],
        stage=args.stage,
        backend=args.backend or backend,
        languages=args.languages or languages,
        source=args.source,
        revision=revision,
        content_hash=folder_hash(folder),
        entry=entry,
        tags=list(args.tags),
    )
    registry = open_registry(args.registry)
    record, reused = registry.register(folder, record)
    state = "already registered" if reused else "registered"
    print(f"{state}: {record.name} id={record.id} sha256={record.content_hash[:12]} ({type(registry).__name__})")
    print(f"use it as: registry:{record.name}  (or registry:{record.id})")
    return 0


def list_models(args: argparse.Namespace) -> int:
    records = open_registry(args.registry).list(stage=args.stage, name=args.name)
    header = f"{'id':<32}  {'name':<28} {'stage':<20} {'backend':<16} {'lang':<6} {'sha256':<12}  source@revision"
    print(header)
    for r in records:
        print(
            f"{r.id:<32}  {r.name:<28} {r.stage:<20} {r.backend:<16} {r.languages:<6} {r.content_hash[:12]:<12}  "
            f"{r.source}@{r.revision[:12]}"
        )
    print(f"{len(records)} model(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from resources.clearml_server import ServerUnavailableError
    from resources.weights import ModelUnavailableError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "register":
            return register(args)
        if args.command == "list":
            return list_models(args)
        print(resolve(args.ref, open_registry(args.registry))[0])
        return 0
    except (ServerUnavailableError, ModelUnavailableError, LookupError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
