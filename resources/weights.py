"""Resolve a Hugging Face model reference to a local snapshot folder, fast and with a clear error.

The cache is tried first (`local_files_only`), so a seeded or pre-downloaded cache never touches the network.
Only when the model is missing is the hub contacted, after a short TCP probe: an unreachable hub must fail
in seconds with a message that says how to supply the model, not hang in retries or print a stack trace.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from resources.compat import patch_scipy_kaiser

GRIFFIN_LIM = "griffin_lim"  # the vocoder option that needs no weights

# Formats we never load; skipping them keeps a first download to the weights transformers actually reads.
IGNORE_PATTERNS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "coreml/*", "*.gguf"]


class ModelUnavailableError(RuntimeError):
    """A model that is neither cached nor downloadable right now. The message is meant for the user."""


@dataclass(frozen=True)
class LocalModel:
    """A model on local disk: the id asked for, the revision (commit sha or content tag), and its folder."""

    model_id: str
    revision: str
    path: Path


def reachable(url: str, timeout_s: float = 5.0) -> bool:
    """True when a TCP connection to `url`'s host opens within `timeout_s` (DNS failures count as unreachable)."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def how_to_supply(model_id: str) -> str:
    return (
        f"To supply it: on a machine with internet run `hf download {model_id}` and copy the Hugging Face cache "
        f"(~/.cache/huggingface/hub, or set HF_HUB_CACHE to where you put it); or pass a local folder path instead "
        f"of the id; or use `--models fixtures` to exercise the pipeline with tiny random models."
    )


def espnet_hub_id(model: str) -> str:
    """The Hugging Face id for `model`: espnet_model_zoo's `kan-bayashi/<name>` names are mirrored on the hub as
    `espnet/kan-bayashi_<name>` (their table.csv points at Zenodo, which the TTS stage does not fetch from); hub
    ids and local folders pass through."""
    if model.startswith("kan-bayashi/") and not Path(model).expanduser().is_dir():
        return "espnet/" + model.replace("/", "_", 1)
    return model


def resolve_hf_model(
    model_id: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    library_name: str | None = None,
    probe_timeout_s: float = 5.0,
) -> LocalModel:
    """Return a local folder holding `model_id` at `revision`, downloading it only if the hub answers.

    `cache_dir` None is the standard Hugging Face cache (HF_HUB_CACHE); espnet_model_zoo keeps its own.
    """
    cache = os.path.expanduser(str(cache_dir)) if cache_dir else None
    where = cache or constants.HF_HUB_CACHE
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return LocalModel(model_id, revision or "local", folder.resolve())
    if folder.exists() or model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1:  # a path, not a hub id
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ModelUnavailableError(
            f"model folder {model_id!r} {what}: give a folder holding the model's files, or a hub id (name or "
            "namespace/name)"
        )
    try:
        path = snapshot_download(
            model_id, revision=revision, cache_dir=cache, local_files_only=True, ignore_patterns=IGNORE_PATTERNS
        )
        return LocalModel(model_id, Path(path).name, Path(path))
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise ModelUnavailableError(
            f"model {model_id!r} is not in the local model cache ({where}) and offline "
            f"mode is on (HF_HUB_OFFLINE). {how_to_supply(model_id)}"
        )
    if not reachable(constants.ENDPOINT, probe_timeout_s):
        raise ModelUnavailableError(
            f"model {model_id!r} is not in the local model cache ({where}) and the hub "
            f"({constants.ENDPOINT}) cannot be reached. {how_to_supply(model_id)}"
        )
    try:
        path = snapshot_download(
            model_id, revision=revision, cache_dir=cache, library_name=library_name, ignore_patterns=IGNORE_PATTERNS
        )
    except Exception as exc:
        raise ModelUnavailableError(f"could not download model {model_id!r}: {exc}. {how_to_supply(model_id)}") from exc
    return LocalModel(model_id, Path(path).name, Path(path))


def sha256_file(path: Path) -> str:
    """The file's sha256 hex digest, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_vocoder(vocoder: str, cache_dir: Path, probe_timeout_s: float = 5.0) -> Path | None:
    """Where the vocoder is or will be fetched from, without loading or downloading it: a checkpoint file, the
    zoo tag's cached archive (or, not cached, its cache folder once Google Drive answers); Griffin-Lim -> None.
    A vocoder neither cached nor reachable raises ModelUnavailableError."""
    if vocoder == GRIFFIN_LIM:
        return None
    if Path(vocoder).expanduser().is_file():
        return Path(vocoder).expanduser().resolve()
    if not vocoder.startswith("parallel_wavegan/"):
        raise ValueError(f"vocoder must be 'parallel_wavegan/<tag>', a checkpoint path or {GRIFFIN_LIM!r}: {vocoder!r}")
    tag = vocoder.removeprefix("parallel_wavegan/")
    archive = Path(cache_dir).expanduser() / f"{tag}.tar.gz"
    if archive.exists():
        return archive
    if not reachable("drive.google.com", probe_timeout_s):
        raise ModelUnavailableError(
            f"vocoder {vocoder!r} is not in the parallel_wavegan cache ({cache_dir}) and Google Drive cannot be "
            f'reached. To supply it: run `python -c "from parallel_wavegan.utils import download_pretrained_model; '
            f"download_pretrained_model('{tag}')\"` on a connected machine and copy ~/.cache/parallel_wavegan, or "
            f"use --tts-vocoder {GRIFFIN_LIM}, or --models fixtures."
        )
    return archive.parent


def resolve_vocoder(vocoder: str, cache_dir: Path, probe_timeout_s: float = 5.0) -> LocalModel | None:
    """A parallel_wavegan zoo tag -> its cached checkpoint (downloaded when missing); Griffin-Lim -> None."""
    if vocoder != GRIFFIN_LIM and Path(vocoder).expanduser().is_file():
        path = Path(vocoder).expanduser().resolve()
        return LocalModel(vocoder, "sha256:" + sha256_file(path)[:16], path)
    if locate_vocoder(vocoder, cache_dir, probe_timeout_s) is None:
        return None
    patch_scipy_kaiser()
    from parallel_wavegan.utils import download_pretrained_model

    tag = vocoder.removeprefix("parallel_wavegan/")
    path = Path(download_pretrained_model(tag, download_dir=str(cache_dir)))
    return LocalModel(vocoder, "sha256:" + sha256_file(path)[:16], path)
