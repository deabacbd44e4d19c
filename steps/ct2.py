"""CTranslate2 conversions of Hugging Face snapshots, cached on disk and safe to share between processes.

A CTranslate2 backend loads the same snapshot the transformers backend would (resources.weights.resolve_hf_model)
and converts it locally with ctranslate2.converters.TransformersConverter. Conversions are cached under
`<cache>/<model id>/<snapshot revision>/<quantization>/` (cache: the stage's `ct2_cache` option, else
$S2ST_CT2_CACHE, else ~/.cache/s2st/ct2), so a model is converted once per snapshot and quantization.

Concurrency: a file lock beside the target folder lets one process convert while the others wait, and the
conversion is written into a temporary folder in the same parent and renamed into place only when complete
(manifest included), so a crash or a racing worker never leaves a half-written model where readers look.

The converted folder is self-contained: besides CTranslate2's model.bin, config.json and vocabulary, it holds
the snapshot's tokenizer, preprocessor and generation files (faster-whisper reads tokenizer.json and
preprocessor_config.json from it), and `s2st_conversion.json`, a manifest naming the source (id, revision),
the quantization, the library versions and every file with its size and sha256: what a model registry needs
to register the folder later (`ConvertedModel.manifest()`).

A model folder may also be a ready CTranslate2 model (the faster-whisper layout of the hub's
Systran/faster-whisper-* repositories: model.bin, config.json, tokenizer.json, vocabulary.json):
`whisper_layout` tells the two apart, and says what a folder that is neither is missing. Compute types are
checked against what this CTranslate2 build supports on the device (`check_compute_type`) before anything is
converted: a conversion that cannot be loaded afterwards is minutes and gigabytes wasted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from resources.weights import LocalModel, ModelUnavailableError, sha256_file

log = logging.getLogger(__name__)

CACHE_ENV = "S2ST_CT2_CACHE"
DEFAULT_CACHE = "~/.cache/s2st/ct2"
MANIFEST = "s2st_conversion.json"
# What `compute_type` accepts; "auto" is int8 on CPU and float16 on CUDA. The same name is the conversion's
# quantization (the weights are stored in that type, so loading needs no conversion at run time).
COMPUTE_TYPES = (
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
# Files CTranslate2 writes itself: never copied from the snapshot (the HF config.json would clash with its own).
_CT2_FILES = {
    "config.json",
    "model.bin",
    "vocabulary.json",
    "vocabulary.txt",
    "shared_vocabulary.json",
    "shared_vocabulary.txt",
    "source_vocabulary.json",
    "target_vocabulary.json",
    MANIFEST,
}
_AUX_SUFFIXES = (".json", ".txt", ".spm", ".model", ".tiktoken")


def resolve_compute_type(compute_type: str, device: str) -> str:
    """`auto` -> int8 on CPU, float16 on CUDA; any other accepted name as is."""
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}; got {compute_type!r}")
    if compute_type == "auto":
        return "float16" if device.startswith("cuda") else "int8"
    return compute_type


def check_compute_type(compute_type: str, device: str) -> None:
    """Fail before converting or loading when this CTranslate2 build cannot run `compute_type` on `device` (on
    CPU: no float16, bfloat16, int16 or int8_float16 kernels; CTranslate2 would only fail at load time)."""
    import ctranslate2

    kind = device_kwargs(device)["device"]
    supported = ctranslate2.get_supported_compute_types(kind)
    if compute_type not in supported:
        raise ValueError(
            f"compute_type {compute_type!r} is not supported on {kind} by CTranslate2 {ctranslate2.__version__} "
            f"(supported there: {', '.join(sorted(supported))}); choose one of those, or auto"
        )


class ModelLayoutError(ModelUnavailableError):
    """A model folder that is neither layout a stage can load; the message names what is missing."""


TRANSFORMERS = "transformers"
CTRANSLATE2 = "ctranslate2"
CT2_WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.json")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_TRANSFORMERS_WEIGHTS += ("pytorch_model.bin.index.json",)


def whisper_layout(folder: Path) -> str:
    """TRANSFORMERS (a Whisper checkpoint: config.json with model_type "whisper" and weights) or CTRANSLATE2 (a
    ready faster-whisper folder; preprocessor_config.json optional), else ModelLayoutError naming what is missing."""
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLayoutError(f"{folder}: config.json is not readable JSON ({exc})") from exc
    if model_type := config.get("model_type"):
        if model_type != "whisper":
            raise ModelLayoutError(f"{folder} is a transformers {model_type!r} checkpoint, not Whisper")
        if not any((folder / name).is_file() for name in _TRANSFORMERS_WEIGHTS):
            raise ModelLayoutError(
                f"{folder} has a transformers Whisper config.json but no weights: it is missing one of "
                f"{', '.join(_TRANSFORMERS_WEIGHTS)}"
            )
        return TRANSFORMERS
    if (folder / "model.bin").is_file() or config:
        has = {p.name for p in folder.iterdir()}
        missing = [name for name in CT2_WHISPER_FILES if name not in has]
        if "vocabulary.json" in missing and "vocabulary.txt" in has:
            missing.remove("vocabulary.json")
        if missing:
            raise ModelLayoutError(
                f"{folder} looks like a CTranslate2 (faster-whisper) folder but is missing {', '.join(missing)} "
                f"(such a folder holds {', '.join(CT2_WHISPER_FILES)}; preprocessor_config.json is optional)"
            )
        return CTRANSLATE2
    present = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else []
    raise ModelLayoutError(
        f"{folder} is not a Whisper model: a transformers checkpoint needs config.json (model_type \"whisper\") and "
        f"model.safetensors or pytorch_model.bin; a CTranslate2 (faster-whisper) folder needs "
        f"{', '.join(CT2_WHISPER_FILES)}. It holds: {', '.join(present) or 'nothing'}"
    )


def device_kwargs(device: str) -> dict[str, Any]:
    """CTranslate2's device and device_index from a torch-style device string ("cpu", "cuda", "cuda:1")."""
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return {"device": "cuda", "device_index": int(index or 0)}
    return {"device": "cpu"}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def source_key(local: LocalModel) -> tuple[str, str]:
    """(model folder name, revision) of the cache key. A local folder has no revision: its file list, sizes and
    modification times stand in for one, so an edited folder is converted again."""
    if local.revision != "local":
        return _safe(local.model_id.replace("/", "--")), _safe(local.revision)
    digest = hashlib.sha256()
    for path in sorted(p for p in local.path.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(local.path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    where = hashlib.sha256(str(local.path).encode()).hexdigest()[:12]
    return f"local--{_safe(local.path.name)}--{where}", "local-" + digest.hexdigest()[:16]


def conversion_dir(local: LocalModel, quantization: str, cache_dir: str | Path | None = None) -> Path:
    name, revision = source_key(local)
    return cache_root(cache_dir) / name / revision / quantization


@dataclass(frozen=True)
class ConvertedModel:
    """A CTranslate2 model folder converted from `source` with `quantization`."""

    source: LocalModel
    quantization: str
    path: Path
    converted: bool  # True when this call converted it; False when it came from the cache

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))

    @property
    def revision(self) -> str:
        """A content id of the converted folder (sha256 over its files' hashes), for the run summary."""
        return "sha256:" + self.manifest()["content_sha256"]


