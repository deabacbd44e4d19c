"""Every model of every step located before the first step runs, none loaded: a missing one stops the run at once.

The in-process and streaming runtimes load every stage before the first item; the steps runtime (and a pipeline
whose steps run on this machine) starts each step in its own process, so without this check a missing machine
translation model would be found only after speech translation had run on every item. The check reads the
option fields' metadata (`model_ref`, `revision`, `cache_field`: steps.options), after the model set's caches
and the registry refs are applied as each step applies them, so `--models fixtures`, local folders and
`registry:` refs are honoured. Resolution is resources.weights' own (a hub model missing from the cache is
downloaded when the hub answers, as the step would; a vocoder is only found, not fetched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from clearml_pipeline.config import PipelineConfig, RunConfig, flag_prefix
from resources.weights import ModelUnavailableError, espnet_hub_id, locate_vocoder, resolve_hf_model
from steps.options import fields_with

Config = TypeVar("Config", RunConfig, PipelineConfig)


def model_sections(config: RunConfig | PipelineConfig) -> dict[str, Any]:
    """The option sections that load models, as the steps will read them: every stage's, and the evaluation's
    ASR as the evaluation builds it (its cache falling back to speech translation's) when it transcribes. A
    RunConfig (the in-process and streaming runtimes, which do not evaluate) has the stages' only."""
    from clearml_pipeline.evaluation.transcriber import asr_options

    if isinstance(config, RunConfig):
        return dict(config.stages)
    sections = dict(config.run.stages)
    evaluation = config.evaluation
    if evaluation.intelligibility or evaluation.spanish_wer:
        sections["evaluation"] = asr_options(evaluation, config.run.to_dict())
    return sections


def locate_section(section: str, options: Any) -> list[Path]:
    """Each model field of one section located (a local folder or file); a missing one raises
    ModelUnavailableError naming the option (`--mt-model`) and the model."""
    found = []
    for f in fields_with(options, "model_ref"):
        value = getattr(options, f.name)
        cache = getattr(options, f.metadata["cache_field"]) if "cache_field" in f.metadata else None
        name = "asr_model" if section == "evaluation" else f.name  # the evaluation's, through asr_options
        flag = f"--{flag_prefix(section)}{name.replace('_', '-')}"
        try:
            if f.metadata["model_ref"] == "vocoder":
                path = locate_vocoder(value, Path(cache or ".").expanduser())
            else:
                revision = getattr(options, f.metadata["revision"]) if "revision" in f.metadata else None
                if f.metadata["model_ref"] == "espnet":  # a zoo name is looked up as its hub mirror, as the step does
                    value = espnet_hub_id(value)
                path = resolve_hf_model(value, revision, cache_dir=cache).path
        except ModelUnavailableError as exc:
            raise ModelUnavailableError(f"{section}.{name} ({flag}): {exc}") from exc
        if path is not None:
            found.append(path)
    return found


def ready_config(config: Config) -> tuple[Config, dict[str, Any]]:
    """The config as a process loads models from it: the model set's caches, and every registry ref resolved to
    its local copy (returned too, for the run's record)."""
    from registry.model_sets import model_caches
    from registry.refs import resolve_sections

    config = config.updated(model_caches(config.sections()["runner"].models, config.sections()))
    changes, resolved = resolve_sections(config.sections())
    return config.updated(changes), resolved


def locate_models(ready: RunConfig | PipelineConfig) -> list[Path]:
    """Every model a ready config's steps will load, located (none loaded); returns where they are."""
    return [path for name, options in model_sections(ready).items() for path in locate_section(name, options)]


def check_models(config: RunConfig | PipelineConfig) -> list[Path]:
    """Locate every model `config`'s steps will load, before any step runs; returns where they are."""
    return locate_models(ready_config(config)[0])
