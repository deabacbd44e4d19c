"""Vocoder convolutions on channels-last views (steps.channels_last): the same outputs from the same parameters,
on the layers it can compute that way, on parallel_wavegan's full-size HiFiGAN and through the stage's vocoders."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from registry.fixtures import MB_MELGAN_TAG, FixtureCaches
from steps.channels_last import (
    ChannelsLastConv1d,
    ChannelsLastConvTranspose1d,
    channels_last_convolutions,
    compute_weight,
)
from steps.speech_synthesis import EspnetSynthesizer, Speech
from steps.tacotron_batch import prenet_dropout
from tests.configs import tts_stage


class CausalConv1d(torch.nn.Conv1d):
    """A subclass with a forward of its own (left padding only): must be left alone."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nn.functional.pad(input, (self.kernel_size[0] - 1, 0)))


def layers() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv1d(6, 16, 7, padding=3),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Conv1d(16, 16, 3, dilation=5, padding=5, groups=4),
        torch.nn.ConvTranspose1d(16, 8, 10, stride=5, padding=3, output_padding=1),
        torch.nn.Conv1d(8, 8, 4, stride=2, padding=1, bias=False),
        torch.nn.utils.weight_norm(torch.nn.Conv1d(8, 8, 3, padding=1)),  # weight recomputed at each call
        torch.nn.Conv1d(8, 8, 3, padding=1, padding_mode="reflect"),
        CausalConv1d(8, 4, 3),
        torch.nn.Conv1d(4, 4, 3, padding="same"),
    )


def test_convertible_layers_give_the_same_outputs_from_the_same_parameters() -> None:
    plain, fast = layers().eval(), layers().eval()  # seeded: the same parameters
    assert channels_last_convolutions(fast) == 4  # the two Conv1d, the ConvTranspose1d, the bias-free strided one
    assert channels_last_convolutions(fast) == 0  # converted layers are not converted twice
    kinds = [type(m) for m in fast]
    assert kinds[0] is kinds[2] is kinds[4] is ChannelsLastConv1d and kinds[3] is ChannelsLastConvTranspose1d
    assert kinds[5] is torch.nn.Conv1d and kinds[6] is torch.nn.Conv1d and kinds[7] is CausalConv1d
    assert kinds[8] is torch.nn.Conv1d
    theirs, ours = plain.state_dict(), fast.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    x = torch.randn(3, 6, 41)
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
        hidden = fast[:3](x)
    assert got.shape == expected.shape and float((got - expected).abs().max()) <= 1e-5
    assert hidden.stride(1) == 1  # channels-last: the next layer reads it without a layout copy


def test_channels_last_full_size_hifigan_makes_the_same_samples() -> None:
    """parallel_wavegan's HiFiGAN at the CSMSC recipe's widths (512 channels), weight norm removed as ESPnet's
    vocoder wrapper does, in float32 and under bfloat16 autocast (the stage's fast CPU dtype)."""
    from resources.compat import patch_scipy_kaiser

    patch_scipy_kaiser()  # before parallel_wavegan.models, which imports scipy.signal.kaiser
    from parallel_wavegan.models import HiFiGANGenerator

    from registry.fixtures.vocoder import HIFIGAN_TAG, config_for

    torch.manual_seed(0)
    plain = HiFiGANGenerator(**config_for(HIFIGAN_TAG, full=True)["generator_params"]).eval()
    plain.remove_weight_norm()
    fast = copy.deepcopy(plain)
    convolutions = sum(isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) for m in plain.modules())
    assert channels_last_convolutions(fast) == convolutions  # every layer of HiFiGAN
    mel = torch.randn(1, 80, 24)
    with torch.inference_mode():
        expected, got = plain(mel), fast(mel)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected_bf16, got_bf16 = plain(mel), fast(mel)
    assert got.shape == expected.shape == (1, 1, 24 * 300)
    assert float((got - expected).abs().max()) <= 1e-5
    assert got_bf16.dtype == torch.bfloat16 and got_bf16.shape == expected_bf16.shape
    # bfloat16 kernels may round differently by layout; the wave stays bfloat16's distance from float32's
    assert float((got_bf16.float() - expected_bf16.float()).abs().max()) <= 2 * float(
        (expected_bf16.float() - expected).abs().max()
    )


def test_under_autocast_a_layer_casts_its_weight_once_and_again_after_it_changes() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Conv1d(8, 16, 5, padding=2)
    channels_last_convolutions(layer)
    x = torch.randn(2, 8, 30)

    def autocasts_own() -> torch.Tensor:  # the forward before the cast was kept: autocast casts the 4-D view
        return torch.nn.functional.conv2d(x.unsqueeze(2), layer.weight.unsqueeze(2), layer.bias, 1, (0, 2)).squeeze(2)

    assert compute_weight(layer) is layer.weight  # float32: the weight itself
    for _ in range(2):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            cast = compute_weight(layer)
            assert cast.dtype == torch.bfloat16 and compute_weight(layer) is cast  # cast once
            assert torch.equal(cast, layer.weight.to(torch.bfloat16)) and cast.stride() == layer.weight.stride()
            ours, theirs = layer(x), autocasts_own()
        assert ours.dtype == theirs.dtype == torch.bfloat16 and torch.equal(ours, theirs)
        with torch.no_grad():
            layer.weight.mul_(-2.0)  # a changed weight is cast again
        assert compute_weight(layer) is layer.weight


@pytest.mark.parametrize("vocoder", ["parallel_wavegan/csmsc_hifigan.v1", f"parallel_wavegan/{MB_MELGAN_TAG}"])
def test_the_stage_vocodes_channels_last_on_a_cpu_with_the_same_waves(
    fixture_caches: FixtureCaches, vocoder: str
) -> None:
    items = ["卡尔普陪外孙玩滑梯。你好！", "我有三只猫"]
    fast, plain = tts_stage(vocoder=vocoder), tts_stage(vocoder=vocoder, channels_last="false")
    assert fast.options.channels_last == "auto" and fast.channels_last_layers > 0 and plain.channels_last_layers == 0
    assert any(isinstance(m, ChannelsLastConv1d) for m in fast.tts.vocoder.modules())
    assert not any(isinstance(m, ChannelsLastConv1d) for m in plain.tts.vocoder.modules())
    outputs = []
    for stage in (fast, plain):
        with prenet_dropout(stage.tts.tts, 0.0):
            outputs.append([s for s in stage.process(items) if isinstance(s, Speech)])
    for ours, theirs in zip(*outputs, strict=True):
        assert ours.samples.shape == theirs.samples.shape
        assert float(np.abs(ours.samples - theirs.samples).max()) <= 1e-5
    assert len(outputs[0]) == len(items)


def test_channels_last_is_the_cpu_default_and_an_option() -> None:
    from steps.speech_synthesis import SpeechSynthesisOptions

    def chosen(**changes: str) -> bool:
        return EspnetSynthesizer(SpeechSynthesisOptions(**changes)).vocode_channels_last()  # no model read

    assert chosen() and chosen(device="cpu", channels_last="auto") and chosen(device="cuda", channels_last="true")
    assert not chosen(device="cuda") and not chosen(channels_last="false")
