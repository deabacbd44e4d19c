"""Stage 3, speech synthesis: Chinese text -> audio with ESPnet2 Text2Speech (CSMSC Tacotron2 + vocoder).

The acoustic model comes through espnet_model_zoo's Hugging Face layout (an `espnet/...` hub id, or the zoo's
`kan-bayashi/...` name, read as its hub mirror `espnet/kan-bayashi_...`): Tacotron2 by default, or any other
ESPnet2 TTS model such as the CSMSC Conformer FastSpeech2. The vocoder comes through parallel_wavegan's zoo
(`parallel_wavegan/<tag>`: csmsc_hifigan.v1 by default, csmsc_multi_band_melgan.v2, ...) or is Griffin-Lim
(`griffin_lim`); parallel_wavegan's load_model attaches the PQMF a multi-band generator needs. Numbers are read out,
characters the model's token list cannot say (Latin letters, symbols) are dropped and recorded, and long
text is synthesized sentence by sentence with a short pause between pieces. `dtype` bfloat16 runs the model
and the vocoder under torch.autocast: on a CPU with AVX-512 BF16 / AMX, Tacotron2 at batch 8 + HiFiGAN then ran
at 1.8-2.2x float32's throughput (benchmarks/README.md), at bfloat16's precision (about 3 significant digits).
On a CPU the vocoder's convolutions run on channels-last views (steps.channels_last: no layout copy per layer),
HiFiGAN's activations and residual additions inside its convolutions (steps.fused_hifigan), and the batched
decoder's LSTM cells on weights packed once for oneDNN (steps.packed_lstm); the batched path vocodes in length
buckets, so a serving process builds oneDNN primitives for a few lengths, not one per utterance.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from resources.compat import import_espnet_quietly, patch_scipy_kaiser
from resources.weights import GRIFFIN_LIM, LocalModel, resolve_hf_model, resolve_vocoder
from resources.weights import espnet_hub_id as hub_id
from steps.base import ItemError, ModelInfo, Stage
from steps.channels_last import channels_last_convolutions
from steps.device import pick_device, pick_dtype
from steps.fused_hifigan import fuse
from steps.options import TRUE_WORDS, dtype_name, one_of, option, switch, torch_device
from steps.packed_lstm import packable, packed_cells
from steps.tacotron_batch import (
    Cell,
    batchable,
    batched_hifigan,
    bucket,
    bucketed_vocode,
    check_window,
    reach_frames,
    tacotron2_inference,
    vocode,
    windowed_vocode,
)
from steps.zh_text import PUNCTUATION, normalize_numbers, split_sentences


@dataclass(frozen=True)
class SpeechSynthesisOptions:
    backend: str = option("espnet", "espnet (Text2Speech)", check=one_of("espnet"))
    model: str = option(
        "espnet/kan-bayashi_csmsc_tts_train_tacotron2_raw_phn_pypinyin_g2p_phone_train.loss.best",
        "ESPnet TTS model: hub id (espnet/...), zoo name (kan-bayashi/...), local folder or registry: ref",
        model_ref="espnet",
        revision="revision",
        cache_field="model_cache",
        pipeline=True,
    )
    revision: str | None = option(None, "hub revision (commit) to pin; None: the cached or newest one")
    vocoder: str = option(
        "parallel_wavegan/csmsc_hifigan.v1",
        "parallel_wavegan/<tag>, a checkpoint path, a registry: ref, or griffin_lim",
        model_ref="vocoder",
        cache_field="vocoder_cache",
        pipeline=True,
    )
    device: str = option("cpu", "cpu or cuda (Tacotron2 decodes step by step: meant for the CPU)", check=torch_device)
    # float32 by default: the mission's models as trained. bfloat16 pays where the CPU computes it natively
    # (AVX-512 BF16, AMX: the weight-bound batched LSTM steps read half the bytes); elsewhere it is emulated.
    dtype: str = option("float32", "float32, bfloat16 or float16: model and vocoder autocast", check=dtype_name)
    max_piece_chars: int = option(50, "text is split at sentence, then clause punctuation into pieces this long")
    pause_seconds: float = option(0.25, "silence between synthesized pieces")
    # Tacotron2 decoding bounds (ESPnet's defaults): at most 10 frames per input token.
    maxlenratio: float = option(10.0, "Tacotron2: at most this many frames per input token")
    minlenratio: float = option(0.0, "Tacotron2: at least this many frames per input token")
    threshold: float = option(0.5, "Tacotron2: stop-token probability that ends decoding")
    # Pieces of all the items of a call share forward passes (steps.tacotron_batch); 1 is ESPnet's own path.
    # Only Tacotron2 decodes in batches; other acoustic models (FastSpeech2) go piece by piece through ESPnet.
    batch_size: int = option(8, "text pieces synthesized together in one Tacotron2 + HiFiGAN pass; 1: one by one")
    # Measured on 2 CPU cores (full-size HiFiGAN, 8 pieces): one padded generator call took 2.5x the time of
    # eight lone calls (long padded convolutions thrash the caches), so the CPU default vocodes piece by piece.
    batch_vocoder: str = option("auto", "auto (a call per batch on CUDA, per piece on CPU), true, false", check=switch)
    # steps.channels_last: on a CPU the vocoder's convolutions copied their input into oneDNN's layout and back at
    # every layer; on channels-last views HiFiGAN ran 1.3x (float32) to 2.4x (bfloat16) faster, same samples.
    channels_last: str = option("auto", "vocoder convolutions channels-last: auto (on CPU), true, false", check=switch)
    # steps.fused_hifigan: full-size HiFiGAN, six pieces, 2 threads: bfloat16 9 % less time, float32 4 %; in
    # bfloat16 a sample may differ from the plain forward's by a unit or two of the last place.
    fused_vocoder: str = option(
        "auto", "HiFiGAN's LeakyReLUs and residual additions inside its convolutions: auto (with channels_last), "
        "true, false", check=switch,
    )
    # steps.tacotron_batch.bucketed_vocode: oneDNN builds convolution primitives per input length and caches
    # about a dozen lengths of a HiFiGAN, so exact lengths made nearly every utterance pay for new ones.
    vocoder_bucket_frames: int = option(
        32, "batched path: HiFiGAN input padded (masked, same samples) to a multiple of this many frames; 1: exact"
    )
    # steps.tacotron_batch.windowed_vocode: 90 pieces of 32-999 frames, full-size HiFiGAN, bfloat16 (AMX), 2 threads:
    # 119 s in 32-frame buckets (oneDNN's cache keeps ~12 of the 31 lengths), 15 s in 384-frame windows, same samples.
    vocoder_windows: str = option(
        "auto", "a HiFiGAN input longer than vocoder_window_frames vocoded in overlapping windows of that length "
        "(same samples, one input length): auto (a HiFiGAN vocoded piece by piece, the CPU default), true, false",
        check=switch,
    )
    vocoder_window_frames: int = option(384, "the windows' length in frames (more than twice the HiFiGAN's reach)")
    # steps.packed_lstm: the batched decoder's LSTM products on weights packed once for oneDNN. Full-size CSMSC
    # Tacotron2, 8 pieces, 2 threads: decoding took 0.92 -> 0.80 s in bfloat16 (same mels bit for bit) and
    # 1.23 -> 0.99 s in float32 (within 2e-6). ESPnet's own path (batch_size 1) is left as ESPnet runs it.
    packed_lstm: str = option(
        "auto", "batched Tacotron2's LSTM weights packed for oneDNN: auto (CPU; float32 from 512 units), true, false",
        check=switch,
    )
    model_cache: str = option("~/.cache/espnet_model_zoo", "the ESPnet model cache folder", cache="espnet")
    vocoder_cache: str = option("~/.cache/parallel_wavegan", "the parallel_wavegan vocoder cache", cache="vocoder")


@dataclass
class Speech:
    samples: np.ndarray
    sample_rate: int
    pieces: int
    unsayable: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


class EspnetSynthesizer(Stage[str, Speech]):
    """ESPnet2 Text2Speech's model and vocoder. ESPnet decodes Tacotron2 one utterance at a time; with
    batch_size > 1 the pieces of all items of a call are decoded and vocoded in padded batches instead."""

    name = "speech_synthesis"

    def __init__(self, options: SpeechSynthesisOptions | None = None) -> None:
        super().__init__()
        self.options = options or SpeechSynthesisOptions()
        self.local: LocalModel | None = None
        self.vocoder: LocalModel | None = None
        self.text_to_wave = False
        self.channels_last_layers = 0  # convolutions of the wave generator computed channels-last
        self.fused_blocks = 0  # HiFiGAN residual blocks computed with oneDNN post-ops (steps.fused_hifigan)
        self.vocoder_reach = 0  # the HiFiGAN's reach per side in frames, once windows need it
        self.packed: dict[torch.dtype, list[Cell]] = {}  # the decoder's packed LSTM cells, per compute dtype

    def setup(self) -> None:
        patch_scipy_kaiser()
        import_espnet_quietly()
        from espnet2.bin.tts_inference import Text2Speech
        from espnet_model_zoo.downloader import ModelDownloader

        # "auto" resolved, and a GPU asked for where there is none stops here, before any model is read
        self.options = replace(self.options, device=pick_device(self.options.device))
        opts = self.options
        pick_dtype(opts.dtype, opts.device)  # a bad value stops here too
        if _choice(opts.packed_lstm, auto=False):
            self.pack_lstm()  # and so does packing asked for where it cannot run
        self.local = resolve_hf_model(
            hub_id(opts.model), opts.revision, cache_dir=opts.model_cache, library_name="espnet"
        )
        # The zoo rewrites the relative paths inside config.yaml to this snapshot (its own unpack step).
        files = ModelDownloader._unpack_cache_dir_for_huggingfase(str(self.local.path))
        # A text-to-wave model (VITS) has no vocoder: none is resolved, so none need be cached.
        self.text_to_wave = text_to_wave(Path(files["train_config"]))
        self.vocoder = (
            None if self.text_to_wave else resolve_vocoder(opts.vocoder, Path(os.path.expanduser(opts.vocoder_cache)))
        )
        self.tts = Text2Speech(
            **files,
            vocoder_file=str(self.vocoder.path) if self.vocoder else None,
            device=opts.device,
            maxlenratio=opts.maxlenratio,
            minlenratio=opts.minlenratio,
            threshold=opts.threshold,
        )
        if self.vocode_channels_last():
            for generator in self.wave_generators():
                # VITS's decoder keeps its weight norm in ESPnet (recomputed at each call, so not convertible);
                # removed here as ESPnet's wrapper removes it from parallel_wavegan vocoders.
                if self.text_to_wave and hasattr(generator, "remove_weight_norm"):
                    generator.remove_weight_norm()
                self.channels_last_layers += channels_last_convolutions(generator)
        if _choice(opts.fused_vocoder, auto=self.channels_last_layers > 0):
            generator = None if self.text_to_wave else batched_hifigan(self.tts.vocoder)  # parallel_wavegan's only
            self.fused_blocks = 0 if generator is None else fuse(generator)
            if not self.fused_blocks and opts.fused_vocoder.strip().lower() != "auto":
                raise ValueError(
                    "fused_vocoder needs a parallel_wavegan HiFiGAN with stages of 32 channels or more, on a CPU with "
                    f"oneDNN and channels_last on (vocoder {opts.vocoder!r}, device {opts.device!r}); set "
                    "fused_vocoder to auto or false"
                )
        self.window_reach()  # unusable window options stop here, before any item
        self.sample_rate = int(self.tts.fs)
        self.tokenizer = self.tts.preprocess_fn.tokenizer
        self.vocab = set(self.tts.preprocess_fn.token_id_converter.token_list)

    def models(self) -> list[ModelInfo]:
        assert self.local is not None
        infos = [ModelInfo("speech_synthesis", self.local.model_id, self.local.revision, str(self.local.path))]
        if self.vocoder is not None:
            infos.append(ModelInfo("vocoder", self.vocoder.model_id, self.vocoder.revision, str(self.vocoder.path)))
        elif self.text_to_wave:
            infos.append(ModelInfo("vocoder", NO_VOCODER, "n/a"))
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
        with self.precision():
            if self.options.batch_size <= 1 or not batchable(self.tts.tts):
                return [self.synthesize(text) for text in inputs]
            plans = [self.pieces(text) for text in inputs]
            flat = [piece for plan in plans if not isinstance(plan, ItemError) for piece in plan[0]]
            waves = iter(self.synthesize_pieces(flat))
            return [plan if isinstance(plan, ItemError) else self.join(plan, waves) for plan in plans]

    def precision(self) -> contextlib.AbstractContextManager[object]:
        """Autocast to `dtype` (nothing for float32): ESPnet's own modules, unchanged, with their matmuls and
        convolutions in the lower precision; the waves come out as float32 (`.float()` below)."""
        dtype = pick_dtype(self.options.dtype, self.options.device)
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.options.device).type, dtype=dtype)

    def pieces(self, text: str) -> tuple[list[str], list[str]] | ItemError:
        """The sayable pieces of `text` (numbers read, split at punctuation) and the characters dropped."""
        pieces: list[str] = []
        unsayable: list[str] = []
        for piece in split_sentences(normalize_numbers(text), self.options.max_piece_chars):
            clean, dropped = self.sayable(piece)
            unsayable.extend(dropped)
            if clean:
                pieces.append(clean)
        if not pieces:
            return ItemError(f"nothing the TTS model can say in {text[:40]!r} (unsayable: {''.join(unsayable)!r})")
        return pieces, unsayable

    def join(self, plan: tuple[list[str], list[str]], waves: Iterator[np.ndarray]) -> Speech:
        """One item's Speech from the next len(pieces) waves, with a pause between pieces."""
        pieces, unsayable = plan
        pause = np.zeros(int(self.options.pause_seconds * self.sample_rate), dtype=np.float32)
        parts: list[np.ndarray] = []
        for index in range(len(pieces)):
            if index:
                parts.append(pause)
            parts.append(next(waves))
        return Speech(np.concatenate(parts), self.sample_rate, len(pieces), sorted(set(unsayable)))

    @torch.inference_mode()
    def synthesize(self, text: str) -> Speech | ItemError:
        """ESPnet's own path: Text2Speech on each piece in turn."""
        plan = self.pieces(text)
        if isinstance(plan, ItemError):
            return plan
        return self.join(plan, (self.tts(piece)["wav"].float().cpu().numpy().reshape(-1) for piece in plan[0]))

    @torch.inference_mode()
    def synthesize_pieces(self, pieces: Sequence[str]) -> list[np.ndarray]:
        """Waves for many pieces: bucketed by length, each bucket one batched Tacotron2 decode (mels
        denormalized as Text2Speech does) and one vocoder pass."""
        opts = self.options
        model = self.tts.model
        texts = [torch.as_tensor(self.tts.preprocess_fn("<dummy>", {"text": p})["text"]).long() for p in pieces]
        waves: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(pieces)
        cells = self.decoder_cells()
        for group in bucket([len(t) for t in texts], opts.batch_size):
            decoded = tacotron2_inference(
                model.tts, [texts[i] for i in group], opts.threshold, opts.minlenratio, opts.maxlenratio, cells
            )
            feats = [denormalized(model, d.feat_gen) for d in decoded]
            if self.batch_vocoder():
                batch_waves = vocode(self.tts.vocoder, feats, multiple=opts.vocoder_bucket_frames)
            elif reach := self.window_reach():
                batch_waves = windowed_vocode(
                    self.tts.vocoder, feats, opts.vocoder_window_frames, reach, opts.vocoder_bucket_frames
                )
            else:
                batch_waves = bucketed_vocode(self.tts.vocoder, feats, opts.vocoder_bucket_frames)
            for i, wave in zip(group, batch_waves, strict=True):
                waves[i] = wave.float().cpu().numpy().reshape(-1)
        return waves

    def window_reach(self) -> int:
        """With `vocoder_windows` on: the HiFiGAN's reach per side in frames, which windows overlap by (read from
        the generator once); 0 without windows."""
        opts = self.options
        generator = None if self.text_to_wave else batched_hifigan(self.tts.vocoder)
        if not _choice(opts.vocoder_windows, auto=generator is not None and not self.batch_vocoder()):
            return 0
        if generator is None:
            raise ValueError(
                f"vocoder_windows needs a parallel_wavegan HiFiGAN (vocoder {opts.vocoder!r}); set it to auto or false"
            )
        if not self.vocoder_reach:
            with torch.inference_mode():
                self.vocoder_reach = reach_frames(generator)
        check_window(opts.vocoder_window_frames, self.vocoder_reach)
        return self.vocoder_reach

    def pack_lstm(self) -> bool:
        """Whether the batched decoder runs on packed LSTM weights: `packed_lstm` true, or auto where packing
        measured faster (a CPU with oneDNN; in bfloat16 at every size, in float32 from PACK_MIN_UNITS units)."""
        opts = self.options
        dtype = pick_dtype(opts.dtype, opts.device)
        can = packable(opts.device, dtype)
        if opts.packed_lstm.strip().lower() == "auto":  # reads the loaded decoder
            return can and (dtype != torch.float32 or self.tts.tts.dec.lstm[0].hidden_size >= PACK_MIN_UNITS)
        wanted = _choice(opts.packed_lstm, auto=False)  # an explicit value is checked before any model is read
        if wanted and not can:
            raise ValueError(
                f"packed_lstm needs a CPU with oneDNN and float32 or bfloat16; got device {opts.device!r}, "
                f"dtype {opts.dtype!r} (set packed_lstm to auto or false)"
            )
        return wanted

    def decoder_cells(self) -> list[Cell] | None:
        """The packed cells for the current dtype (packed on first use: `dtype` may change between calls), or
        None: the decoder's own modules."""
        if not self.pack_lstm():
            return None
        dtype = pick_dtype(self.options.dtype, self.options.device)
        if dtype not in self.packed:
            self.packed[dtype] = list(packed_cells(self.tts.tts.dec.lstm, dtype, self.options.batch_size))
        return self.packed[dtype]

    def batch_vocoder(self) -> bool:
        return _choice(self.options.batch_vocoder, auto=self.options.device.startswith("cuda"))

    def vocode_channels_last(self) -> bool:
        """Measured on CPUs only: CUDA keeps its layout unless asked (cuDNN's choices are its own)."""
        return _choice(self.options.channels_last, auto=not self.options.device.startswith("cuda"))

    def wave_generators(self) -> list[torch.nn.Module]:
        """The convolutional networks that make the wave: the vocoder, or a text-to-wave model's decoder (VITS's
        HiFiGAN; its other parts stay as ESPnet has them). Griffin-Lim has none."""
        if self.text_to_wave:
            generator = getattr(getattr(self.tts.model.tts, "generator", None), "decoder", None)
        else:
            generator = self.tts.vocoder
        return [generator] if isinstance(generator, torch.nn.Module) else []


