"""Tacotron2's decoder LSTM cells with their weights packed once for oneDNN: the same step, in less time.

The batched decoder (steps.tacotron_batch) spends most of each step in its two 1024-unit LSTMCells: four
matrix products of a few rows (the items still speaking) by 4096 x 768..1024 weights. For so few rows,
`F.linear` is a poor kernel on a CPU: measured on a 4096 x 1792 weight, 2 threads, Intel Xeon with AMX,
8 rows took 0.63-0.71 ms in bfloat16 and 1.7-1.8 ms in float32 (MKL's path for more than a few rows), while the
same product on a weight reordered once into oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`,
what torch.compile's freezing pass does to a frozen Linear on a CPU) took 0.37 ms in bfloat16, with the same
values bit for bit, and 0.78 ms in float32, within 4e-6 of the value (another summation order).

`PackedLSTMCell` computes `torch.nn.LSTMCell`'s step as ATen's CPU kernel does (aten/src/ATen/native/RNN.cpp,
LSTMCell: gates = linear_hh(h) + linear_ih(x); sigmoid / tanh of the four chunks; c' = f * c + i * g;
h' = o * tanh(c')), in the same order and dtypes, with only the two products on packed weights. Under
torch.autocast the inputs are cast to the autocast dtype as `F.linear` would cast them, so the gates, states
and outputs keep ESPnet's dtypes. The module's parameters are read once, at packing: a cell is packed after its
weights are loaded and used while they stay as they are (the stage packs on first use, per compute dtype).
One decoder step of the full-size CSMSC Tacotron2 at 8 rows, bfloat16: the two cells 1.9 -> 1.25 ms.
"""

from __future__ import annotations

import torch

# The dtypes oneDNN's packed linear serves on a CPU (float16 depends on the CPU: left to F.linear).
PACKABLE = (torch.float32, torch.bfloat16)


def packable(device: str, dtype: torch.dtype) -> bool:
    """Whether cells can be packed for `device` and compute `dtype`: a CPU with oneDNN, float32 or bfloat16."""
    return not device.startswith("cuda") and dtype in PACKABLE and torch.backends.mkldnn.is_available()


class PackedLSTMCell:
    """One LSTMCell's step on packed weights, called like the cell: `(x, (h, c)) -> (h', c')`."""

    def __init__(self, cell: torch.nn.LSTMCell, dtype: torch.dtype, rows: int = 8) -> None:
        """`dtype` is the compute dtype (the autocast dtype, or float32); `rows` the batch oneDNN tunes for
        (any number of rows is served)."""
        self.dtype = dtype
        self.hidden_size = cell.hidden_size
        with torch.no_grad():
            self.w_ih = torch.ops.mkldnn._reorder_linear_weight(cell.weight_ih.detach().to(dtype), rows)
            self.w_hh = torch.ops.mkldnn._reorder_linear_weight(cell.weight_hh.detach().to(dtype), rows)
            self.b_ih = cell.bias_ih.detach().to(dtype) if cell.bias else None
            self.b_hh = cell.bias_hh.detach().to(dtype) if cell.bias else None

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), weight, bias, "none", [], "")

    def __call__(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = self.linear(h, self.w_hh, self.b_hh).add_(self.linear(x, self.w_ih, self.b_ih))
        ingate, forgetgate, cellgate, outgate = gates.unsafe_chunk(4, 1)
        cy = forgetgate.sigmoid_().mul(c).add_(ingate.sigmoid_().mul(cellgate.tanh_()))
        return outgate.sigmoid_().mul(cy.tanh()), cy


class PackedZoneOutCell:
    """ESPnet's ZoneOutCell (the CSMSC recipe's decoder: zoneout 0.1) around a packed cell: its own `_zoneout`
    mixes the old and new states as in inference (h' = p * h + (1 - p) * cell(x, h))."""

    def __init__(self, zoneout: torch.nn.Module, dtype: torch.dtype, rows: int = 8) -> None:
        self.zoneout = zoneout
        self.cell = PackedLSTMCell(zoneout.cell, dtype, rows)

    def __call__(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.zoneout._zoneout(state, self.cell(x, state), self.zoneout.zoneout_rate)


def packed_cells(
    cells: torch.nn.ModuleList, dtype: torch.dtype, rows: int = 8
) -> list[PackedLSTMCell | PackedZoneOutCell]:
    """Every cell of a Tacotron2 decoder's `lstm` list (LSTMCells, or ESPnet ZoneOutCells around them), packed."""
    from espnet.nets.pytorch_backend.tacotron2.decoder import ZoneOutCell

    packed: list[PackedLSTMCell | PackedZoneOutCell] = []
    for cell in cells:
        if isinstance(cell, ZoneOutCell) and not cell.training and isinstance(cell.cell, torch.nn.LSTMCell):
            packed.append(PackedZoneOutCell(cell, dtype, rows))
        elif isinstance(cell, torch.nn.LSTMCell):
            packed.append(PackedLSTMCell(cell, dtype, rows))
        else:
            raise TypeError(f"cannot pack a {type(cell).__name__} (LSTMCell or ZoneOutCell(LSTMCell) expected)")
    return packed
