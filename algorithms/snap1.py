"""SnAp-1, the one-step sparse approximation of RTRL (Menick et al., 2021).

The influence ``G = ds/dtheta`` is kept only on the sparsity pattern ``M [S, P]`` of the
one-step Jacobian ``dF/dtheta`` (entries where parameter ``p`` drives state ``i`` directly):

    G' = (J G + dF/dtheta) * M,

and the gradient of the step's loss is ``(dl/ds)^T G`` plus the exact readout gradient. The
dropped entries (influence that reaches unit ``i`` through other units) make it biased.

For the tanh RNN ``M`` is the block diagonal (unit ``j``'s row ``[W_j | b_j | U_j]`` drives only
``h_j``), so ``G`` shrinks to ``G1 [B, n, n + 1 + m]`` and, with ``d = a (1 - tanh^2)``,

    G1' = J_jj G1 + d z^T,   J_jj = (1 - a) + d_j W_jj,   grad[j, l] = (dl/dh)_j G1[j, l],

O(P) per step, in place. Other cells use the generic path: ``M`` is found once at ``init`` as
the nonzeros of ``dF/dtheta`` from ``forward_mode.jacobians`` at random states and inputs (at
the given ``theta`` and at a random one, so that zeros of the given values do not hide
structural entries), and a dense ``G [B, S, P]`` is updated by the masked equation above. That
path costs O(S^2 P) per step, like RTRL: it is the reference that sparse versions for other
cells are checked against, not a fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import (
    Estimator,
    LentGradient,
    StepResult,
    by_path,
    use_closed_form,
)
from rnnsweep.algorithms.forward_mode import jacobians
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.rtrl import dense_step
from rnnsweep.algorithms.settings import hyper_defaults
from rnnsweep.algorithms.trajectory import TanhTrajectory, Trajectory, unit_blocks


@dataclass
class Snap1State(LentGradient):
    """Sparse influence per stream."""

    traj: TanhTrajectory | Trajectory
    g: Tensor  # closed form G1 [B, n, n + 1 + m]; generic dense G [B, S, P] (zero off M)
    closed_form: bool
    eye: Tensor  # [B, S, S]: an expanded identity (no copy), the influence's left factor
    mask: Tensor | None = None  # generic: M [S, P], 1 on the pattern of dF/dtheta, else 0


def structural_mask(cell: Cell, theta: Tensor, points: int = 2, seed: int = 0) -> Tensor:
    """``M [S, P]`` (dtype of ``theta``): 1 where ``dF/dtheta`` is nonzero at random points.

    ``points`` seeded random ``(s, x)`` are evaluated at ``theta`` (``[P]``, or the first row
    of ``[B, P]``) and at a random ``theta`` of the cell; ``M`` is the union of the nonzeros.
    """
    dtype, device = theta.dtype, theta.device
    gen = torch.Generator().manual_seed(seed)
    given = theta if theta.dim() == 1 else theta[0]
    drawn = cell.init_params(gen, dtype=dtype).to(device)
    mask = torch.zeros(cell.state_size, cell.num_params, dtype=torch.bool, device=device)
    for th in (given, drawn):
        s = torch.randn(points, cell.state_size, generator=gen, dtype=dtype).to(device)
        x = torch.randn(points, cell.inputs, generator=gen, dtype=dtype).to(device)
        _, _, f_theta = jacobians(cell, th, s, x)
        mask |= (f_theta.abs() > 0).any(dim=0)
    return mask.to(dtype)


def init(
    cell: Cell, params: Params, loss_kind: str, batch: int, seeds: Tensor, hyper: dict[str, Any]
) -> Snap1State:
    dtype, device = params.theta.dtype, params.theta.device
    closed = use_closed_form(cell, hyper["path"], "snap1")
    size = cell.state_size
    eye = torch.eye(size, dtype=dtype, device=device).expand(batch, size, size)
    if closed:
        traj = TanhTrajectory(cell, loss_kind, batch, dtype, device)
        k = cell.hidden + 1 + cell.inputs
        g = torch.zeros(batch, cell.hidden, k, dtype=dtype, device=device)
        return Snap1State(traj, g, True, eye)
    traj = Trajectory(cell, loss_kind, batch, dtype, device)
    g = torch.zeros(batch, size, cell.num_params, dtype=dtype, device=device)
    return Snap1State(traj, g, False, eye, structural_mask(cell, params.theta.detach()))


def _step_tanh(params: Params, state: Snap1State, x: Tensor, y: Tensor) -> StepResult:
    traj, g1 = state.traj, state.g
    cell = traj.cell
    n, leak = cell.hidden, cell.leak
    blocks = unit_blocks(cell, params.theta)
    z, d = traj.advance(blocks, x)
    j_diag = torch.mul(blocks[..., :n].diagonal(dim1=-2, dim2=-1), d)
    if leak != 1.0:
        j_diag.add_(1.0 - leak)
    g1.mul_(j_diag.unsqueeze(2)).addcmul_(d.unsqueeze(2), z.unsqueeze(1))
    lent = state.grad_out
    loss, out, dh, g_readout = traj.score(params, y, state.readout_out)
    if params.per_stream:
        g_theta = torch.mul(g1, dh.unsqueeze(2)).view(params.theta.shape)
    else:
        # sum_b dh[b, j] G1[b, j, :] as n products [1, B] x [B, k], then the mean over streams
        into = None if lent is None else lent.theta.view(n, 1, -1)
        g_theta = torch.bmm(dh.t().unsqueeze(1), g1.transpose(0, 1), out=into)
        g_theta = g_theta.view(-1).div_(g1.shape[0])
        if lent is not None:
            return StepResult(loss, out, lent)
    return StepResult(loss, out, Params(g_theta, g_readout))


def _step_generic(params: Params, state: Snap1State, x: Tensor, y: Tensor) -> StepResult:
    return dense_step(params, state, x, y, state.mask)


step = by_path(_step_tanh, _step_generic)


def influence(state: Snap1State) -> tuple[Tensor, Tensor]:
    """``(I [B, S, S], G [B, S, P])`` with the sparse ``G`` written out densely.

    Generic path: views of the state. Tanh: a new ``[B, n, P]`` holding ``G1`` on its block
    diagonal (O(n P) memory per stream, the price of the dense interface).
    """
    if not state.closed_form:
        return state.eye, state.g
    g1 = state.g
    batch, n, k = g1.shape
    dense = g1.new_zeros(batch, n * n, k)
    dense[:, :: n + 1] = g1
    return state.eye, dense.view(batch, n, n * k)


SNAP1 = Estimator(
    name="snap1",
    init=init,
    step=step,
    defaults=hyper_defaults("snap1"),
    exact=False,
    unbiased=False,
    summary="SnAp-1: influence kept on the pattern of dF/dtheta; O(P) for tanh",
    influence=influence,
)
