"""The LSTM's derivatives in closed form: ``J v``, the row norms ``||dF_k/dtheta||`` and the
pull ``nu -> nu^T dF/dtheta``, in O(P) per stream (``torch.func`` takes S + 1 reverse passes).

The cell (``rnnsweep.algorithms.lstm``), per stream, state ``s = [c; h]`` (``S = 2n``),
``z = [h; 1; x] [K]`` and ``theta`` as blocks ``Theta_{i,f,g,o} [n, K]``::

    i, f, g, o = sigma, sigma, tanh, sigma (Theta_{i,f,g,o} z),
    c' = f c + i g,   h' = o tanh(c').

Every gate sees the same ``z``, so unit k's outputs ``c'_k`` and ``h'_k`` depend on row k of
each block only, each derivative a multiple of ``z^T`` (as for the tanh RNN). With
``T = tanh(c')`` and ``tau = o (1 - T^2)``, the multiples (``[4, n]``, gates i, f, g, o) are

    dc'_k:  (g i (1 - i),  c f (1 - f),  i (1 - g^2),  0)_k
    dh'_k:  tau_k dc'_k + (0, 0, 0, T o (1 - o))_k,

so ``||dF_k/dtheta|| = ||z|| ||multiples_k||``, ``nu^T dF/dtheta`` is the outer product of
``nu_c * dc' + nu_h * dh' [4, n]`` with ``z``, and, with ``W_gate [n, n]`` a block's first n
columns and ``p = (W_gate v_h)_gate [4, n]``,

    J [v_c; v_h] = [f v_c + sum_gate dc'_gate p_gate;  tau (that) + dh'_o p_o].

``theta`` is ``[P]`` (shared) or ``[B, P]`` (per stream), as in
``rnnsweep.algorithms.forward_mode``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnsweep.algorithms.cell_base import Cell, column
from rnnsweep.algorithms.trajectory import matvec


class LstmStep(NamedTuple):
    """One LSTM step of B streams and the factors of its derivatives."""

    s_next: Tensor  # [c'; h'] [B, 2n]
    z: Tensor  # [h; 1; x] [B, K]
    f: Tensor  # forget gate [B, n]
    tau: Tensor  # o (1 - tanh(c')^2) [B, n]
    dc: Tensor  # dc'_k / d(gate pre-activation) [B, 4, n]
    dh: Tensor  # dh'_k / d(gate pre-activation) [B, 4, n]
    blocks: Tensor  # theta as [(B,) 4, n, K]


def lstm_forward(cell: Cell, theta: Tensor, s: Tensor, x: Tensor) -> LstmStep:
    """The step ``s = [c; h] [B, 2n] -> [c'; h']`` on ``x [B, m]``, ``theta [P]`` or
    ``[B, P]``."""
    n, k = cell.hidden, cell.hidden + 1 + cell.inputs
    blocks = theta.view(theta.shape[:-1] + (4, n, k))
    c, h = s[:, :n], s[:, n:]
    z = column(h, x)
    pre = matvec(theta.view(theta.shape[:-1] + (4 * n, k)), z).view(-1, 4, n)
    i, f, o = torch.sigmoid(pre[:, 0]), torch.sigmoid(pre[:, 1]), torch.sigmoid(pre[:, 3])
    g = torch.tanh(pre[:, 2])
    c_next = f * c + i * g
    t = torch.tanh(c_next)
    tau = o * (1.0 - t * t)
    zero = torch.zeros_like(i)
    dc = torch.stack([g * i * (1.0 - i), c * f * (1.0 - f), i * (1.0 - g * g), zero], dim=1)
    dh = dc * tau.unsqueeze(1)
    dh[:, 3] = t * o * (1.0 - o)
    return LstmStep(torch.cat([c_next, o * t], dim=1), z, f, tau, dc, dh, blocks)


def lstm_jvp(step: LstmStep, v: Tensor) -> Tensor:
    """``J v = dF/ds v [B, 2n]`` for tangents ``v = [v_c; v_h] [B, 2n]``."""
    n = step.f.shape[1]
    recurrent = step.blocks[..., :n].flatten(-3, -2)  # [(B,) 4n, n]
    p = matvec(recurrent, v[:, n:]).view(-1, 4, n)
    dc = (step.dc * p).sum(1).addcmul_(step.f, v[:, :n])
    dh = torch.addcmul(step.dh[:, 3] * p[:, 3], step.tau, dc)
    return torch.cat([dc, dh], dim=1)


def lstm_row_norms(step: LstmStep) -> Tensor:
    """``||dF_k/dtheta|| [B, 2n]``: the ``c'`` rows, then the ``h'`` rows."""
    z = torch.linalg.vector_norm(step.z, dim=1, keepdim=True)
    return torch.cat([step.dc.norm(dim=1), step.dh.norm(dim=1)], dim=1).mul_(z)


def lstm_pull(step: LstmStep, nu: Tensor) -> Tensor:
    """``nu^T dF/dtheta [B, P]`` for cotangents ``nu = [nu_c; nu_h] [B, 2n]``."""
    n = step.f.shape[1]
    coef = step.dc * nu[:, None, :n] + step.dh * nu[:, None, n:]  # [B, 4, n]
    return (coef.unsqueeze(3) * step.z[:, None, None, :]).flatten(1)
