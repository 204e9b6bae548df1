"""Truncated backpropagation through time, BPTT(k1, k2) of Williams & Peng (1990).

Hyperparameters: ``truncation`` (k2 = T, the window) and ``stride`` (k1, steps between
updates; 0 means ``= truncation``, else ``1 <= stride <= truncation``). The last T steps of each
stream are kept in ring buffers. Every ``stride`` steps, ``step`` returns the gradient of the
losses of the last ``stride`` steps, each backpropagated through the window of the last T steps
and stopped there (``s_{t-T}`` is a constant), with the current parameters and the stored
states and inputs; the other steps return ``grad=None``. ``stride == truncation`` is the
classic "update every T steps", ``stride == 1`` a sliding window with a gradient every step.
``flush`` returns the gradient of the losses not yet covered (or ``None``). The readout
gradient is exact: the sum of the covered steps' readout gradients. Gradients are sums over
the covered steps; over streams, per stream for per-stream parameters, the mean for shared
ones. With ``truncation`` >= the stream length the steps' gradients plus ``flush`` sum to BPTT.

Backward over the window, newest step first (``carried`` is zero at the newest step, and
``dl/dh_t|direct`` counts only for the last ``stride`` steps):

    dh_t = dl/dh_t|direct + carried,    da_t = dh_t * d_t,    carried = (1 - a) dh_t + da_t W

and ``dl/dTheta = sum_t da_t z_t^T`` for the tanh RNN (``z_t = [h_{t-1}; 1; x_t]``,
``d_t = a (1 - tanh^2)``, ``W = Theta[:, :n]``, ``a`` = leak): one ``[n, T B] x [T B, n + 1 + m]``
product per update. Other cells take ``(dh_t^T dF/dtheta, dh_t^T dF/ds)`` from ``torch.func.vjp``
of the cell at the stored ``(s_{t-1}, x_t)``. Memory O(T B (S + m)); cost O(T P / stride)
per step.

``dl/dh_t|direct`` is stored at step t (with that step's readout). With parameters that move
inside the window the two paths differ slightly: the closed form uses the ``d_t`` of the
forward pass with the current ``W``; the generic path re-linearises the cell at the stored
state with the current ``theta``. For frozen parameters they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import vjp, vmap

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import (
    Estimator,
    StepResult,
    use_closed_form,
)
from rnnsweep.algorithms.loss import loss_and_delta
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import hyper_defaults
from rnnsweep.algorithms.trajectory import TanhTrajectory, Trajectory, unit_blocks


@dataclass
class TbpttState:
    """Ring buffers over the last ``truncation`` steps; step t lives in slot ``t mod T``."""

    traj: TanhTrajectory | Trajectory
    closed_form: bool
    truncation: int  # T = k2
    stride: int  # k1
    inp: Tensor  # [T, B, n + 1 + m] z_t (closed form) | [T, B, S] s_{t-1} (generic)
    aux: Tensor  # [T, B, n] d_t (closed form) | [T, B, m] x_t (generic)
    direct: Tensor  # [T, B, n] dl/dh_t (closed form) | [T, B, S] dl/ds_t (generic)
    da: Tensor  # [T, B, n] backward scratch: da_t (closed form; empty for generic)
    carried: Tensor  # [B, n] backward scratch: dl/dh_{t-1} through the window (closed form)
    pos: int = 0  # slot of the next step
    filled: int = 0  # steps in the window, min(steps seen, T)
    pending: int = 0  # steps whose losses no update has covered yet
    # [B, o, n + 1]: per stream, the sum of the pending steps' readout gradients (one layout
    # for shared and per-stream parameters, so that a packed member's state is a lone one's)
    g_readout: Tensor | None = None


def window(hyper: dict[str, Any]) -> tuple[int, int]:
    """``(truncation, stride)`` with ``stride = 0`` resolved; ``ValueError`` naming the key."""
    truncation, stride = hyper["truncation"], hyper["stride"]
    if _truncation_problem(truncation):
        raise ValueError(f"tbptt: truncation={truncation!r}: {_truncation_problem(truncation)}")
    if _stride_problem(stride):
        raise ValueError(f"tbptt: stride={stride!r}: {_stride_problem(stride)}")
    stride = stride or truncation
    if stride > truncation:
        raise ValueError(f"tbptt: stride={stride} must be <= truncation={truncation}")
    return truncation, stride


def _truncation_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be an integer >= 1"
    return None


def _stride_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "must be an integer >= 0 (0: equal to truncation), and <= truncation"
    return None


def init(
    cell: Cell, params: Params, loss_kind: str, batch: int, seeds: Tensor, hyper: dict[str, Any]
) -> TbpttState:
    truncation, stride = window(hyper)
    dtype, device = params.theta.dtype, params.theta.device
    closed = use_closed_form(cell, hyper["path"], "tbptt")
    n, m, size = cell.hidden, cell.inputs, cell.state_size

    def ring(width: int) -> Tensor:
        return torch.zeros(truncation, batch, width, dtype=dtype, device=device)

    if closed:
        traj: TanhTrajectory | Trajectory = TanhTrajectory(cell, loss_kind, batch, dtype, device)
        inp, aux, direct, da = ring(n + 1 + m), ring(n), ring(n), ring(n)
    else:
        traj = Trajectory(cell, loss_kind, batch, dtype, device)
        inp, aux, direct = ring(size), ring(m), ring(size)
        da = torch.empty(0, dtype=dtype, device=device)
    carried = torch.zeros(batch, n if closed else 0, dtype=dtype, device=device)
    g_readout = torch.zeros(
        batch, params.readout.shape[-2], cell.hidden + 1, dtype=dtype, device=device
    )
    return TbpttState(
        traj, closed, truncation, stride, inp, aux, direct, da, carried, g_readout=g_readout
    )


def step(params: Params, state: TbpttState, x: Tensor, y: Tensor) -> StepResult:
    slot, traj = state.pos, state.traj
    cell = traj.cell
    if state.closed_form:
        z, d = traj.advance(unit_blocks(cell, params.theta), x)
        state.inp[slot].copy_(z)
        state.aux[slot].copy_(d)
        hb, direct = traj.hb, state.direct[slot]
    else:
        state.inp[slot].copy_(traj.s)
        state.aux[slot].copy_(x)
        traj.s = cell.step(params.theta, traj.s, x)
        traj.t += 1
        hb = torch.cat([traj.h, torch.ones_like(traj.s[:, :1])], dim=1)
        direct = state.direct[slot, :, cell.out_slice]
    loss, out = _score(params, state, y, hb, direct)
    state.pos = (slot + 1) % state.truncation
    state.filled = min(state.filled + 1, state.truncation)
    state.pending += 1
    grad = _update(params, state) if state.pending == state.stride else None
    return StepResult(loss, out, grad)


def _score(
    params: Params, state: TbpttState, y: Tensor, hb: Tensor, direct: Tensor
) -> tuple[Tensor, Tensor]:
    """``(loss [B], output [B, o])`` at ``hb = [h_t; 1]``; writes ``dl/dh_t = delta V`` into
    ``direct [B, n]`` (a ring slot) and adds ``delta hb^T`` to the pending per-stream readout
    gradient (``_update`` averages it over streams for a shared readout)."""
    readout = params.readout
    n = hb.shape[1] - 1
    out = readout_.output(readout, hb)
    loss, delta = loss_and_delta(state.traj.loss_kind, out, y)
    if readout.dim() == 2:
        torch.mm(delta, readout[:, :n], out=direct)
    else:
        direct.copy_(torch.linalg.vecdot(readout[:, :, :n].mT, delta.unsqueeze(1)))
    if state.pending == 0:
        torch.mul(delta.unsqueeze(2), hb.unsqueeze(1), out=state.g_readout)
    else:
        state.g_readout.addcmul_(delta.unsqueeze(2), hb.unsqueeze(1))
    return loss, out


def flush(params: Params, state: TbpttState) -> Params | None:
    """The gradient of the losses since the last update, through the window; ``None`` if none."""
    return _update(params, state) if state.pending else None


def _update(params: Params, state: TbpttState) -> Params:
    """Backpropagate the pending losses through the window and reset the pending sum."""
    if state.closed_form:
        g_theta = _theta_grad_tanh(params, state)
    else:
        g_theta = _theta_grad_generic(params, state)
    per_stream = state.g_readout
    g_readout = per_stream.clone() if params.readout.dim() == 3 else per_stream.mean(0)
    grad = Params(g_theta, g_readout)
    state.pending = 0
    return grad


def _theta_grad_tanh(params: Params, state: TbpttState) -> Tensor:
    cell = state.traj.cell
    n, leak = cell.hidden, cell.leak
    size, filled, pending, pos = state.truncation, state.filled, state.pending, state.pos
    blocks = unit_blocks(cell, params.theta)
    w = blocks[..., :n]  # [n, n] or [B, n, n]
    per_stream = w.dim() == 3
    da, d, direct, carried = state.da, state.aux, state.direct, state.carried
    carried3 = carried.unsqueeze(1)
    # da_t = dl/dh_t|direct * d_t over the pending steps (one or two contiguous slot ranges).
    start = pos - pending
    if start >= 0:
        torch.mul(direct[start:pos], d[start:pos], out=da[start:pos])
    else:
        torch.mul(direct[start:], d[start:], out=da[start:])
        torch.mul(direct[:pos], d[:pos], out=da[:pos])
    da_s, d_s = da.unbind(0), d.unbind(0)
    for j in range(filled):  # j = 0: the newest step
        slot = (pos - 1 - j) % size
        da_t = da_s[slot]
        if j >= pending:
            torch.mul(carried, d_s[slot], out=da_t)
        elif j > 0:
            da_t.addcmul_(carried, d_s[slot])
        if j == filled - 1:
            break
        # carried <- (1 - a) dh_t + da_t W; beta = 0 at the newest step ignores stale contents.
        beta = 0.0 if j == 0 else 1.0 - leak
        if per_stream:
            carried3.baddbmm_(da_t.unsqueeze(1), w, beta=beta)
        else:
            carried.addmm_(da_t, w, beta=beta)
        if leak != 1.0 and j < pending:
            carried.add_(direct[slot], alpha=1.0 - leak)
    batch = carried.shape[0]
    da_w, z_w = da[:filled], state.inp[:filled]
    if per_stream:
        return torch.bmm(da_w.permute(1, 2, 0), z_w.transpose(0, 1)).reshape(batch, -1)
    rows = filled * batch
    # (Z^T DA)^T: the faster orientation of the same [T B]-long contraction on CPU BLAS.
    g = torch.mm(z_w.reshape(rows, -1).t(), da_w.reshape(rows, n)).div_(batch)
    return g.t().reshape(-1)


def _theta_grad_generic(params: Params, state: TbpttState) -> Tensor:
    cell, theta = state.traj.cell, params.theta

    def one(th: Tensor, s: Tensor, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        _, pull = vjp(lambda p, s_: cell.fn(p, s_, x), th, s)
        return pull(u)

    pull = vmap(one, in_dims=(None if theta.dim() == 1 else 0, 0, 0, 0))
    size, pending, pos = state.truncation, state.pending, state.pos
    g_theta: Tensor | None = None
    carried: Tensor | None = None
    for j in range(state.filled):
        slot = (pos - 1 - j) % size
        if carried is None:
            u = state.direct[slot]
        elif j < pending:
            u = carried + state.direct[slot]
        else:
            u = carried
        g_step, carried = pull(theta, state.inp[slot], state.aux[slot], u)
        g_theta = g_step if g_theta is None else g_theta + g_step
    assert g_theta is not None
    return g_theta.mean(0) if theta.dim() == 1 else g_theta


TBPTT = Estimator(
    name="tbptt",
    init=init,
    step=step,
    flush=flush,
    defaults=hyper_defaults("tbptt"),
    exact=False,
    unbiased=False,
    summary=(
        "truncated BPTT(stride, truncation): losses of the last `stride` steps "
        "backpropagated through the last `truncation` steps; biased, exact only when "
        "truncation >= the stream length; O(truncation P / stride) per step"
    ),
)
