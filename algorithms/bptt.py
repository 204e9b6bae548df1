"""Backpropagation through time: the exact gradient of a whole recorded stream (the reference).

``bptt_gradient`` unrolls ``s_t = F(theta, s_{t-1}, x_t)`` for ``t = 1..T`` from ``s_0`` with
autograd and returns the gradient of ``sum_t l_t`` (per stream for per-stream parameters, the
mean over streams for shared ones). As an online estimator, ``bptt`` records the stream and
returns that gradient at ``flush``: memory O(T (S + m)), offline by nature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import Estimator, StepResult
from rnnsweep.algorithms.loss import loss as loss_fn
from rnnsweep.algorithms.params import Params


def _unroll_losses(
    cell: Cell, loss_kind: str, theta: Tensor, readout: Tensor, s0: Tensor, xs: Tensor, ys: Tensor
) -> tuple[Tensor, Tensor]:
    """``(losses [T, B], final state [B, S])`` of the unrolled stream (differentiable)."""
    s, losses = s0, []
    for x, y in zip(xs, ys, strict=True):
        s = cell.step(theta, s, x)
        h = s[:, cell.out_slice]
        hb = torch.cat([h, torch.ones_like(h[:, :1])], dim=1)
        losses.append(loss_fn(loss_kind, readout_.output(readout, hb), y))
    return torch.stack(losses), s


def bptt_gradient(
    cell: Cell, params: Params, loss_kind: str, xs: Tensor, ys: Tensor, s0: Tensor | None = None
) -> tuple[Tensor, Params]:
    """``(losses [T, B], gradient of sum_t l_t)``; ``xs [T, B, m]``, ``ys [T, B(, o)]``."""
    batch = xs.shape[1]
    if s0 is None:
        s0 = torch.zeros(batch, cell.state_size, dtype=params.theta.dtype, device=xs.device)
    with torch.enable_grad():
        theta = params.theta.detach().clone().requires_grad_(True)
        readout = params.readout.detach().clone().requires_grad_(True)
        losses, _ = _unroll_losses(cell, loss_kind, theta, readout, s0.detach(), xs, ys)
        total = losses.sum() if params.per_stream else losses.sum() / batch
        g_theta, g_readout = torch.autograd.grad(total, (theta, readout))
    return losses.detach(), Params(g_theta, g_readout)


@dataclass
class BpttState:
    cell: Cell
    loss_kind: str
    s: Tensor  # [B, S] current state
    s_start: Tensor  # state at the first recorded step
    xs: list[Tensor] = field(default_factory=list)
    ys: list[Tensor] = field(default_factory=list)
    t: int = 0


def init(
    cell: Cell, params: Params, loss_kind: str, batch: int, seeds: Tensor, hyper: dict[str, Any]
) -> BpttState:
    s = torch.zeros(batch, cell.state_size, dtype=params.theta.dtype, device=params.theta.device)
    return BpttState(cell, loss_kind, s, s.clone())


def step(params: Params, state: BpttState, x: Tensor, y: Tensor) -> StepResult:
    cell = state.cell
    state.s = cell.step(params.theta, state.s, x)
    state.xs.append(x.clone())
    state.ys.append(y.clone())
    state.t += 1
    h = state.s[:, cell.out_slice]
    out = readout_.output(params.readout, torch.cat([h, torch.ones_like(h[:, :1])], dim=1))
    return StepResult(loss_fn(state.loss_kind, out, y), out, None)


def flush(params: Params, state: BpttState) -> Params | None:
    if not state.xs:
        return None
    xs, ys = torch.stack(state.xs), torch.stack(state.ys)
    _, grad = bptt_gradient(state.cell, params, state.loss_kind, xs, ys, state.s_start)
    state.xs.clear()
    state.ys.clear()
    state.s_start = state.s.clone()
    return grad


BPTT = Estimator(
    name="bptt",
    init=init,
    step=step,
    flush=flush,
    defaults={},
    exact=True,
    unbiased=True,
    summary="full backprop through the recorded stream at flush (reference, offline)",
)