NO_VOCODER = "none (text to wave)"
# One LSTMCell step at 8 rows, 2 threads (Intel Xeon with AMX): in float32, packed took 0.061-0.147 ms against
# torch's 0.037-0.138 ms at 32-256 units, and 0.43 / 1.14 ms against 0.70 / 2.57 ms at 512 / 1024 units; in
# bfloat16 packed was faster at every size (0.078 against 0.099 ms at 32 units, 0.72 against 1.09 at 1024).
PACK_MIN_UNITS = 512


def text_to_wave(train_config: Path) -> bool:
    """Whether the model of this config.yaml makes the wave itself: ESPnet's GAN TTS models (VITS, JETS, joint
    text2wav) all do, which is what their `require_vocoder` says; read from the class, before loading weights."""
    import yaml
    from espnet2.gan_tts.abs_gan_tts import AbsGANTTS
    from espnet2.tasks.tts import tts_choices

    with train_config.open(encoding="utf-8") as f:
        cls = tts_choices.get_class(yaml.safe_load(f)["tts"])
    return cls is not None and issubclass(cls, AbsGANTTS)


def _choice(value: str, auto: bool) -> bool:
    """An auto / true / false option: `auto` is the given default."""
    choice = value.strip().lower()
    return auto if choice == "auto" else choice in TRUE_WORDS


def denormalized(model: torch.nn.Module, feat_gen: torch.Tensor) -> torch.Tensor:
    """The vocoder's input, as ESPnetTTSModel.inference and Text2Speech make it (normalize.inverse, in place)."""
    if model.normalize is None:
        return feat_gen
    return model.normalize.inverse(feat_gen.clone()[None])[0][0]


def _is_hanzi(char: str) -> bool:
    """CJK unified ideographs (with extension A and the compatibility block)."""
    code = ord(char)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF
