"""GRU cell: ``u = sigma(Theta_u z)``, ``r = sigma(Theta_r z)``,
``c = tanh(Theta_c [r*h; 1; x])``, ``h' = (1 - u) h + u c`` with ``z = [h; 1; x]``.

``theta`` is ``[3, n, n + 1 + m]`` flattened: update, reset, candidate blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnsweep.algorithms.cell_base import Cell, column


def gru_cell(hidden: int, inputs: int) -> Cell:
    n, m = hidden, inputs

    def fn(theta: Tensor, s: Tensor, x: Tensor) -> Tensor:
        blocks = theta.view(3, n, n + 1 + m)
        z = column(s, x)
        u = torch.sigmoid(blocks[0] @ z)
        r = torch.sigmoid(blocks[1] @ z)
        c = torch.tanh(blocks[2] @ column(r * s, x))
        return (1.0 - u) * s + u * c

    return Cell("gru", n, m, n, 3 * n * (n + 1 + m), fn, slice(0, n), gates=3)
