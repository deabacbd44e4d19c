"""Stage 3, speech synthesis: Chinese text -> audio with ESPnet2 Text2Speech (CSMSC Tacotron2 + vocoder).

The acoustic model comes through espnet_model_zoo's Hugging Face layout, the vocoder through
parallel_wavegan's zoo (`parallel_wavegan/<tag>`) or Griffin-Lim (`griffin_lim`). Numbers are read out,
characters the model's token list cannot say (Latin letters, symbols) are dropped and recorded, and long
text is synthesized sentence by sentence with a short pause between pieces.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from registry.hub import LocalModel, ModelUnavailableError, reachable, resolve_hf_model
from steps.base import ItemError, ModelInfo, Stage
from steps.compat import patch_scipy_kaiser
from steps.zh_text import PUNCTUATION, normalize_numbers, split_sentences

GRIFFIN_LIM = "griffin_lim"


@dataclass
class SpeechSynthesisOptions:
    backend: str = "espnet"
    model: str = "espnet/kan-bayashi_csmsc_tts_train_tacotron2_raw_phn_pypinyin_g2p_phone_train.loss.best"
    revision: str | None = None
    vocoder: str = "parallel_wavegan/csmsc_hifigan.v1"
    device: str = "cpu"
    max_piece_chars: int = 50
    pause_seconds: float = 0.25
    # Tacotron2 decoding bounds (ESPnet's defaults): at most 10 frames per input token.
    maxlenratio: float = 10.0
    minlenratio: float = 0.0
    threshold: float = 0.5
    model_cache: str = "~/.cache/espnet_model_zoo"
    vocoder_cache: str = "~/.cache/parallel_wavegan"


@dataclass
class Speech:
    samples: np.ndarray
    sample_rate: int
    pieces: int
    unsayable: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def resolve_vocoder(vocoder: str, cache_dir: Path, probe_timeout_s: float = 5.0) -> LocalModel | None:
    """A parallel_wavegan zoo tag -> its cached checkpoint; Griffin-Lim -> None."""
    if vocoder == GRIFFIN_LIM:
        return None
    if Path(vocoder).expanduser().is_file():
        path = Path(vocoder).expanduser().resolve()
        return LocalModel(vocoder, _file_hash(path), path)
    if not vocoder.startswith("parallel_wavegan/"):
        raise ValueError(f"vocoder must be 'parallel_wavegan/<tag>', a checkpoint path or {GRIFFIN_LIM!r}: {vocoder!r}")
    patch_scipy_kaiser()
    from parallel_wavegan.utils import download_pretrained_model

    tag = vocoder.removeprefix("parallel_wavegan/")
    if not (cache_dir / f"{tag}.tar.gz").exists() and not reachable("drive.google.com", probe_timeout_s):
        raise ModelUnavailableError(
            f"vocoder {vocoder!r} is not in the parallel_wavegan cache ({cache_dir}) and Google Drive cannot be "
            f'reached. To supply it: run `python -c "from parallel_wavegan.utils import download_pretrained_model; '
            f"download_pretrained_model('{tag}')\"` on a connected machine and copy ~/.cache/parallel_wavegan, or "
            f"use --tts-vocoder {GRIFFIN_LIM}, or --models fixtures."
        )
    path = Path(download_pretrained_model(tag, download_dir=str(cache_dir)))
    return LocalModel(vocoder, _file_hash(path), path)


class EspnetSynthesizer(Stage[str, Speech]):
    """ESPnet2 Text2Speech; one utterance at a time (Tacotron2 inference is not batched in ESPnet)."""

    name = "speech_synthesis"

    def __init__(self, options: SpeechSynthesisOptions | None = None) -> None:
        super().__init__()
        self.options = options or SpeechSynthesisOptions()
        self.local: LocalModel | None = None
        self.vocoder: LocalModel | None = None

    def setup(self) -> None:
        patch_scipy_kaiser()
        from espnet2.bin.tts_inference import Text2Speech
        from espnet_model_zoo.downloader import ModelDownloader

        opts = self.options
        self.local = resolve_hf_model(opts.model, opts.revision, cache_dir=opts.model_cache, library_name="espnet")
        # The zoo rewrites the relative paths inside config.yaml to this snapshot (its own unpack step).
        files = ModelDownloader._unpack_cache_dir_for_huggingfase(str(self.local.path))
        self.vocoder = resolve_vocoder(opts.vocoder, Path(os.path.expanduser(opts.vocoder_cache)))
        self.tts = Text2Speech(
            **files,
            vocoder_file=str(self.vocoder.path) if self.vocoder else None,
            device=opts.device,
            maxlenratio=opts.maxlenratio,
            minlenratio=opts.minlenratio,
            threshold=opts.threshold,
        )
        self.sample_rate = int(self.tts.fs)
        self.tokenizer = self.tts.preprocess_fn.tokenizer
        self.vocab = set(self.tts.preprocess_fn.token_id_converter.token_list)

    def models(self) -> list[ModelInfo]:
        assert self.local is not None
        infos = [ModelInfo("speech_synthesis", self.local.model_id, self.local.revision, str(self.local.path))]
        if self.vocoder is not None:
            infos.append(ModelInfo("vocoder", self.vocoder.model_id, self.vocoder.revision, str(self.vocoder.path)))
        else:
            infos.append(ModelInfo("vocoder", GRIFFIN_LIM, "n/a"))
        return infos

    def sayable(self, text: str) -> tuple[str, list[str]]:
        """`text` with the characters the model cannot say removed, and those characters (punctuation aside).

        A character is sayable when the g2p reads it as pinyin whose phones are all in the token list. The
        pypinyin frontend passes anything else through unchanged, so a Latin "m" or "e" would look like a
        phone of the same name: only Chinese characters are read.
        """
        kept: list[str] = []
        dropped: list[str] = []
        for char in text:
            tokens = self.tokenizer.text2tokens(char) if _is_hanzi(char) else []
            if tokens and all(t in self.vocab for t in tokens):
                kept.append(char)
            elif char not in PUNCTUATION and not char.isspace():
                dropped.append(char)
        return "".join(kept), dropped

    def process(self, inputs: Sequence[str]) -> list[Speech | ItemError]:
        return [self.synthesize(text) for text in inputs]

    @torch.inference_mode()
    def synthesize(self, text: str) -> Speech | ItemError:
        opts = self.options
        pieces: list[str] = []
        unsayable: list[str] = []
        for piece in split_sentences(normalize_numbers(text), opts.max_piece_chars):
            clean, dropped = self.sayable(piece)
            unsayable.extend(dropped)
            if clean:
                pieces.append(clean)
        if not pieces:
            return ItemError(f"nothing the TTS model can say in {text[:40]!r} (unsayable: {''.join(unsayable)!r})")
        pause = np.zeros(int(opts.pause_seconds * self.sample_rate), dtype=np.float32)
        waves: list[np.ndarray] = []
        for index, piece in enumerate(pieces):
            if index:
                waves.append(pause)
            waves.append(self.tts(piece)["wav"].float().cpu().numpy().reshape(-1))
        return Speech(np.concatenate(waves), self.sample_rate, len(pieces), sorted(set(unsayable)))


def _is_hanzi(char: str) -> bool:
    """CJK unified ideographs (with extension A and the compatibility block)."""
    code = ord(char)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
