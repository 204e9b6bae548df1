"""LSTM cell over the flattened state ``s = [c; h]`` (``S = 2n``):
``i, f, g, o = sigma, sigma, tanh, sigma (Theta_{i,f,g,o} [h; 1; x])``,
``c' = f c + i g``, ``h' = o tanh(c')``. The readout sees ``h``.

``theta`` is ``[4, n, n + 1 + m]`` flattened (input, forget, cell, output blocks); the forget
bias starts at +1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnsweep.algorithms.cell_base import Cell, column


def lstm_cell(hidden: int, inputs: int) -> Cell:
    n, m = hidden, inputs

    def fn(theta: Tensor, s: Tensor, x: Tensor) -> Tensor:
        c, h = s[:n], s[n:]
        pre = theta.view(4, n, n + 1 + m) @ column(h, x)
        i, f, o = torch.sigmoid(pre[0]), torch.sigmoid(pre[1]), torch.sigmoid(pre[3])
        c_next = f * c + i * torch.tanh(pre[2])
        return torch.cat([c_next, o * torch.tanh(c_next)])

    return Cell(
        "lstm", n, m, 2 * n, 4 * n * (n + 1 + m), fn, slice(n, 2 * n), gates=4, forget_bias=1.0
    )
