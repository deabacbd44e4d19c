"""Vocoder convolutions in channels-last layout: the same modules and weights, without a layout copy per layer.

PyTorch computes a Conv1d as a 1 x K conv2d, and for a 3-D input ATen first makes it contiguous (N, C, L) "to avoid
accidentally going through NHWC" (aten/src/ATen/native/Convolution.cpp). On a CPU, oneDNN's convolutions then
copy that input into their own layout and back at every layer. A GAN vocoder runs dozens of convolutions over
tens of thousands of samples at few channels (HiFiGAN's last stage: 32 channels x 300 samples per frame), where
that copy costs as much as the arithmetic. Measured on the full-size CSMSC HiFiGAN (512 channels, 250 frames,
random weights, 2 threads, Intel Xeon with AMX): under bfloat16, 25-40 % of the vocoder's time was aten::copy_,
and computing every layer as a conv2d on channels-last (N, C, 1, L) views took rtf 0.106 -> 0.045 with the same
samples bit for bit; in float32 0.185 -> 0.146 (within 1e-7: another kernel's rounding).

`channels_last_convolutions` changes the class of each plain Conv1d / ConvTranspose1d of a module to the
subclasses below and stores each weight so that its 4-D view is channels-last. Parameters, their names and the
state dict stay as they are; every layer's output has the same values, strided channels-last (the stride is
invisible to elementwise ops, so the next layer reads it without a copy). Under autocast each layer keeps its
weight's cast to the autocast dtype (`compute_weight`) instead of having it cast anew at every call. Layers it
cannot compute this way are left alone: weight-normalized ones (their weight is recomputed at each call), other
padding modes, string padding and subclasses with a forward of their own (causal convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize


def compute_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The layer's weight as its convolution computes with it: under autocast, cast once to the autocast dtype
    and kept while the weight stays as it is. Autocast casts a leaf weight once per autocast region, but the 4-D
    view these layers pass is not a leaf, so it was cast anew at every call: full-size HiFiGAN, bfloat16, five
    pieces of 128-288 frames, 2 threads, 504-516 ms, 483-491 ms with the cast kept, the same samples bit for bit.
    The cast copy costs the weights' size in that dtype (26 MB for the full-size HiFiGAN in bfloat16)."""
    weight: torch.Tensor = layer.weight  # type: ignore[assignment]
    device = weight.device.type
    if weight.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return weight
    dtype = torch.get_autocast_dtype(device)
    key = (dtype, weight.data_ptr(), None if weight.is_inference() else weight._version)
    cached: tuple[object, torch.Tensor] | None = getattr(layer, "_cast_weight", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, weight.detach().to(dtype))  # the strides (channels-last) are kept
        layer._cast_weight = cached
    return cached[1]


class ChannelsLastConv1d(torch.nn.Conv1d):
    """Conv1d computed as a 1 x K conv2d on a channels-last view."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            input.unsqueeze(2),
            compute_weight(self).unsqueeze(2),
            self.bias,
            (1, self.stride[0]),
            (0, self.padding[0]),  # type: ignore[index]
            (1, self.dilation[0]),
            self.groups,
        ).squeeze(2)


class ChannelsLastConvTranspose1d(torch.nn.ConvTranspose1d):
    """ConvTranspose1d computed as a 1 x K transposed conv2d on a channels-last view."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None:  # the output padding is derived from the size asked for: the plain path does it
            return super().forward(input, output_size)
        return F.conv_transpose2d(
            input.unsqueeze(2),
            compute_weight(self).unsqueeze(2),
            self.bias,
            (1, self.stride[0]),
            (0, self.padding[0]),  # type: ignore[index]
            (0, self.output_padding[0]),
            self.groups,
            (1, self.dilation[0]),
        ).squeeze(2)


SWAPS: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    torch.nn.Conv1d: ChannelsLastConv1d,
    torch.nn.ConvTranspose1d: ChannelsLastConvTranspose1d,
}


def convertible(module: torch.nn.Module) -> bool:
    """A plain, zero-padded, numerically padded (Conv|ConvTranspose)1d whose weight is a stored tensor."""
    return (
        type(module) in SWAPS
        and module.padding_mode == "zeros"  # type: ignore[attr-defined]
        and not isinstance(module.padding, str)  # type: ignore[attr-defined]
        and not parametrize.is_parametrized(module)
        and not hasattr(module, "weight_g")  # torch.nn.utils.weight_norm's pre-hook recomputes the weight
    )


def channels_last_convolutions(module: torch.nn.Module) -> int:
    """Compute every convertible 1-D convolution of `module` on channels-last views; returns how many."""
    count = 0
    for layer in module.modules():
        if not convertible(layer):
            continue
        weight = layer.weight  # type: ignore[union-attr]
        with torch.no_grad():  # (O, I, K) strided (I*K, 1, I): its 4-D view (O, I, 1, K) is channels-last
            weight.data = weight.data.transpose(1, 2).contiguous().transpose(1, 2)
        layer.__class__ = SWAPS[type(layer)]
        count += 1
    return count
