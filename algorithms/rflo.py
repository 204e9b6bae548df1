"""RFLO, random-feedback local online learning (Murray, 2019), for the tanh RNN.

Each parameter ``Theta[j, l]`` (unit j's weight on ``z_l``, ``z = [h; 1; x]``) keeps a local
eligibility trace that ignores every path through other units (``J ~ (1 - leak) I``):

    E' = (1 - leak) E + d z^T,          E [B, n, n + 1 + m],  d = leak (1 - tanh^2),

i.e. ``E'[j, l] = (1 - leak) E[j, l] + d_j z_l`` with the step's ``z = [h_{t-1}; 1; x_t]``. The
output error ``delta = dl/do [B, o]`` reaches the units through a fixed feedback matrix
``Bfb [n, o]`` instead of the readout's ``V^T``:

    g[j, l] = (Bfb delta)_j E[j, l],

plus the exact readout gradient. ``feedback="random"`` draws ``Bfb ~ N(0, 1/o)`` once, from a
generator seeded by ``feedback_seed`` (the same matrix on every device and dtype);
``feedback="readout"`` uses ``V^T``, the current readout weights. With ``leak = 1`` and readout
feedback this is exactly the gradient of BPTT truncated to one step. Biased; O(P) per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator_base import Estimator, LentGradient, StepResult
from rnnsweep.algorithms.loss import loss_and_delta
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import hyper_defaults
from rnnsweep.algorithms.trajectory import TanhTrajectory, add_outer_, unit_blocks


@dataclass
class RfloState(LentGradient):
    traj: TanhTrajectory
    e: Tensor  # [B, n, n + 1 + m] eligibility traces
    feedback: Tensor | None  # Bfb [n, o]; None: the readout's V^T


def random_feedback(
    hidden: int, outputs: int, seed: int, dtype: torch.dtype, device: torch.device | str
) -> Tensor:
    """``Bfb [n, o]`` with entries ``N(0, 1/o)``, drawn in float64 on the CPU from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(hidden, outputs, generator=generator, dtype=torch.float64)
    return matrix.div_(outputs**0.5).to(dtype=dtype, device=device)


def init(
    cell: Cell, params: Params, loss_kind: str, batch: int, seeds: Tensor, hyper: dict[str, Any]
) -> RfloState:
    dtype, device = params.theta.dtype, params.theta.device
    n, k = cell.hidden, cell.hidden + 1 + cell.inputs
    traj = TanhTrajectory(cell, loss_kind, batch, dtype, device)
    e = torch.zeros(batch, n, k, dtype=dtype, device=device)
    feedback = None
    if hyper["feedback"] == "random":
        outputs = params.readout.shape[-2]
        feedback = random_feedback(n, outputs, hyper["feedback_seed"], dtype, device)
    return RfloState(traj, e, feedback)


def step(params: Params, state: RfloState, x: Tensor, y: Tensor) -> StepResult:
    traj, e = state.traj, state.e
    cell = traj.cell
    z, d = traj.advance(unit_blocks(cell, params.theta), x)
    add_outer_(e, d, z, beta=1.0 - cell.leak)
    hb = traj.hb
    out = readout_.output(params.readout, hb)
    loss, delta = loss_and_delta(traj.loss_kind, out, y)
    lent = state.grad_out
    dh, g_readout = readout_.backward(params.readout, delta, hb, state.readout_out)
    fb = dh if state.feedback is None else torch.mm(delta, state.feedback.t())  # [B, n]
    if params.per_stream:
        g_theta = e * fb.unsqueeze(2)
    elif e.shape[0] == 1:  # one stream: the product (einsum's overhead is most of a step here)
        into = None if lent is None else lent.theta.view(e.shape[1:])
        g_theta = torch.mul(e[0], fb[0].unsqueeze(1), out=into)
        if lent is not None:
            return StepResult(loss, out, lent)
    else:
        g_theta = torch.einsum("bj,bjl->jl", fb, e).div_(e.shape[0])
    return StepResult(loss, out, Params(g_theta.reshape(params.theta.shape), g_readout))


RFLO = Estimator(
    name="rflo",
    init=init,
    step=step,
    defaults=hyper_defaults("rflo"),
    exact=False,
    unbiased=False,
    summary="RFLO: local eligibility traces, fixed random feedback of the output error; O(P)",
    cells=("tanh",),
)
