"""An estimator composed with the Kalman filter: the filter learns, the estimator supplies ``H``.

The filter runs over all parameters, flattened like ``Params.flat()``: ``[theta | readout]``,
``Q = P + o (n + 1)``. After the estimator's step the state is ``s_t`` and its influence is
``ds_t/dtheta ~ L R`` (``Estimator.influence``: ``L [B, S, r]``, ``R [B, r, P]``; rank one for
UORO/NoBackTrack, ``L = I`` and ``R = G`` for RTRL). The output ``o = V h + c`` with
``h = s[out_slice]`` has the Jacobian

    H = [V_out L R | H_readout]  [B, o, Q],    V_out L = V L[out_slice],
    d o_i / d readout[i, :] = [h; 1]   (zero for the other rows),

formed in O(o (r P + o n)) without ever forming ``ds/dtheta``. ``kalman.observation`` turns it
into the filter's ``(H, R, e)`` for the loss kind, and ``kalman.update`` moves the parameters.

Shared parameters (``theta [P]``) with B streams: one filter (batch 1) that sees the B streams'
outputs as one stacked observation of size ``B o`` with a block-diagonal ``R``. Per-stream
parameters (``[B, P]``): B independent filters.

The estimator's state must expose its forward pass as ``state.traj`` (``cell``, ``h``,
``loss_kind``), as every influence-based estimator here does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import kalman
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import Estimator, StepResult
from rnnsweep.algorithms.kalman import P0, PROCESS_NOISE, KalmanState
from rnnsweep.algorithms.params import Params


def block_sizes(cell: Cell, outputs: int) -> list[int]:
    """Decoupled-EKF blocks in ``Params.flat()`` order.

    One per unit's incoming weights per gate (``gates * n`` blocks of ``n + 1 + m``), then one
    per readout row (``o`` blocks of ``n + 1``).
    """
    n, m = cell.hidden, cell.inputs
    return [n + 1 + m] * (cell.gates * n) + [n + 1] * outputs


def init_filter(
    cell: Cell, params: Params, batch: int, structure: str = "diagonal", p0: float = P0
) -> KalmanState:
    """A filter for ``params``: one (shared parameters) or ``batch`` (per-stream parameters)."""
    outputs = params.readout.shape[-2]
    q_size = cell.num_params + outputs * (cell.hidden + 1)
    blocks = block_sizes(cell, outputs) if structure == "block" else None
    filters = batch if params.per_stream else 1
    return kalman.init(
        q_size, filters, structure, p0, blocks, params.theta.dtype, params.theta.device
    )


def _check_estimator(estimator: Estimator) -> None:
    if estimator.influence is None:
        raise ValueError(
            f"estimator {estimator.name!r} keeps no influence ds/dtheta, so the Kalman filter "
            "cannot form its observation Jacobian; use one with an influence (e.g. uoro, rtrl)"
        )


def _trajectory(estimator: Estimator, est_state: Any) -> Any:
    traj = getattr(est_state, "traj", None)
    if traj is None or not all(hasattr(traj, a) for a in ("cell", "h", "loss_kind")):
        raise ValueError(
            f"estimator {estimator.name!r}: its state has no forward pass 'traj' "
            "(cell, h, loss_kind) for the Kalman filter to read"
        )
    return traj


def observation_jacobian(estimator: Estimator, params: Params, est_state: Any) -> Tensor:
    """``do/d[theta | readout] [B, o, Q]`` at the current state, from the estimator's influence."""
    _check_estimator(estimator)
    traj = _trajectory(estimator, est_state)
    cell = traj.cell
    n = cell.hidden
    h = traj.h
    batch = h.shape[0]
    outputs = params.readout.shape[-2]
    left, right = estimator.influence(est_state)
    vl = torch.matmul(params.readout[..., :n], left[:, cell.out_slice, :])  # [B, o, r]
    h_theta = torch.bmm(vl, right)  # [B, o, P]
    h_read = h.new_zeros(batch, outputs, outputs, n + 1)
    h_read.diagonal(dim1=1, dim2=2)[:, :n].copy_(h.unsqueeze(2).expand(-1, -1, outputs))
    h_read.diagonal(dim1=1, dim2=2)[:, n].fill_(1.0)
    return torch.cat([h_theta, h_read.view(batch, outputs, -1)], dim=2)


def unflatten(flat: Tensor, like: Params) -> Params:
    """``[..., Q]`` back to ``Params`` shaped like ``like``."""
    p = like.theta.shape[-1]
    return Params(flat[..., :p], flat[..., p:].reshape(like.readout.shape))


def filtered_step(
    estimator: Estimator,
    params: Params,
    est_state: Any,
    kalman_state: KalmanState,
    x: Tensor,
    y: Tensor,
    *,
    process_noise: float | Tensor = PROCESS_NOISE,
    obs_noise: float | Tensor | None = None,
) -> tuple[StepResult, Params]:
    """The estimator's step, then one filter update: ``(step result, new parameters)``.

    ``est_state`` and ``kalman_state`` are updated in place; ``params`` is not modified.
    ``obs_noise`` defaults to ``kalman.OBS_NOISE[loss_kind]``.
    """
    _check_estimator(estimator)
    _trajectory(estimator, est_state)
    outputs = params.readout.shape[-2]
    q_size = params.theta.shape[-1] + outputs * params.readout.shape[-1]
    if kalman_state.q_size != q_size:
        raise ValueError(
            f"Kalman state covers {kalman_state.q_size} parameters, these params have {q_size}"
        )
    batch = x.shape[0]
    filters = batch if params.per_stream else 1
    if kalman_state.batch != filters:
        raise ValueError(
            f"Kalman state has {kalman_state.batch} filters, expected {filters} for "
            f"{'per-stream' if params.per_stream else 'shared'} parameters and {batch} streams"
        )
    result = estimator.step(params, est_state, x, y)
    h_out = observation_jacobian(estimator, params, est_state)
    loss_kind = est_state.traj.loss_kind
    H, R, e = kalman.observation(loss_kind, result.output, y, h_out, obs_noise)
    if params.per_stream:
        theta = params.flat()
    else:
        theta = params.flat().unsqueeze(0)
        H = H.reshape(1, batch * outputs, q_size)
        e = e.reshape(1, batch * outputs)
        eye = torch.eye(batch, dtype=R.dtype, device=R.device)
        R = torch.einsum("ab,aij->aibj", eye, R).reshape(1, batch * outputs, batch * outputs)
    new = kalman.update(kalman_state, theta, H, e, R, process_noise)
    if not params.per_stream:
        new = new.squeeze(0)
    return result, unflatten(new, params)
