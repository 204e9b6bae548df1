"""UORO, unbiased online recurrent optimisation (Tallec & Ollivier, 2017).

The influence ``G = ds/dtheta [S, P]`` of each stream is kept as a rank-one ``v w^T``
(``v [B, S]``, ``w [B, P]``). With ``nu`` uniform in ``{+-1}^S``,

    v' = rho0 J v + rho1 nu,        w' = w / rho0 + (nu^T dF/dtheta) / rho1,
    rho0 = sqrt(||w|| / ||J v||),   rho1 = sqrt(||nu^T dF/dtheta|| / ||nu||),

so that ``E[v' w'^T] = J v w^T + dF/dtheta`` (``J = dF/ds``): unbiased for frozen ``theta``.
Both ratios are guarded, ``sqrt((a + eps) / (b + eps))``, which keeps them finite when an
influence or a Jacobian product vanishes and leaves the estimate unbiased (any positive rho
does). The gradient of the step's loss is ``(dl/ds . v) w`` plus the exact readout gradient.

For the tanh RNN ``nu^T dF/dtheta = (nu * d) z^T`` (``z = [h; 1; x]``), so one step costs a few
passes over ``w``: O(P). The GRU and the LSTM take ``J v`` and the pull ``nu^T dF/dtheta`` from
the closed forms NoBackTrack uses (``gru_rows``, ``lstm_rows``). Other cells (and ``path:
generic``) use ``torch.func`` (``jvp`` for ``J v``, ``vjp`` for ``nu^T dF/dtheta``), which is
also O(P).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import (
    Estimator,
    LentGradient,
    StepFn,
    StepResult,
    by_path,
    use_closed_form,
)
from rnnsweep.algorithms.forward_mode import param_vjp, state_jvp
from rnnsweep.algorithms.gru_rows import gru_forward, gru_jvp, gru_pull
from rnnsweep.algorithms.lstm_rows import lstm_forward, lstm_jvp, lstm_pull
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import hyper_defaults
from rnnsweep.algorithms.signs import SignStream
from rnnsweep.algorithms.trajectory import (
    TanhTrajectory,
    Trajectory,
    add_outer_,
    matvec,
    unit_blocks,
)


@dataclass
class RankOneState(LentGradient):
    """Shared by UORO and NoBackTrack: ``G ~ v w^T`` per stream."""

    traj: TanhTrajectory | Trajectory
    v: Tensor  # [B, S]
    w: Tensor  # [B, P] (closed form: a [B, n, n + 1 + m] view of the same storage)
    signs: SignStream
    eps: float
    closed_form: bool
    norms: Tensor  # [B, 4] scratch: ||w||, ||J v||, a, b


def init_rank_one(
    cell: Cell,
    params: Params,
    loss_kind: str,
    batch: int,
    seeds: Tensor,
    hyper: dict[str, Any],
    name: str,
    cells: tuple[str, ...] = ("tanh",),
) -> RankOneState:
    """``cells``: those ``name`` has a closed form for; the tanh one keeps a ``TanhTrajectory``
    and ``w`` as unit blocks, the others the generic layout."""
    dtype, device = params.theta.dtype, params.theta.device
    closed = use_closed_form(cell, hyper["path"], name, cells)
    tanh = closed and cell.name == "tanh"
    traj = (TanhTrajectory if tanh else Trajectory)(cell, loss_kind, batch, dtype, device)
    v = torch.zeros(batch, cell.state_size, dtype=dtype, device=device)
    w = torch.zeros(batch, cell.num_params, dtype=dtype, device=device)
    if tanh:
        w = w.view(batch, cell.hidden, cell.hidden + 1 + cell.inputs)
    signs = SignStream(seeds, cell.state_size, dtype)
    norms = torch.empty(batch, 4, dtype=dtype, device=device)
    norms[:, 3] = cell.state_size**0.5  # ||nu||, constant
    return RankOneState(traj, v, w, signs, hyper["eps"], closed, norms)


def rank_one_gradient(params: Params, state: RankOneState, ds: Tensor, g_readout: Tensor) -> Params:
    """``(dl/ds . v) w`` and the exact readout gradient (``state.grad_out`` itself, when lent:
    the readout's part already written there by ``score``)."""
    scale = torch.linalg.vecdot(ds, state.v)
    out = state.grad_out
    if out is not None and not params.per_stream:
        readout_.reduce_streams(state.w, scale, shared=True, out=out.theta)
        return out
    g_theta = readout_.reduce_streams(state.w, scale, shared=not params.per_stream)
    return Params(g_theta.reshape(params.theta.shape), g_readout)


def rank_one_influence(state: RankOneState) -> tuple[Tensor, Tensor]:
    """``(v [B, S, 1], w [B, 1, P])``: ``ds/dtheta ~ v w^T``."""
    batch = state.v.shape[0]
    return state.v.unsqueeze(2), state.w.reshape(batch, 1, -1)


def forget(state: RankOneState, gamma: float) -> None:
    """``G ~ v w^T -> gamma G``: ``v`` scaled in place (``influence_decay``)."""
    state.v.mul_(gamma)


def rho(norms: Tensor, eps: float) -> Tensor:
    """``sqrt((a + eps) / (b + eps))`` for columns (a, b) = (0, 1) and (2, 3): ``[B, 2]``."""
    return norms[:, 0::2].add(eps).div_(norms[:, 1::2].add(eps)).sqrt_()


def tanh_forward(
    params: Params, state: RankOneState, x: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The tanh step shared by UORO and NoBackTrack: ``(z, d, nu, J v)``, with ``||w||`` and
    ``||J v||`` written to ``norms[:, 0]`` and ``norms[:, 1]``."""
    traj, v, norms = state.traj, state.v, state.norms
    cell = traj.cell
    blocks = unit_blocks(cell, params.theta)
    nu = state.signs.next()
    z, d = traj.advance(blocks, x)
    jv = matvec(blocks[..., : cell.hidden], v).mul_(d)
    if cell.leak != 1.0:
        jv.add_(v, alpha=1.0 - cell.leak)
    torch.linalg.vector_norm(state.w, dim=(1, 2), out=norms[:, 0])
    torch.linalg.vector_norm(jv, dim=1, out=norms[:, 1])
    return z, d, nu, jv


def _step_tanh(params: Params, state: RankOneState, x: Tensor, y: Tensor) -> StepResult:
    v, w, norms = state.v, state.w, state.norms
    z, d, nu, jv = tanh_forward(params, state, x)
    torch.mul(
        torch.linalg.vector_norm(d, dim=1), torch.linalg.vector_norm(z, dim=1), out=norms[:, 2]
    )
    r = rho(norms, state.eps)
    r0, r1 = r[:, 0:1], r[:, 1:2]
    torch.addcmul(jv.mul_(r0), nu, r1, out=v)
    w.div_(r0.unsqueeze(2))
    add_outer_(w, torch.mul(d, nu).div_(r1), z)
    loss, out, dh, g_readout = state.traj.score(params, y, state.readout_out)
    return StepResult(loss, out, rank_one_gradient(params, state, dh, g_readout))


def _update(
    params: Params, state: RankOneState, y: Tensor, nu: Tensor, s_next: Tensor, jv: Tensor,
    nu_f: Tensor,
) -> StepResult:
    """The rank-one update from one step's ``J v [B, S]`` and ``nu^T dF/dtheta [B, P]``."""
    v, w, norms = state.v, state.w, state.norms
    torch.linalg.vector_norm(w, dim=1, out=norms[:, 0])
    torch.linalg.vector_norm(jv, dim=1, out=norms[:, 1])
    torch.linalg.vector_norm(nu_f, dim=1, out=norms[:, 2])
    r = rho(norms, state.eps)
    r0, r1 = r[:, 0:1], r[:, 1:2]
    torch.addcmul(jv.mul_(r0), nu, r1, out=v)
    w.div_(r0).add_(nu_f.div_(r1))
    return advance_and_score(params, state, y, s_next)


def advance_and_score(params: Params, state: RankOneState, y: Tensor, s_next: Tensor) -> StepResult:
    """Move the trajectory to ``s_next [B, S]`` and score it: the step's loss, output and
    gradient ``(dl/ds . v) w`` (the generic-layout tail of UORO's and NoBackTrack's steps)."""
    traj = state.traj
    traj.s = s_next
    traj.t += 1
    loss, out, ds, g_readout = traj.score(params, y, state.readout_out)
    return StepResult(loss, out, rank_one_gradient(params, state, ds, g_readout))


def _closed_rows(
    forward: Callable[..., Any],
    jvp: Callable[[Any, Tensor], Tensor],
    pull: Callable[[Any, Tensor], Tensor],
) -> StepFn:
    """The step of a cell whose ``forward`` gives the factors ``jvp`` and ``pull`` take."""

    def step(params: Params, state: RankOneState, x: Tensor, y: Tensor) -> StepResult:
        nu = state.signs.next()
        cell_step = forward(state.traj.cell, params.theta, state.traj.s, x)
        jv = jvp(cell_step, state.v)
        return _update(params, state, y, nu, cell_step.s_next, jv, pull(cell_step, nu))

    return step


def _step_generic(params: Params, state: RankOneState, x: Tensor, y: Tensor) -> StepResult:
    traj = state.traj
    cell = traj.cell
    nu = state.signs.next()
    s_next, jv = state_jvp(cell, params.theta, traj.s, x, state.v)
    nu_f = param_vjp(cell, params.theta, traj.s, x, nu)
    return _update(params, state, y, nu, s_next, jv, nu_f)


# The cells with a closed-form step (``path: auto`` takes it; ``generic`` never does).
CLOSED_FORMS: dict[str, StepFn] = {
    "tanh": _step_tanh,
    "gru": _closed_rows(gru_forward, gru_jvp, gru_pull),
    "lstm": _closed_rows(lstm_forward, lstm_jvp, lstm_pull),
}


def _step_closed(params: Params, state: RankOneState, x: Tensor, y: Tensor) -> StepResult:
    return CLOSED_FORMS[state.traj.cell.name](params, state, x, y)


step = by_path(_step_closed, _step_generic)


def init(
    cell: Cell, params: Params, loss_kind: str, batch: int, seeds: Tensor, hyper: dict[str, Any]
) -> RankOneState:
    return init_rank_one(cell, params, loss_kind, batch, seeds, hyper, "uoro", tuple(CLOSED_FORMS))


UORO = Estimator(
    name="uoro",
    init=init,
    step=step,
    defaults=hyper_defaults("uoro"),
    exact=False,
    unbiased=True,
    summary="UORO: rank-one influence v w^T, one global rho pair; O(P)",
    influence=rank_one_influence,
    forget=forget,
)
