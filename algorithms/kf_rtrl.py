"""KF-RTRL, Kronecker-factored RTRL (Mujika, Meier & Steger, 2018), for the tanh RNN.

The tanh RNN's parameters are ``Theta [n, k]`` (``k = n + 1 + m``) acting on ``z = [h; 1; x]``,
and its influence ``G = dh/dTheta [n, n k]`` is kept, per stream, as one Kronecker product

    G[i, (j, l)] ~ A[i, j] u[l],        A [B, n, n],  u [B, k].

The exact recursion ``G' = J G + dF/dTheta`` with ``J = (1 - leak) I + diag(d) W`` and
``d = leak (1 - tanh^2)`` maps ``A (x) u`` to a sum of two Kronecker products,

    G' = (J A) (x) u + diag(d) (x) z,

which is reduced to one with two independent random signs ``c1, c2`` per stream and step:

    u' = c1 p1 u + c2 p2 z,             A' = c1 (J A) / p1 + c2 diag(d) / p2,
    p1 = sqrt((||J A||_F + eps) / (||u|| + eps)),  p2 = sqrt((||d|| + eps) / (||z|| + eps)).

The cross terms carry ``c1 c2`` and vanish in expectation, so ``E[A' (x) u'] = G'`` given the
past: unbiased for frozen ``Theta`` (any positive ``p`` would do; these balance the norms of
the two factors of each term, which minimises the variance). ``z = [h_{t-1}; 1; x_t]`` and
``d`` are those of the step. The gradient of the step's loss is

    g[j, l] = ((dl/dh)^T A)_j u_l

plus the exact readout gradient. ``J A`` costs O(n^3) per stream and step, the rest O(n k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import Estimator, LentGradient, StepResult
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import hyper_defaults
from rnnsweep.algorithms.signs import SignStream
from rnnsweep.algorithms.trajectory import TanhTrajectory, unit_blocks
from rnnsweep.algorithms.uoro import rho


@dataclass
class KfRtrlState(LentGradient):
    """``dh/dTheta ~ A (x) u`` per stream, and the step's scratch buffers."""

    traj: TanhTrajectory
    a: Tensor  # [B, n, n]
    u: Tensor  # [B, n + 1 + m]
    signs: SignStream  # width 2: (c1, c2)
    eps: float
    ja: Tensor  # [B, n, n] scratch: J A
    norms: Tensor  # [B, 4] scratch: ||J A||_F, ||u||, ||d||, ||z||
    coef: Tensor  # [B, 4] scratch: c1 p1, c2 p2, c1 / p1, c2 / p2


def init(
    cell: Cell, params: Params, loss_kind: str, batch: int, seeds: Tensor, hyper: dict[str, Any]
) -> KfRtrlState:
    dtype, device = params.theta.dtype, params.theta.device
    n, k = cell.hidden, cell.hidden + 1 + cell.inputs
    traj = TanhTrajectory(cell, loss_kind, batch, dtype, device)
    a = torch.zeros(batch, n, n, dtype=dtype, device=device)
    u = torch.zeros(batch, k, dtype=dtype, device=device)
    signs = SignStream(seeds, 2, dtype)
    ja = torch.empty_like(a)
    norms = torch.empty(batch, 4, dtype=dtype, device=device)
    coef = torch.empty(batch, 4, dtype=dtype, device=device)
    return KfRtrlState(traj, a, u, signs, hyper["eps"], ja, norms, coef)


def step(params: Params, state: KfRtrlState, x: Tensor, y: Tensor) -> StepResult:
    traj, a, u, ja, norms, coef = state.traj, state.a, state.u, state.ja, state.norms, state.coef
    cell = traj.cell
    n, leak = cell.hidden, cell.leak
    batch = a.shape[0]
    blocks = unit_blocks(cell, params.theta)
    w = blocks[..., :n]
    if w.dim() == 2:
        w = w.expand(batch, n, n)
    c = state.signs.next()
    z, d = traj.advance(blocks, x)
    # J A = diag(d) W A + (1 - leak) A
    torch.bmm(w, a, out=ja).mul_(d.unsqueeze(2))
    if leak != 1.0:
        ja.add_(a, alpha=1.0 - leak)
    torch.linalg.vector_norm(ja, dim=(1, 2), out=norms[:, 0])
    torch.linalg.vector_norm(u, dim=1, out=norms[:, 1])
    torch.linalg.vector_norm(d, dim=1, out=norms[:, 2])
    torch.linalg.vector_norm(z, dim=1, out=norms[:, 3])
    p = rho(norms, state.eps)
    torch.mul(c, p, out=coef[:, :2])
    torch.div(c, p, out=coef[:, 2:])
    u.mul_(coef[:, 0:1]).addcmul_(z, coef[:, 1:2])
    torch.mul(ja, coef[:, 2].view(batch, 1, 1), out=a)
    a.diagonal(dim1=1, dim2=2).addcmul_(d, coef[:, 3:4])
    loss, out, dh, g_readout = traj.score(params, y, state.readout_out)
    return StepResult(loss, out, kronecker_gradient(params, state, dh, g_readout))


def kronecker_gradient(params: Params, state: KfRtrlState, dh: Tensor, g_readout: Tensor) -> Params:
    """``g[j, l] = ((dl/dh)^T A)_j u_l``, per stream or the mean over streams; readout exact
    (``state.grad_out`` itself when lent, the readout's part already written by ``score``)."""
    left = torch.bmm(dh.unsqueeze(1), state.a).squeeze(1)  # [B, n]
    lent = state.grad_out
    if params.per_stream:
        g_theta = torch.bmm(left.unsqueeze(2), state.u.unsqueeze(1))
    elif lent is not None:
        readout_.mean_outer(left, state.u, lent.theta.view(left.shape[1], -1))
        return lent
    else:
        g_theta = readout_.mean_outer(left, state.u)
    return Params(g_theta.reshape(params.theta.shape), g_readout)


def influence(state: KfRtrlState) -> tuple[Tensor, Tensor]:
    """``(L = A [B, n, n], R [B, n, P])``, ``R[j, (j', l)] = [j = j'] u_l``: ``dh/dTheta ~ L R``."""
    a, u = state.a, state.u
    batch, n, k = a.shape[0], a.shape[1], u.shape[1]
    r = torch.zeros(batch, n, n, k, dtype=u.dtype, device=u.device)
    r.diagonal(dim1=1, dim2=2).copy_(u.unsqueeze(2).expand(batch, k, n))
    return a, r.view(batch, n, n * k)


KF_RTRL = Estimator(
    name="kf-rtrl",
    init=init,
    step=step,
    defaults=hyper_defaults("kf-rtrl"),
    exact=False,
    unbiased=True,
    summary="KF-RTRL: influence A (x) u, two random signs per step; tanh RNN, O(n^3)",
    cells=("tanh",),
    influence=influence,
)
