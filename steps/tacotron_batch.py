"""Batched Tacotron2 inference and batched HiFiGAN vocoding on ESPnet's and parallel_wavegan's own modules.

ESPnet's Text2Speech decodes Tacotron2 one utterance at a time. The decoder step (two LSTM cells and a
projection) costs little more at batch 8 than at batch 1 on a CPU, so this module runs the same modules and
weights over a padded batch and reproduces, item by item, what `Tacotron2.inference` computes:

- the text gets <sos/eos> appended, as `Tacotron2.inference` does, then is padded into (B, T);
- the encoder convolutions see zero padding beyond each item's end, as a lone utterance does, because every
  layer's input is masked (BatchNorm, ReLU and bias would otherwise leak values into the padding that the
  next kernel reads); the BLSTM runs on a packed sequence, so padding never enters it;
- AttLoc is ESPnet's own, given the per-item lengths, so its softmax is masked per item and the location
  convolution reads zero attention weight in the padding;
- the decoder steps the whole batch; each item stops at the first step where (a stop probability reaches
  `threshold` or the step count reaches int(len * maxlenratio)) and the step count is at least
  int(len * minlenratio), exactly `Decoder.inference`'s rule (len counts <sos/eos); finished items drop out
  of the batch, so the remaining steps cost only the items still speaking;
- the postnet runs once on the padded batch, every layer's input masked like the encoder's.

Under torch.autocast (the stage's bfloat16 `dtype`) every layer sees the dtype it sees in ESPnet's own path:
masks are cast to the activation's dtype, so the encoder's BLSTM and the postnet get bfloat16 inputs, and the
decoder's outputs are gathered and the postnet added in bfloat16, as ESPnet's concatenated outputs are. A lone
item then gives Text2Speech's bfloat16 mels bit for bit (with float32 masks and buffers it gave more precise
mels, 1.2e-02 away: one bfloat16 step); in a batch, a kernel may still round differently by batch size.

The prenet applies dropout at inference (ESPnet, as in the paper), so with dropout on, batched and
one-at-a-time outputs are two samples of the same distribution; `prenet_dropout(tts, 0.0)` turns it off
for equivalence checks.

HiFiGAN is fully convolutional with length-preserving padding and exact integer upsampling, so a padded batch
gives each item the same samples as a lone call once every convolution's input is masked beyond the item's
end (forward pre-hooks, at each layer's own time resolution); each wave is then cut at frames x hop. The same
masks let a lone piece be padded to a length bucket (`bucketed_vocode`) with its own samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# An LSTMCell's step: (x, (h, c)) -> (h', c').
Cell = Callable[[torch.Tensor, tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Decoded:
    """One utterance's Tacotron2 output: `feat_gen` (L, odim), normalized as ESPnet returns it, and `prob`."""

    feat_gen: torch.Tensor
    prob: torch.Tensor


def batchable(tts: torch.nn.Module) -> bool:
    """Whether `tts` (ESPnetTTSModel.tts) is a Tacotron2 this module decodes exactly: location attention, no
    speaker, language or style conditioning (the CSMSC recipe)."""
    from espnet.nets.pytorch_backend.rnn.attentions import AttLoc
    from espnet2.tts.tacotron2 import Tacotron2

    return (
        isinstance(tts, Tacotron2)
        and isinstance(tts.dec.att, AttLoc)
        and not tts.use_gst
        and tts.spks is None
        and tts.langs is None
        and tts.spk_embed_dim is None
    )


@contextmanager
def prenet_dropout(tts: torch.nn.Module, rate: float) -> Iterator[None]:
    """Set the decoder prenet's inference dropout (ESPnet applies it always) for the duration of the block."""
    prenet = tts.dec.prenet
    if prenet is None:
        yield
        return
    saved = prenet.dropout_rate
    prenet.dropout_rate = rate
    try:
        yield
    finally:
        prenet.dropout_rate = saved


def valid_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool, True inside each item."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def encode(enc: torch.nn.Module, xs: torch.Tensor, ilens: torch.Tensor) -> torch.Tensor:
    """Encoder.forward over a padded batch (B, T) with every layer's input masked: (B, T, eunits)."""
    mask = valid_mask(ilens, xs.size(1))[:, None, :]
    x = enc.embed(xs).transpose(1, 2)
    for conv in enc.convs or []:
        x = x * mask.to(x.dtype)
        x = (x + conv(x)) if enc.use_residual else conv(x)
    x = x * mask.to(x.dtype)
    if enc.blstm is None:
        return x.transpose(1, 2)
    packed = pack_padded_sequence(x.transpose(1, 2), ilens.cpu(), batch_first=True, enforce_sorted=False)
    enc.blstm.flatten_parameters()
    out, _ = enc.blstm(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=xs.size(1))[0]


