"""HiFiGAN with its LeakyReLUs and residual additions inside the convolutions (steps.fused_hifigan): the same
waves as the generator's own forward, on parallel_wavegan's full-size HiFiGAN, with the batched vocoder's masks."""

from __future__ import annotations

import copy

import pytest
import torch

from registry.fixtures import FixtureCaches
from steps.channels_last import channels_last_convolutions
from steps.fused_hifigan import MIN_CHANNELS, fuse, is_fused
from steps.tacotron_batch import vocode


def full_size_hifigan() -> tuple[torch.nn.Module, torch.nn.Module]:
    """parallel_wavegan's HiFiGAN at the CSMSC recipe's widths (512 channels down to 32), weight norm removed
    as ESPnet's vocoder wrapper does, channels-last as the stage computes it on a CPU: (plain, fused)."""
    from resources.compat import patch_scipy_kaiser

    patch_scipy_kaiser()  # before parallel_wavegan.models, which imports scipy.signal.kaiser
    from parallel_wavegan.models import HiFiGANGenerator

    from registry.fixtures.vocoder import HIFIGAN_TAG, config_for

    torch.manual_seed(0)
    plain = HiFiGANGenerator(**config_for(HIFIGAN_TAG, full=True)["generator_params"]).eval()
    plain.remove_weight_norm()
    channels_last_convolutions(plain)
    fused = copy.deepcopy(plain)
    assert fuse(fused) == len(fused.blocks) == 12  # every stage has 32 channels or more
    assert fuse(fused) == 12 and is_fused(fused) and not is_fused(plain)
    return plain, fused


def fused_kernels(run: object) -> int:
    """How many oneDNN convolutions with post-ops `run` called."""
    with torch.profiler.profile() as prof:
        run()  # type: ignore[operator]
    return sum(e.count for e in prof.key_averages() if e.key.startswith("mkldnn::_convolution_pointwise"))


def test_fused_hifigan_makes_the_generators_samples() -> None:
    plain, fused = full_size_hifigan()
    mel = torch.randn(2, 80, 24)
    with torch.inference_mode():
        expected, got = plain(mel), fused(mel)
        assert fused_kernels(lambda: fused(mel)) == 12 * 3 * 2 and fused_kernels(lambda: plain(mel)) == 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected_bf16, got_bf16 = plain(mel), fused(mel)
    assert got.shape == expected.shape == (2, 1, 24 * 300)
    assert float((got - expected).abs().max()) <= 1e-6
    assert got_bf16.dtype == torch.bfloat16 and got_bf16.shape == expected_bf16.shape
    # bfloat16: rounded once after the fused activation / addition instead of twice; the wave stays within
    # bfloat16's own distance from float32's
    distance = float((got_bf16.float() - expected_bf16.float()).abs().max())
    assert distance <= float((expected_bf16.float() - expected).abs().max())


def test_the_batched_vocoders_masks_still_give_each_piece_its_lone_samples() -> None:
    """The masks are forward pre-hooks on the convolutions; the fused forward runs them as a call would."""
    from espnet2.tts.utils.parallel_wavegan_pretrained_vocoder import ParallelWaveGANPretrainedVocoder

    _, fused = full_size_hifigan()
    vocoder = ParallelWaveGANPretrainedVocoder.__new__(ParallelWaveGANPretrainedVocoder)
    torch.nn.Module.__init__(vocoder)
    vocoder.vocoder, vocoder.normalize_before = fused, False
    feats = [torch.randn(n, 80) for n in (19, 32, 7)]
    with torch.inference_mode():
        lone = [fused(f.t()[None]).view(-1) for f in feats]
        batched = vocode(vocoder, feats, multiple=16)
        bucketed = [vocode(vocoder, [f], multiple=16)[0] for f in feats]
        unmasked = vocode(vocoder, feats, masked=False, multiple=16)
    for ours, alone, one in zip(batched, lone, bucketed, strict=True):
        assert ours.shape == alone.shape == one.shape
        assert float((ours - alone).abs().max()) <= 1e-6 and float((one - alone).abs().max()) <= 1e-6
    assert float((unmasked[2] - lone[2]).abs().max()) > 1e-3  # without masks the padding reaches the samples


def test_autograd_hooks_and_float16_run_the_generators_own_forward() -> None:
    plain, fused = full_size_hifigan()
    mel = torch.randn(1, 80, 10)
    with torch.no_grad():
        expected = plain(mel)
    assert fused_kernels(lambda: fused(mel)) == 0  # autograd recording: the generator's own layers
    assert torch.equal(fused(mel).detach(), expected)
    seen: list[int] = []
    handle = fused.blocks[0].convs1[0][1].register_forward_hook(lambda m, a, out: seen.append(out.size(-1)))
    with torch.inference_mode():
        assert fused_kernels(lambda: fused(mel)) == 0 and seen  # a forward hook sees its layer's call
        assert torch.equal(fused(mel), expected)
    handle.remove()
    handle = fused.blocks[0].convs2[0][1].register_forward_pre_hook(lambda m, a, kw: None, with_kwargs=True)
    with torch.inference_mode():
        assert fused_kernels(lambda: fused(mel)) == 0  # a pre-hook taking keyword arguments
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
    with torch.inference_mode():
        assert fused_kernels(lambda: fused(mel)) == 0  # a hook for every module
    handle.remove()
    with torch.inference_mode():
        assert fused_kernels(lambda: fused(mel)) == 12 * 3 * 2  # no hooks left: fused again
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        assert fused_kernels(lambda: fused(mel)) == 0


def test_small_stages_and_other_vocoders_are_left_alone() -> None:
    from resources.compat import patch_scipy_kaiser

    patch_scipy_kaiser()
    from parallel_wavegan.models import HiFiGANGenerator

    from registry.fixtures.vocoder import HIFIGAN_TAG, config_for

    params = dict(config_for(HIFIGAN_TAG, full=True)["generator_params"], channels=64)  # stages 32, 16, 8, 4
    small = HiFiGANGenerator(**params).eval()
    small.remove_weight_norm()
    assert fuse(small) == 0  # not channels-last: its layers are not the ones the fused forward computes
    channels_last_convolutions(small)
    assert fuse(small) == 3 == sum(b.convs1[0][1].in_channels >= MIN_CHANNELS for b in small.blocks)
    reference = copy.deepcopy(small)
    reference.forward = HiFiGANGenerator.forward.__get__(reference)
    mel = torch.randn(1, 80, 12)
    with torch.inference_mode():
        assert float((small(mel) - reference(mel)).abs().max()) <= 1e-6
    assert fuse(torch.nn.Conv1d(4, 4, 3)) == 0


@pytest.mark.parametrize("choice", ["auto", "true", "false"])
def test_the_stage_fuses_only_where_its_hifigan_is_wide_enough(fixture_caches: FixtureCaches, choice: str) -> None:
    """The fixtures' tiny HiFiGAN (16 channels and fewer) keeps its own forward; asking for fusion there is a
    clear error, not a silent no. (The full-size one fuses all 12 blocks: tests/test_tts_batch.py.)"""
    from tests.configs import tts_stage

    if choice == "true":
        with pytest.raises(ValueError, match="fused_vocoder needs"):
            tts_stage(fused_vocoder=choice)
        return
    stage = tts_stage(fused_vocoder=choice)
    assert stage.fused_blocks == 0 and not is_fused(stage.tts.vocoder.vocoder)
