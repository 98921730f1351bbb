"""Recurrent classifiers that read an image row by row (sequential MNIST), as in seed 002's LSTM/GRU notes
(docs/cookbook.md §16, recurrent models).

Step ``t`` of the sequence is row ``t`` of the image (all channels side by side), so a 28x28 digit is a
28-step sequence of 28 values. The last layer's final hidden state (both directions when bidirectional)
goes through one Linear layer to the class scores.
"""

from __future__ import annotations

import torch
from torch import nn

from visiontrain.models.entry import ModelInput, register_model

_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class RowRNN(nn.Module):
    """An LSTM or GRU over image rows, then a Linear head (``fc``)."""

    def __init__(self, inp: ModelInput, cell: str, hidden: int = 128, layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError("hidden and layers must be at least 1")
        self.directions = 2 if bidirectional else 1
        # torch warns about dropout with one layer: it only acts between stacked layers
        self.rnn = _CELLS[cell](inp.channels * inp.size, hidden, num_layers=layers, batch_first=True,
                                bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.fc = nn.Linear(hidden * self.directions, inp.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # [B, H rows, C*W values per row]
        _, state = self.rnn(rows)
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
        last = h_n[-self.directions:]  # the top layer's final state, one per direction
        return self.fc(torch.cat(list(last), dim=1))


@register_model("lstm", "LSTM reading the image row by row (sequential MNIST); args: hidden, layers, "
                "bidirectional, dropout", min_size=2)
def lstm(inp: ModelInput, hidden: int = 128, layers: int = 1, bidirectional: bool = False,
         dropout: float = 0.0) -> nn.Module:
    return RowRNN(inp, "lstm", hidden, layers, bidirectional, dropout)


@register_model("gru", "GRU reading the image row by row (sequential MNIST); args: hidden, layers, "
                "bidirectional, dropout", min_size=2)
def gru(inp: ModelInput, hidden: int = 128, layers: int = 1, bidirectional: bool = False,
        dropout: float = 0.0) -> nn.Module:
    return RowRNN(inp, "gru", hidden, layers, bidirectional, dropout)