def postnet(dec: torch.nn.Module, before: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """before + Postnet(before) on (B, odim, L), each layer's input masked as a lone item's zero padding."""
    if dec.postnet is None:
        return before
    mask = valid_mask(lengths, before.size(2))[:, None, :]
    x = before * mask.to(before.dtype)
    for layer in dec.postnet.postnet:
        x = layer(x)
        x = x * mask.to(x.dtype)
    return before + x


def decode(
    dec: torch.nn.Module,
    hs: torch.Tensor,
    ilens: torch.Tensor,
    threshold: float,
    minlenratio: float,
    maxlenratio: float,
    cells: Sequence[Cell] | None = None,
) -> list[Decoded]:
    """Decoder.inference for every item of (B, T, C), the batch stepping together until each item stops.
    `cells` replace the decoder's LSTM cells' calls (steps.packed_lstm: the same step on packed weights)."""
    lstm: Sequence[Cell] = list(dec.lstm) if cells is None else cells
    batch, r, odim = hs.size(0), dec.reduction_factor, dec.odim
    maxlens = (ilens.to(torch.float64) * maxlenratio).long()  # int(len * ratio), as ESPnet truncates
    minlens = (ilens.to(torch.float64) * minlenratio).long()
    # An item stops by step max(maxlen, minlen) at the latest (rounded up to whole steps of r frames).
    limit = int(torch.maximum(maxlens, minlens).max()) + r
    # Filled in the dtype the steps produce (bfloat16 under autocast), as ESPnet's concatenated outputs are.
    outs: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    lengths = torch.zeros(batch, dtype=torch.long)

    active = torch.arange(batch)
    z = [dec._zero_state(hs) for _ in dec.lstm]
    c = [dec._zero_state(hs) for _ in dec.lstm]
    prev_out = hs.new_zeros(batch, odim)
    prev_att_w: torch.Tensor | None = None
    hs_a, lens_a = hs, ilens
    dec.att.reset()
    idx = 0
    while len(active):
        idx += r
        att_c, att_w = dec.att(hs_a, lens_a.tolist(), z[0], prev_att_w)
        prenet_out = dec.prenet(prev_out) if dec.prenet is not None else prev_out
        z[0], c[0] = lstm[0](torch.cat([att_c, prenet_out], dim=1), (z[0], c[0]))
        for i in range(1, len(lstm)):
            z[i], c[i] = lstm[i](z[i - 1], (z[i], c[i]))
        zcs = torch.cat([z[-1], att_c], dim=1) if dec.use_concate else z[-1]
        out = dec.feat_out(zcs).view(len(active), odim, -1)  # (n, odim, r)
        prob = torch.sigmoid(dec.prob_out(zcs))  # (n, r)
        if outs is None or probs is None:
            outs, probs = out.new_zeros(batch, odim, limit + r), prob.new_zeros(batch, limit + r)
        outs[active, :, idx - r : idx] = out
        probs[active, idx - r : idx] = prob
        prev_out = out[:, :, -1] if dec.output_activation_fn is None else dec.output_activation_fn(out[:, :, -1])
        prev_att_w = prev_att_w + att_w if dec.cumulate_att_w and prev_att_w is not None else att_w

        # on the CPU, beside `active` and `lengths` (on a GPU a mask there could not index them)
        stop = (((prob >= threshold).any(dim=1) | (idx >= maxlens[active])) & (idx >= minlens[active])).cpu()
        if bool(stop.any()):
            lengths[active[stop]] = idx
            keep = ~stop
            active, lens_a = active[keep], lens_a[keep]
            # AttLoc sizes its mask by the longest length it is given: cut the encoder states and weights to it
            # (beyond every remaining item's end the weights are zero, so the location conv reads the same).
            width = int(lens_a.max()) if len(active) else 0
            hs_a, prev_att_w = hs_a[keep, :width], prev_att_w[keep, :width]
            z, c = [t[keep] for t in z], [t[keep] for t in c]
            prev_out = prev_out[keep]
            dec.att.reset()  # it caches the projected encoder states and the mask of the old batch

    assert outs is not None and probs is not None
    width = int(lengths.max())
    # lengths live on the CPU beside `active`; the postnet's masks are made on the outputs' device
    after = postnet(dec, outs[:, :, :width], lengths.to(outs.device)).transpose(1, 2)  # (B, L, odim)
    if dec.output_activation_fn is not None:
        after = dec.output_activation_fn(after)
    return [Decoded(after[i, : lengths[i]], probs[i, : lengths[i]]) for i in range(batch)]


def tacotron2_inference(
    tts: torch.nn.Module,
    texts: Sequence[torch.Tensor],
    threshold: float = 0.5,
    minlenratio: float = 0.0,
    maxlenratio: float = 10.0,
    cells: Sequence[Cell] | None = None,
) -> list[Decoded]:
    """Tacotron2.inference (no teacher forcing, no attention constraint) for many token sequences at once."""
    device = next(tts.parameters()).device
    ilens = torch.tensor([len(t) + 1 for t in texts], device=device)  # + <sos/eos>
    xs = torch.zeros(len(texts), int(ilens.max()), dtype=torch.long, device=device)
    for i, text in enumerate(texts):
        xs[i, : len(text)] = text.to(device)
        xs[i, len(text)] = tts.eos
    hs = encode(tts.enc, xs, ilens)
    return decode(tts.dec, hs, ilens, threshold, minlenratio, maxlenratio, cells)


def batched_hifigan(vocoder: torch.nn.Module) -> torch.nn.Module | None:
    """The HiFiGAN generator inside ESPnet's parallel_wavegan wrapper when it can be batched exactly, else None
    (Griffin-Lim, reflection-padded MelGANs and noise-driven Parallel WaveGAN are vocoded one at a time)."""
    from espnet2.tts.utils.parallel_wavegan_pretrained_vocoder import ParallelWaveGANPretrainedVocoder
    from parallel_wavegan.models import HiFiGANGenerator

    if isinstance(vocoder, ParallelWaveGANPretrainedVocoder) and isinstance(vocoder.vocoder, HiFiGANGenerator):
        return None if vocoder.vocoder.use_causal_conv else vocoder.vocoder
    return None


@contextmanager
def masked_convolutions(generator: torch.nn.Module, frames: Sequence[int], width: int) -> Iterator[None]:
    """Zero every convolution's input beyond each item's end, at the layer's own time resolution (a whole
    multiple of `width` frames: HiFiGAN's upsampling is exact), so each item sees a lone call's zero padding.

    The padding is zeroed in place, on a narrow view per item: only positions beyond an item's end change,
    which no output sample of the item reads except through a convolution, whose input is zeroed there again.
    (Multiplying by a mask made a new tensor per layer: full-size HiFiGAN, 8 lone pieces padded to 32-frame
    buckets, bfloat16, 2 threads: 0.92 s multiplying, 0.75 s zeroing in place, 0.71 s with no masks at all.)"""

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        scale, rest = divmod(x.size(-1), width)
        assert rest == 0, f"a layer's length {x.size(-1)} is not a multiple of {width} frames"
        for i, end in enumerate(frames):
            if end * scale < x.size(-1):
                x[i, :, end * scale :].zero_()

    convs = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    handles = [m.register_forward_pre_hook(hook) for m in convs]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def vocode(
    vocoder: torch.nn.Module, feats: Sequence[torch.Tensor], masked: bool = True, multiple: int = 1
) -> list[torch.Tensor]:
    """Waves for (L_i, mels) features: one generator call for a HiFiGAN, else one vocoder call per item.

    The batch is padded to its longest item rounded up to `multiple` frames (a lone item too, when `multiple`
    > 1): a CPU process then meets a few input lengths, not one per utterance, and oneDNN builds convolution
    primitives per length (see bucketed_vocode). `masked=False` runs the padded batch plainly: then the last
    samples of a shorter item, within the generator's receptive field of its end, see the padding (kept for
    the tests that show why masks matter)."""
    generator = batched_hifigan(vocoder)
    if generator is None or (len(feats) == 1 and multiple <= 1):
        return [vocoder(f).view(-1) for f in feats]
    frames = [len(f) for f in feats]
    width = -(-max(frames) // max(multiple, 1)) * max(multiple, 1)
    batch = feats[0].new_zeros(len(feats), width, feats[0].size(1))
    for i, f in enumerate(feats):
        batch[i, : len(f)] = (f - generator.mean) / generator.scale if vocoder.normalize_before else f
    with masked_convolutions(generator, frames, width) if masked else _nothing():
        waves = generator(batch.transpose(1, 2))  # (B, 1, width * hop)
    hop = waves.size(-1) // width
    return [waves[i, 0, : frames[i] * hop] for i in range(len(feats))]


def bucketed_vocode(vocoder: torch.nn.Module, feats: Sequence[torch.Tensor], multiple: int) -> list[torch.Tensor]:
    """One vocoder call per item, each padded to a whole number of `multiple` frames (masked: the samples of a
    lone call). oneDNN builds its convolution primitives per input length, and its cache (1,024 by default; a
    HiFiGAN has 78 convolutions) keeps about a dozen lengths: measured on the full-size HiFiGAN, bfloat16, a length
    the process had not seen took 2.5-4.5x as long as one it had, and 30 unseen lengths took 18.4 s exact
    against 12.3 s padded to 32-frame buckets. `multiple` 1 calls the vocoder on the exact lengths."""
    return [vocode(vocoder, [f], multiple=multiple)[0] for f in feats]


def windowed_vocode(
    vocoder: torch.nn.Module, feats: Sequence[torch.Tensor], window: int, reach: int, multiple: int
) -> list[torch.Tensor]:
    """As bucketed_vocode, but a piece longer than `window` frames is vocoded in windows of exactly `window` of its
    frames, overlapping so that every kept sample lies at least `reach` frames (reach_frames) from a window edge
    that is not the piece's own: each sample is computed from the same inputs as in a lone call over the whole
    piece, and a process meets one long input length instead of one per bucket. Why: with AMX, oneDNN's first
    call at a new length cost 6-10x a call at a length it had seen (full-size HiFiGAN, bfloat16: 7.3 s against
    1.2 s at 992 frames, keeping 0.65-0.9 MB per frame of length), and its cache keeps about 12 lengths of a
    HiFiGAN, fewer than the 31 buckets that real speech meets."""
    check_window(window, reach)
    waves = []
    for feat in feats:
        if len(feat) <= window:
            waves.append(vocode(vocoder, [feat], multiple=multiple)[0])
            continue
        parts, kept = [], 0
        while kept < len(feat):
            first = min(max(0, kept - reach), len(feat) - window)
            end = first + window
            keep = len(feat) if end == len(feat) else end - reach
            wave = vocode(vocoder, [feat[first:end]])[0]
            hop = wave.numel() // window
            parts.append(wave[(kept - first) * hop : (keep - first) * hop])
            kept = keep
        waves.append(torch.cat(parts))
    return waves


def check_window(window: int, reach: int) -> None:
    """Windows must leave room between the reaches at their two ends, or no sample of a window could be kept."""
    if window <= 2 * reach:
        raise ValueError(f"vocoder windows of {window} frames leave nothing between two reaches of {reach} frames")


def reach_frames(generator: torch.nn.Module, frames: int = 8) -> int:
    """How many input frames on either side can move an output sample: each convolution's reach to either side
    at its own resolution (read on a probe call), summed along the path, where the residual blocks of a HiFiGAN
    stage, which read the same input side by side and are averaged, count as the farthest of them."""
    seen, total = probe_lengths(generator, frames)
    lengths = dict(reversed(seen))  # a layer called twice keeps its first call's length
    convs = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    if len(lengths) < len(convs):  # a convolution that ran past its hooks would be missing from the sum
        raise RuntimeError(f"{len(convs) - len(lengths)} of the generator's convolutions were not seen on the probe")

    def samples(module: torch.nn.Module) -> float:  # its reach, in output samples
        k, d, p = module.kernel_size[0], module.dilation[0], module.padding[0]
        if isinstance(module, torch.nn.ConvTranspose1d):  # output o reads inputs (o + p - d(k - 1)) / s .. (o + p) / s
            units = max(p, d * (k - 1) - p) / module.stride[0] + 1
        else:
            units = d * (k - 1) / 2
        return units * total / lengths[module]

    blocks, per = getattr(generator, "blocks", None) or [], getattr(generator, "num_blocks", 0) or 1
    inside = {m for block in blocks for m in block.modules()}
    field = sum(samples(m) for m in convs if m not in inside)
    each = [sum(samples(m) for m in block.modules() if m in lengths) for block in blocks]
    field += sum(max(each[i : i + per]) for i in range(0, len(each), per))
    return math.ceil(field / (total // frames))


def receptive_field(generator: torch.nn.Module, frames: int = 8) -> int:
    """An upper bound on how many output samples before an item's end can see what lies beyond it: the sum,
    over every convolution, of its right-hand reach in output samples (measured on a probe call, so each
    layer's resolution is read, not assumed). Without masks, batched waves may differ only there."""
    reach, total = probe_lengths(generator, frames)
    field = 0
    for module, length in reach:
        if isinstance(module, torch.nn.ConvTranspose1d):  # output o reads inputs up to (o + padding) // stride
            field += module.padding[0] * total // (length * module.stride[0])
        else:
            field += module.dilation[0] * (module.kernel_size[0] - 1) // 2 * total // length
    return field


def probe_lengths(generator: torch.nn.Module, frames: int) -> tuple[list[tuple[torch.nn.Module, int]], int]:
    """Each convolution the generator calls on `frames` zero frames, with its input length, in call order, and
    the output's length in samples: the layers' resolutions, read rather than assumed."""
    seen: list[tuple[torch.nn.Module, int]] = []

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append((module, args[0].size(-1)))

    convs = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    handles = [m.register_forward_pre_hook(hook) for m in convs]
    try:
        param = next(generator.parameters())
        total = generator(param.new_zeros(1, convs[0].in_channels, frames)).size(-1)
    finally:
        for handle in handles:
            handle.remove()
    return seen, total


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def bucket(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most `batch_size`, longest first, so each batch pads little."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), max(batch_size, 1))]
