"""Tacotron2's decoder LSTM cells on packed oneDNN weights (steps.packed_lstm): the cell's own step, the batched
decoder's mels against ESPnet's one-at-a-time Text2Speech, and the stage's `packed_lstm` option."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from registry.fixtures import FixtureCaches
from steps.packed_lstm import PackedLSTMCell, PackedZoneOutCell, packable, packed_cells
from steps.speech_synthesis import PACK_MIN_UNITS, EspnetSynthesizer, Speech
from steps.tacotron_batch import prenet_dropout, tacotron2_inference
from tests.configs import fixture_config, tts_stage

TEXTS = ["卡尔普陪外孙玩滑梯", "你好", "我有三只猫", "一", "明天见"]


@pytest.fixture(scope="module")
def stage(fixture_caches: FixtureCaches) -> EspnetSynthesizer:
    return tts_stage(batch_size=4)


def token_ids(stage: EspnetSynthesizer, texts: list[str]) -> list[torch.Tensor]:
    return [torch.as_tensor(stage.tts.preprocess_fn("<d>", {"text": t})["text"]).long() for t in texts]


def cell_inputs(batch: int = 5) -> tuple[torch.nn.LSTMCell, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(48, 64)
    return cell, torch.randn(batch, 48), (torch.randn(batch, 64), torch.randn(batch, 64))


def test_a_packed_cell_steps_as_torchs_lstm_cell_in_float32() -> None:
    cell, x, state = cell_inputs()
    with torch.inference_mode():
        theirs = cell(x, state)
        ours = PackedLSTMCell(cell, torch.float32)(x, state)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert float((a - b).abs().max()) <= 1e-5  # another summation order, nothing more


def test_under_bfloat16_autocast_a_packed_cell_is_torchs_lstm_cell_bit_for_bit() -> None:
    """The gates in bfloat16 (as autocast's linear makes them), the states promoted to float32 by a float32
    cell state, exactly as ATen's CPU LSTMCell composes them."""
    cell, x, state = cell_inputs()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        theirs = cell(x, state)
        ours = PackedLSTMCell(cell, torch.bfloat16)(x, state)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


def test_packing_reads_espnets_zoneout_cells_and_refuses_other_cells(stage: EspnetSynthesizer) -> None:
    cells = packed_cells(stage.tts.tts.dec.lstm, torch.float32)
    assert len(cells) == len(stage.tts.tts.dec.lstm) == 2
    assert all(isinstance(c, PackedZoneOutCell) for c in cells)  # the CSMSC recipe's zoneout 0.1
    with pytest.raises(TypeError, match="cannot pack a GRUCell"):
        packed_cells(torch.nn.ModuleList([torch.nn.GRUCell(4, 4)]), torch.float32)


def test_batched_mels_on_packed_cells_equal_espnet_one_at_a_time(stage: EspnetSynthesizer) -> None:
    t2s = stage.tts
    cells = packed_cells(t2s.tts.dec.lstm, torch.float32)
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0):
        single = [t2s(text)["feat_gen"] for text in TEXTS]
        batched = tacotron2_inference(t2s.tts, token_ids(stage, TEXTS), cells=cells)
    for ours, theirs in zip(batched, single, strict=True):
        assert ours.feat_gen.shape == theirs.shape
        assert float((ours.feat_gen - theirs).abs().max()) <= 1e-4


def test_under_bfloat16_packed_cells_give_espnets_own_mels_bit_for_bit(stage: EspnetSynthesizer) -> None:
    t2s = stage.tts
    cells = packed_cells(t2s.tts.dec.lstm, torch.bfloat16)
    with torch.inference_mode(), prenet_dropout(t2s.tts, 0.0), torch.autocast("cpu", dtype=torch.bfloat16):
        for text, ids in zip(TEXTS, token_ids(stage, TEXTS), strict=True):
            theirs = t2s(text)["feat_gen"]
            ours = tacotron2_inference(t2s.tts, [ids], cells=cells)[0].feat_gen
            assert ours.dtype == theirs.dtype == torch.bfloat16
            assert torch.equal(ours, theirs)


def test_the_stage_packs_per_dtype_on_a_cpu_and_speaks_as_without(stage: EspnetSynthesizer) -> None:
    saved = stage.options
    try:
        # auto: in float32 only from PACK_MIN_UNITS units (the tiny fixture has 32); in bfloat16 at every size
        assert stage.tts.tts.dec.lstm[0].hidden_size < PACK_MIN_UNITS and stage.decoder_cells() is None
        stage.options = replace(saved, dtype="bfloat16")
        assert stage.pack_lstm()
        for dtype in ("float32", "bfloat16"):
            stage.options = replace(saved, dtype=dtype, packed_lstm="true")
            cells = stage.decoder_cells()
            assert cells is not None and cells is stage.decoder_cells()  # packed once per dtype
            assert all(c.cell.dtype == getattr(torch, dtype) for c in cells)  # type: ignore[union-attr]
        with prenet_dropout(stage.tts.tts, 0.0):
            stage.options = replace(saved, packed_lstm="true")
            packed = stage.process(TEXTS)
            stage.options = replace(saved, packed_lstm="false")
            assert stage.decoder_cells() is None
            plain = stage.process(TEXTS)
    finally:
        stage.options = saved
    for ours, theirs in zip(packed, plain, strict=True):
        assert isinstance(ours, Speech) and isinstance(theirs, Speech)
        assert ours.samples.shape == theirs.samples.shape
        assert float(abs(ours.samples - theirs.samples).max()) <= 1e-4


def test_packing_asked_for_where_it_cannot_run_stops_before_any_model_is_read() -> None:
    assert not packable("cuda", torch.float32) and not packable("cpu", torch.float16)
    stage = EspnetSynthesizer(replace(fixture_config().speech_synthesis, dtype="float16", packed_lstm="true"))
    with pytest.raises(ValueError, match="packed_lstm needs a CPU with oneDNN and float32 or bfloat16"):
        stage.setup()
    assert stage.local is None
