"""HiFiGAN's residual blocks with their LeakyReLUs and residual additions inside the convolutions (CPU).

A HiFiGAN residual block runs, three times over: x + conv2(leaky(conv1(leaky(x)))). Each LeakyReLU and each
addition is a pass of its own over activations of up to 512 channels x the frames, or 32 channels x 300 samples
per frame at the last stage. oneDNN can apply an activation, or add a tensor, to a convolution's output as it
writes it ("post-ops"), and PyTorch exposes that for its CPU compiler (torch.compile's mkldnn fusion pass) as
`torch.ops.mkldnn._convolution_pointwise`. Here the LeakyReLU after conv1 and the residual addition after conv2 are
computed that way (in place into the running sum), and the LeakyReLU of a stage's input, which each of the stage's
three blocks applied anew to the same tensor, is computed once. Measured on the full-size CSMSC HiFiGAN (random
weights, six pieces of 128-288 frames one at a time, 2 threads, Intel Xeon with AMX, channels-last layers):
bfloat16 544-572 ms -> 503-512 ms, float32 1863-1877 ms -> 1792-1801 ms.

The same layers, weights and order of layers. The values: in float32 within 1e-7 of the plain forward (another
kernel's rounding); in bfloat16 the fused activation and addition act on the convolution's float32 accumulator
before the one rounding to bfloat16, where the plain forward rounds, then applies them, then rounds again, so
samples may differ by a unit or two of bfloat16's last place. Every path of the stage (ESPnet's one piece at a
time, the batched and the bucketed one) calls the same forward, so they still agree with each other.

Only where it applies: a CPU, not under autograd, every residual-block convolution channels-last
(steps.channels_last), LeakyReLU activations, and no forward hooks on them (their forward pre-hooks, such as the
batched vocoder's masks, are run as calling the layer would); otherwise the generator's own forward runs.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

from steps.channels_last import ChannelsLastConv1d, compute_weight

# Stages with fewer channels keep their blocks' own forward: at 2-16 channels (the test fixtures' HiFiGAN) oneDNN's
# bfloat16 kernels with post-ops ran 1.8x slower than the plain layers.
MIN_CHANNELS = 32


def fusable(generator: torch.nn.Module) -> bool:
    """A parallel_wavegan HiFiGANGenerator (not causal) whose residual blocks are LeakyReLU -> channels-last
    Conv1d pairs, on a CPU with oneDNN."""
    from parallel_wavegan.models import HiFiGANGenerator

    if not isinstance(generator, HiFiGANGenerator) or generator.use_causal_conv:
        return False
    if not torch.backends.mkldnn.is_available() or next(generator.parameters()).device.type != "cpu":
        return False
    for block in generator.blocks:
        if not getattr(block, "use_additional_convs", False):
            return False
        for pair in (*block.convs1, *block.convs2):
            if len(pair) != 2 or type(pair[0]) is not torch.nn.LeakyReLU or type(pair[1]) is not ChannelsLastConv1d:
                return False
    return True


def fuse(generator: torch.nn.Module) -> int:
    """Give a HiFiGAN generator (steps.tacotron_batch.batched_hifigan finds it in ESPnet's vocoder wrapper) the
    fused forward, once; returns how many residual blocks it fuses, 0 where it does not apply."""
    if not fusable(generator):
        return 0
    fused = sum(map(wide, generator.blocks))
    if fused and not is_fused(generator):
        generator.forward = types.MethodType(fused_forward, generator)
    return fused


def wide(block: torch.nn.Module) -> bool:
    """Whether a residual block has the channels to be fused (MIN_CHANNELS)."""
    return block.convs1[0][1].in_channels >= MIN_CHANNELS


def is_fused(generator: torch.nn.Module) -> bool:
    return getattr(generator.__dict__.get("forward"), "__func__", None) is fused_forward


def fused_forward(self: torch.nn.Module, c: torch.Tensor) -> torch.Tensor:
    """HiFiGANGenerator.forward, with each residual block computed by `_block` (the generator's own forward
    where autograd is recording, under float16 autocast, or where hooks other than plain forward pre-hooks
    would watch a block's layers)."""
    lower = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    if torch.is_grad_enabled() or lower not in (None, torch.bfloat16) or _watched(self):
        return type(self).forward(self, c)
    c = self.input_conv(c)
    for i in range(self.num_upsamples):
        c = self.upsamples[i](c)
        # Each block starts with leaky(c): computed once for the three (the same values, one pass instead of three).
        blocks = self.blocks[i * self.num_blocks : (i + 1) * self.num_blocks]
        act = F.leaky_relu(c, blocks[0].convs1[0][0].negative_slope) if wide(blocks[0]) else None
        total: torch.Tensor | None = None
        for block in blocks:
            out = block(c) if act is None else _block(block, c, act)
            total = out if total is None else total.add_(out)
        assert total is not None
        c = total.div_(self.num_blocks)
    return self.output_conv(c)


def _watched(generator: torch.nn.Module) -> bool:
    """Hooks that a fused block could not run as a layer call would: forward hooks, pre-hooks taking keyword
    arguments, or hooks registered for every module."""
    from torch.nn.modules import module

    if module._global_forward_hooks or module._global_forward_pre_hooks:
        return True
    convs = [pair[1] for block in generator.blocks for pair in (*block.convs1, *block.convs2)]
    return any(conv._forward_hooks or conv._forward_pre_hooks_with_kwargs for conv in convs)


def _block(block: torch.nn.Module, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """HiFiGANResidualBlock.forward: for each dilation, x = x + conv2(leaky(conv1(leaky(x)))), `act` being
    leaky(x) for the first. The block's input `x` is read, never written (the stage's other blocks read it too),
    so the first addition is a pass of its own (oneDNN's out-of-place addition copies `x` first: slower)."""
    for idx in range(len(block.convs1)):
        if idx:
            act = F.leaky_relu(x, block.convs1[idx][0].negative_slope)
        hidden = _conv(block.convs1[idx][1], act, "leaky_relu", [block.convs2[idx][0].negative_slope])
        x = _conv(block.convs2[idx][1], hidden, residual=x) if idx else _conv(block.convs2[idx][1], hidden).add_(x)
    return x


def _conv(
    layer: torch.nn.Module,
    x: torch.Tensor,
    activation: str = "none",
    scalars: list[float] | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The channels-last Conv1d `layer` on (B, C, L) `x` as oneDNN computes it with a post-op: an activation,
    or the output added into `residual` (in place). The layer's forward pre-hooks run first."""
    x = _pre_hooks(layer, x)
    weight = compute_weight(layer)  # the autocast dtype's cast, kept (steps.channels_last)
    x = x.to(weight.dtype)
    bias = None if layer.bias is None else layer.bias.to(weight.dtype)
    geometry = ([0, layer.padding[0]], [1, layer.stride[0]], [1, layer.dilation[0]], layer.groups)
    mkldnn = torch.ops.mkldnn
    if residual is None:
        out = mkldnn._convolution_pointwise(
            x.unsqueeze(2), weight.unsqueeze(2), bias, *geometry, activation, scalars or [], None
        )
    else:
        out = mkldnn._convolution_pointwise_.binary(
            residual.unsqueeze(2), x.unsqueeze(2), weight.unsqueeze(2), bias, *geometry, "add", None, None, [], None
        )
    return out.squeeze(2)


def _pre_hooks(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run `layer`'s forward pre-hooks on its input as torch.nn.Module.__call__ would."""
    hooks: dict[int, Callable[..., object]] = layer._forward_pre_hooks
    for hook in hooks.values():
        result = hook(layer, (x,))
        if result is not None:
            x = result[0] if isinstance(result, tuple) else result  # type: ignore[assignment]
    return x
