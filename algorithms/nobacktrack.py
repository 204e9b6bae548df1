"""NoBackTrack (Ollivier, Tallec & Charpiat, 2015): the rank-one trick, term by term.

The influence ``G = ds/dtheta`` of each stream is kept as ``v w^T``. The exact recursion
``G' = J v w^T + sum_k e_k b_k^T`` (``J = dF/ds``, ``b_k = dF_k/dtheta``) is a sum of S + 1
rank-one terms ``(v_0, w_0) = (J v, w)``, ``(v_k, w_k) = (e_k, b_k)``. With independent signs
``eps_i`` and ``rho_i = sqrt(||w_i|| / ||v_i||)``:

    v' = sum_i eps_i rho_i v_i,      w' = sum_i eps_i w_i / rho_i,

so ``E[v' w'^T] = J v w^T + dF/dtheta``: unbiased for frozen ``theta``. Flipping every sign
leaves ``v' w'^T`` unchanged, so ``eps_0 = +1`` without loss of generality and the S signs of
the unit terms are drawn (``nu``). Each ratio is guarded as ``sqrt((a + eps) / (b + eps))``.
UORO is the special case of one shared ``rho`` for all unit terms; choosing ``rho_k`` per unit
balances the norms of each term and lowers the variance.

Tanh RNN closed form: ``b_k = d_k z`` on unit k's row (``d = leak (1 - tanh^2) >= 0``,
``z = [h; 1; x]``), so ``rho_k = sqrt((d_k ||z|| + eps) / (1 + eps))`` and

    v' = rho_0 J v + nu * rho,       w' = w / rho_0 + (nu * d / rho) z^T,

a few passes over ``w``: O(P). The GRU and the LSTM have closed forms of ``J v``, the row
norms ``||b_k||`` and the pull ``nu -> sum_k nu_k b_k / rho_k`` too (``gru_rows``,
``lstm_rows``), also O(P); other cells (and ``path: generic``) take them from ``torch.func``:
S + 1 reverse passes per step.
The gradient of the step's loss is ``(dl/ds . v) w`` plus the exact readout gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import Estimator, StepFn, StepResult, by_path
from rnnsweep.algorithms.forward_mode import param_rows, state_jvp
from rnnsweep.algorithms.gru_rows import gru_forward, gru_jvp, gru_pull, gru_row_norms
from rnnsweep.algorithms.lstm_rows import lstm_forward, lstm_jvp, lstm_pull, lstm_row_norms
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import hyper_defaults
from rnnsweep.algorithms.trajectory import add_outer_
from rnnsweep.algorithms.uoro import (
    RankOneState,
    advance_and_score,
    forget,
    init_rank_one,
    rank_one_gradient,
    rank_one_influence,
    rho,
    tanh_forward,
)


def init(
    cell: Cell, params: Params, loss_kind: str, batch: int, seeds: Tensor, hyper: dict[str, Any]
) -> RankOneState:
    return init_rank_one(
        cell, params, loss_kind, batch, seeds, hyper, "nobacktrack", tuple(CLOSED_FORMS)
    )


def _step_tanh(params: Params, state: RankOneState, x: Tensor, y: Tensor) -> StepResult:
    v, w, norms, eps = state.v, state.w, state.norms, state.eps
    z, d, nu, jv = tanh_forward(params, state, x)
    r0 = rho(norms, eps)[:, 0:1]
    rho_k = torch.mul(d, torch.linalg.vector_norm(z, dim=1, keepdim=True))
    rho_k.add_(eps).div_(1.0 + eps).sqrt_()
    torch.addcmul(jv.mul_(r0), nu, rho_k, out=v)
    w.div_(r0.unsqueeze(2))
    add_outer_(w, torch.mul(d, nu).div_(rho_k), z)
    loss, out, dh, g_readout = state.traj.score(params, y, state.readout_out)
    return StepResult(loss, out, rank_one_gradient(params, state, dh, g_readout))


def _update(
    params: Params,
    state: RankOneState,
    y: Tensor,
    nu: Tensor,
    s_next: Tensor,
    jv: Tensor,
    row_norms: Tensor,
    pull: Callable[[Tensor], Tensor],
) -> StepResult:
    """The rank-one update from one step's ``J v``, ``||b_k|| [B, S]`` and ``nu -> nu^T b``."""
    v, w, norms, eps = state.v, state.w, state.norms, state.eps
    torch.linalg.vector_norm(w, dim=1, out=norms[:, 0])
    torch.linalg.vector_norm(jv, dim=1, out=norms[:, 1])
    r0 = rho(norms, eps)[:, 0:1]
    rho_k = row_norms.add_(eps).div_(1.0 + eps).sqrt_()
    torch.addcmul(jv.mul_(r0), nu, rho_k, out=v)
    w.div_(r0).add_(pull(nu / rho_k))
    return advance_and_score(params, state, y, s_next)


def _closed_rows(
    forward: Callable[..., Any],
    jvp: Callable[[Any, Tensor], Tensor],
    row_norms: Callable[[Any], Tensor],
    pull: Callable[[Any, Tensor], Tensor],
) -> StepFn:
    """The step of a cell whose ``forward`` gives the factors that ``jvp``, ``row_norms`` and
    ``pull`` take (``gru_rows``, ``lstm_rows``)."""

    def step(params: Params, state: RankOneState, x: Tensor, y: Tensor) -> StepResult:
        nu = state.signs.next()
        cell_step = forward(state.traj.cell, params.theta, state.traj.s, x)
        jv = jvp(cell_step, state.v)
        norms = row_norms(cell_step)
        return _update(params, state, y, nu, cell_step.s_next, jv, norms, partial(pull, cell_step))

    return step


def _step_generic(params: Params, state: RankOneState, x: Tensor, y: Tensor) -> StepResult:
    cell, s = state.traj.cell, state.traj.s
    nu = state.signs.next()
    s_next, jv = state_jvp(cell, params.theta, s, x, state.v)
    row_norms, pull = param_rows(cell, params.theta, s, x)
    return _update(params, state, y, nu, s_next, jv, row_norms, pull)


# The cells with a closed-form step (``path: auto`` takes it; ``generic`` never does).
CLOSED_FORMS: dict[str, StepFn] = {
    "tanh": _step_tanh,
    "gru": _closed_rows(gru_forward, gru_jvp, gru_row_norms, gru_pull),
    "lstm": _closed_rows(lstm_forward, lstm_jvp, lstm_row_norms, lstm_pull),
}


def _step_closed(params: Params, state: RankOneState, x: Tensor, y: Tensor) -> StepResult:
    return CLOSED_FORMS[state.traj.cell.name](params, state, x, y)


step = by_path(_step_closed, _step_generic)


NOBACKTRACK = Estimator(
    name="nobacktrack",
    init=init,
    step=step,
    defaults=hyper_defaults("nobacktrack"),
    exact=False,
    unbiased=True,
    summary="NoBackTrack: rank-one influence, one rho per unit term; O(P)",
    influence=rank_one_influence,
    forget=forget,
)