def ensure_converted(local: LocalModel, quantization: str, cache_dir: str | Path | None = None) -> ConvertedModel:
    """The cached conversion of `local` at `quantization`, converting it first if no complete one exists."""
    final = conversion_dir(local, quantization, cache_dir)
    if (final / MANIFEST).is_file():
        return ConvertedModel(local, quantization, final, converted=False)
    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{final.name}.lock")):
        if (final / MANIFEST).is_file():  # another process finished it while we waited for the lock
            return ConvertedModel(local, quantization, final, converted=False)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            out = staging / "model"
            log.info("converting %s (%s) to CTranslate2 %s in %s", local.model_id, local.revision, quantization, final)
            convert(local, out, quantization)
            try:
                os.rename(out, final)  # atomic on one filesystem; fails if a complete folder is already there
            except OSError:
                if not (final / MANIFEST).is_file():
                    raise
                return ConvertedModel(local, quantization, final, converted=False)  # a lock-less racer won
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ConvertedModel(local, quantization, final, converted=True)


def aux_files(snapshot: Path) -> list[str]:
    """The snapshot's tokenizer, preprocessor and generation files (everything small that is not weights)."""
    return sorted(
        p.name
        for p in snapshot.iterdir()
        if p.is_file()
        and p.suffix in _AUX_SUFFIXES
        and p.name not in _CT2_FILES
        and not p.name.endswith(".index.json")  # sharded-weights indexes
    )


def convert(local: LocalModel, out: Path, quantization: str) -> None:
    """Convert `local` into the new folder `out` and write its manifest (no caching: see ensure_converted)."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(local.path), copy_files=aux_files(local.path)).convert(
        str(out), quantization=quantization
    )
    model_type = json.loads((local.path / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type == "whisper":
        complete_whisper(local.path, out)
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(out.iterdir()) if p.is_file()
    }
    content = hashlib.sha256("".join(f"{name}\0{f['sha256']}\n" for name, f in files.items()).encode()).hexdigest()
    manifest = {
        "source": {"model_id": local.model_id, "revision": local.revision, "path": str(local.path)},
        "model_type": model_type,
        "quantization": quantization,
        "converter": "ctranslate2.converters.TransformersConverter",
        "versions": {"ctranslate2": ctranslate2.__version__, "transformers": metadata.version("transformers")},
        "files": files,
        "content_sha256": content,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def complete_whisper(snapshot: Path, out: Path) -> None:
    """What faster-whisper and multilingual decoding need beyond the converter's output.

    - preprocessor_config.json (faster-whisper takes n_mels, hop length ... from it; without it, 80 mels): a hub
      snapshot has one and it was copied, but transformers 5's WhisperProcessor.save_pretrained writes
      processor_config.json instead, so a locally saved model may not: write it from the feature extractor.
    - CTranslate2 calls a Whisper vocabulary multilingual only if it holds the empty token (id 50256 in the real
      vocabularies); otherwise faster-whisper will not take a language or task token. Our decoding forces the
      prefix itself and does not depend on it, but a conversion that loses it is worth a warning.
    """
    if not (out / "preprocessor_config.json").is_file():
        from transformers import WhisperFeatureExtractor

        WhisperFeatureExtractor.from_pretrained(snapshot).to_json_file(str(out / "preprocessor_config.json"))
    vocabulary = json.loads((out / "vocabulary.json").read_text(encoding="utf-8"))
    generation = snapshot / "generation_config.json"
    multilingual = generation.is_file() and "lang_to_id" in json.loads(generation.read_text(encoding="utf-8"))
    if multilingual and "" not in vocabulary:
        log.warning(
            "%s: the converted Whisper vocabulary has no empty token (id 50256), so CTranslate2 and faster-whisper "
            "will treat it as English-only",
            snapshot,
        )
