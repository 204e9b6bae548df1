"""The GRU's derivatives in closed form: ``J v``, the row norms ``||dF_k/dtheta||`` and the
pull ``nu -> nu^T dF/dtheta``, in O(P) per stream (``torch.func`` takes S + 1 reverse passes).

The cell (``rnnsweep.algorithms.gru``), per stream, with ``z = [h; 1; x] [K]``
(``K = n + 1 + m``) and ``theta`` as blocks ``Theta_u, Theta_r, Theta_c [n, K]``::

    u = sigma(Theta_u z),  r = sigma(Theta_r z),  zc = [r*h; 1; x],  c = tanh(Theta_c zc),
    F = (1 - u) h + u c.

Write ``W_u, W_r, W_c [n, n]`` for the first n columns of each block (those acting on ``h``,
and for ``Theta_c`` on ``r*h``) and

    a = (c - h) u (1 - u),   b = u (1 - c^2),   g = h r (1 - r)        (all [n]).

Unit k's output depends on the update and candidate rows k only, but on every reset row
(through ``r*h``):

    dF_k/dTheta_u[k, :] = a_k z^T,
    dF_k/dTheta_c[k, :] = b_k zc^T,
    dF_k/dTheta_r[j, :] = b_k W_c[k, j] g_j z^T        for every j,

so that

    ||dF_k/dtheta||^2 = a_k^2 |z|^2 + b_k^2 (|zc|^2 + |z|^2 sum_j W_c[k, j]^2 g_j^2),
    nu^T dF/dtheta    = [(nu a) z^T;  (g * W_c^T (nu b)) z^T;  (nu b) zc^T],
    J v = dF/dh v     = (1 - u) v + a * (W_u v) + b * W_c (r v + g * (W_r v)).

``sum_j W_c[k, j]^2 g_j^2`` is one ``[n, n]`` matrix-vector product (the squares of ``W_c``
computed once per step for shared parameters); everything else is elementwise or an outer
product. ``theta`` is ``[P]`` (shared) or ``[B, P]`` (per stream), as in
``rnnsweep.algorithms.forward_mode``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rnnsweep.algorithms.cell_base import Cell, column
from rnnsweep.algorithms.trajectory import matvec


class GruStep(NamedTuple):
    """One GRU step of B streams and the factors of its derivatives (all ``[B, .]`` unless
    said)."""

    s_next: Tensor  # F [B, n]
    z: Tensor  # [h; 1; x] [B, K]
    zc: Tensor  # [r*h; 1; x] [B, K]
    u: Tensor  # [B, n]
    r: Tensor  # [B, n]
    a: Tensor  # (c - h) u (1 - u) [B, n]
    b: Tensor  # u (1 - c^2) [B, n]
    g: Tensor  # h r (1 - r) [B, n]
    blocks: Tensor  # theta as [(B,) 3, n, K]


def gru_forward(cell: Cell, theta: Tensor, s: Tensor, x: Tensor) -> GruStep:
    """The step ``s [B, n] -> F [B, n]`` on ``x [B, m]`` with ``theta [P]`` or ``[B, P]``."""
    n = cell.hidden
    blocks = theta.view(theta.shape[:-1] + (3, n, n + 1 + cell.inputs))
    z = column(s, x)
    u = torch.sigmoid(matvec(blocks[..., 0, :, :], z))
    r = torch.sigmoid(matvec(blocks[..., 1, :, :], z))
    zc = column(r * s, x)
    c = torch.tanh(matvec(blocks[..., 2, :, :], zc))
    s_next = torch.lerp(s, c, u)  # (1 - u) h + u c
    a = (c - s) * u * (1.0 - u)
    b = u * (1.0 - c * c)
    g = s * r * (1.0 - r)
    return GruStep(s_next, z, zc, u, r, a, b, g, blocks)


def _recurrent(step: GruStep, gate: int) -> Tensor:
    """``W_gate``: the first n columns of a block, ``[(B,) n, n]``."""
    return step.blocks[..., gate, :, : step.u.shape[1]]


def gru_jvp(step: GruStep, v: Tensor) -> Tensor:
    """``J v = dF/dh v [B, n]`` for tangents ``v [B, n]``."""
    inner = matvec(_recurrent(step, 1), v).mul_(step.g).addcmul_(step.r, v)
    jv = matvec(_recurrent(step, 2), inner).mul_(step.b)
    jv.addcmul_(step.a, matvec(_recurrent(step, 0), v))
    return jv.addcmul_(1.0 - step.u, v)


def gru_row_norms(step: GruStep) -> Tensor:
    """``||dF_k/dtheta|| [B, n]``."""
    z2 = step.z.square().sum(1, keepdim=True)
    zc2 = step.zc.square().sum(1, keepdim=True)
    spread = matvec(_recurrent(step, 2).square(), step.g.square())  # sum_j W_c[k,j]^2 g_j^2
    total = spread.mul_(z2).add_(zc2).mul_(step.b.square())
    return total.addcmul_(step.a.square(), z2).sqrt_()


def gru_pull(step: GruStep, nu: Tensor) -> Tensor:
    """``nu^T dF/dtheta [B, P]`` for cotangents ``nu [B, n]``."""
    nu_b = nu * step.b
    reset = matvec(_recurrent(step, 2).transpose(-1, -2), nu_b).mul_(step.g)
    coef = torch.stack([nu * step.a, reset, nu_b], dim=1)  # [B, 3, n]
    cols = torch.stack([step.z, step.z, step.zc], dim=1)  # [B, 3, K]
    return (coef.unsqueeze(3) * cols.unsqueeze(2)).flatten(1)
