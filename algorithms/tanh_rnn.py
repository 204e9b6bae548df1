"""Tanh RNN, optionally leaky: ``h' = (1 - a) h + a tanh(Theta [h; 1; x])``, ``a = leak``.

``theta`` is ``Theta: [n, n + 1 + m]`` flattened row-major, row ``k`` = unit ``k``'s incoming
weights ``[W_k | b_k | U_k]``. Its derivatives, used by the closed-form estimators:
``J = dF/dh = (1 - a) I + diag(d) W`` and ``dF_k/dTheta_k = d_k z`` with ``d = a (1 - tanh^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnsweep.algorithms.cell_base import Cell, column


def tanh_cell(hidden: int, inputs: int, leak: float = 1.0) -> Cell:
    if not 0.0 < leak <= 1.0:
        raise ValueError(f"tanh cell: leak must be in (0, 1], got {leak}")
    n, m = hidden, inputs

    def fn(theta: Tensor, s: Tensor, x: Tensor) -> Tensor:
        a = theta.view(n, n + 1 + m) @ column(s, x)
        if leak == 1.0:
            return torch.tanh(a)
        return (1.0 - leak) * s + leak * torch.tanh(a)

    return Cell("tanh", n, m, n, n * (n + 1 + m), fn, slice(0, n), gates=1, leak=leak)
