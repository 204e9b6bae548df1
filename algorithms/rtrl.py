"""RTRL, exact real-time recurrent learning (Williams & Zipser, 1989).

Each stream keeps its full influence ``G = ds/dtheta [S, P]`` and updates it by the chain rule

    G' = J G + dF/dtheta,       J = dF/ds,

so that the gradient of the step's loss, ``(dl/ds)^T G`` plus the exact readout gradient,
equals the BPTT gradient of that loss for frozen ``theta``. Cost O(S^2 P) per step, memory
O(S P) per stream.

For the tanh RNN (``h' = (1 - a) h + a tanh(Theta z)``, ``z = [h; 1; x]``, ``d = a (1 - tanh^2)``)
``G`` is stored as ``[B, n, n, n + 1 + m]`` (state ``i``, unit ``j``, column ``l``) and

    G'[i, j, l] = (1 - a) G[i, j, l] + d_i (W G)[i, j, l] + [i = j] d_j z_l,

one batched matrix product into a preallocated buffer and an in-place update of the block
diagonal ``G[:, j, j, :]`` through a strided view. Other cells use the full Jacobians from
``torch.func`` (``forward_mode.jacobians``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import (
    Estimator,
    StepResult,
    by_path,
    use_closed_form,
)
from rnnsweep.algorithms.forward_mode import jacobians
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import hyper_defaults
from rnnsweep.algorithms.trajectory import TanhTrajectory, Trajectory, unit_blocks


@dataclass
class RtrlState:
    """Exact influence per stream."""

    traj: TanhTrajectory | Trajectory
    g: Tensor  # closed form [B, n, n, n + 1 + m]; generic [B, S, P]
    closed_form: bool
    eye: Tensor  # [B, S, S]: an expanded identity (no copy), the influence's left factor
    wg: Tensor | None = None  # closed form: [B, n, n (n + 1 + m)] scratch for W G
    diag: Tensor | None = None  # closed form: [B, n, n + 1 + m] view of G[:, j, j, :]


def influence_gradient(g: Tensor, ds: Tensor, shared: bool) -> Tensor:
    """``(dl/ds)^T G`` for ``g [B, S, P]``, ``ds [B, S]``: ``[B, P]``, or its mean ``[P]``."""
    batch, size, count = g.shape
    if shared:
        return torch.mv(g.reshape(batch * size, count).t(), ds.reshape(-1)).div_(batch)
    return torch.bmm(ds.unsqueeze(1), g).squeeze(1)


def init(
    cell: Cell, params: Params, loss_kind: str, batch: int, seeds: Tensor, hyper: dict[str, Any]
) -> RtrlState:
    dtype, device = params.theta.dtype, params.theta.device
    closed = use_closed_form(cell, hyper["path"], "rtrl")
    size = cell.state_size
    eye = torch.eye(size, dtype=dtype, device=device).expand(batch, size, size)
    if closed:
        n, k = cell.hidden, cell.hidden + 1 + cell.inputs
        traj = TanhTrajectory(cell, loss_kind, batch, dtype, device)
        g = torch.zeros(batch, n, n, k, dtype=dtype, device=device)
        wg = torch.empty(batch, n, n * k, dtype=dtype, device=device)
        diag = g.view(batch, n * n, k)[:, :: n + 1]
        return RtrlState(traj, g, True, eye, wg, diag)
    traj = Trajectory(cell, loss_kind, batch, dtype, device)
    g = torch.zeros(batch, size, cell.num_params, dtype=dtype, device=device)
    return RtrlState(traj, g, False, eye)


def _step_tanh(params: Params, state: RtrlState, x: Tensor, y: Tensor) -> StepResult:
    traj, g, wg = state.traj, state.g, state.wg
    cell = traj.cell
    n, leak = cell.hidden, cell.leak
    batch = g.shape[0]
    blocks = unit_blocks(cell, params.theta)
    z, d = traj.advance(blocks, x)
    torch.matmul(blocks[..., :n], g.view(batch, n, -1), out=wg)
    wg4 = wg.view(g.shape)
    d4 = d.view(batch, n, 1, 1)
    if leak == 1.0:
        torch.mul(wg4, d4, out=g)
    else:
        g.mul_(1.0 - leak).addcmul_(wg4, d4)
    state.diag.addcmul_(d.unsqueeze(2), z.unsqueeze(1))
    loss, out, dh, g_readout = traj.score(params, y)
    g_theta = influence_gradient(g.view(batch, n, -1), dh, shared=not params.per_stream)
    return StepResult(loss, out, Params(g_theta, g_readout))


def dense_step(
    params: Params, state: Any, x: Tensor, y: Tensor, mask: Tensor | None = None
) -> StepResult:
    """Generic dense influence step, ``G' = (J G + dF/dtheta) * M``: exact RTRL with no mask,
    SnAp with the mask of its kept entries. ``state`` has ``traj`` and ``g [B, S, P]``."""
    traj, g = state.traj, state.g
    s_next, jac, f_theta = jacobians(traj.cell, params.theta, traj.s, x)
    if mask is None:
        g.copy_(f_theta.baddbmm_(jac, g))
    else:
        torch.mul(f_theta.baddbmm_(jac, g), mask, out=g)
    traj.s = s_next
    traj.t += 1
    loss, out, ds, g_readout = traj.score(params, y)
    g_theta = influence_gradient(g, ds, shared=not params.per_stream)
    return StepResult(loss, out, Params(g_theta, g_readout))


step = by_path(_step_tanh, dense_step)


def influence(state: RtrlState) -> tuple[Tensor, Tensor]:
    """``(I [B, S, S], G [B, S, P])``: ``ds/dtheta = I G`` exactly (views, no copy)."""
    batch, size = state.eye.shape[:2]
    return state.eye, state.g.view(batch, size, -1)


RTRL = Estimator(
    name="rtrl",
    init=init,
    step=step,
    defaults=hyper_defaults("rtrl"),
    exact=True,
    unbiased=True,
    summary="RTRL: exact influence G' = J G + dF/dtheta; O(S^2 P)",
    influence=influence,
)
