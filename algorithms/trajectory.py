"""The forward half of every estimator step: the cell state of B streams and each step's loss.

Two forms. ``Trajectory`` is generic: ``s' = cell.step(theta, s, x)`` through the cell's pure
function. ``TanhTrajectory`` is the tanh RNN's closed form with no per-step allocation beyond
the pre-activation: it double-buffers ``z = [h; 1; x] [B, n + 1 + m]`` so that the column of
step t (``[h_{t-1}; 1; x_t]``, needed by every influence update) and ``[h_t; 1]`` (the readout's
input) are both slices, and returns ``d = dF/da = leak (1 - tanh(a)^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.loss import loss_and_delta
from rnnsweep.algorithms.params import Params


def matvec(matrix: Tensor, v: Tensor) -> Tensor:
    """``M v`` per stream: ``M [r, c]`` (shared) or ``[B, r, c]``, ``v [B, c]`` -> ``[B, r]``.

    Per stream it is a broadcast multiply-and-sum: ``bmm`` of many small matrix-vector
    products is several times slower on the CPU."""
    if matrix.dim() == 2:
        return torch.mm(v, matrix.t())
    return torch.linalg.vecdot(matrix, v.unsqueeze(1))


def add_outer_(acc: Tensor, u: Tensor, v: Tensor, beta: float = 1.0) -> Tensor:
    """``acc <- beta acc + u v^T`` per stream, in place: ``acc [B, r, c]``, ``u [B, r]``,
    ``v [B, c]``.

    One BLAS call (``baddbmm_``) for one stream run eagerly; otherwise a broadcast multiply-add,
    which is faster than batched BLAS for many small matrices on the CPU and which Inductor
    fuses into its loops under ``torch.compile``. The two agree to rounding (``beta = 0``
    overwrites ``acc``, as BLAS does)."""
    u3, v3 = u.unsqueeze(2), v.unsqueeze(1)
    if acc.shape[0] == 1 and not torch.compiler.is_compiling():
        return acc.baddbmm_(u3, v3, beta=beta)
    if beta == 0.0:
        return acc.copy_(u3 * v3)
    if beta != 1.0:
        acc.mul_(beta)
    return acc.addcmul_(u3, v3)


def unit_blocks(cell: Cell, theta: Tensor) -> Tensor:
    """``theta`` as gate blocks ``[(B,) n, n + 1 + m]`` (tanh: the single block)."""
    n, m = cell.hidden, cell.inputs
    return theta.view(theta.shape[:-1] + (n, n + 1 + m))


class Trajectory:
    """Generic forward pass: state ``s [B, S]``."""

    def __init__(self, cell: Cell, loss_kind: str, batch: int, dtype: torch.dtype, device) -> None:
        self.cell = cell
        self.loss_kind = loss_kind
        self.s = torch.zeros(batch, cell.state_size, dtype=dtype, device=device)
        self.t = 0

    @property
    def h(self) -> Tensor:
        return self.s[:, self.cell.out_slice]

    @property
    def state(self) -> Tensor:
        """The cell state ``s_t [B, S]``."""
        return self.s

    def set_state(self, s: Tensor) -> None:
        self.s = s.to(dtype=self.s.dtype, device=self.s.device).expand_as(self.s).clone()

    def score(
        self, params: Params, y: Tensor, grad_out: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(loss [B], output [B, o], dl/ds [B, S], dl/dreadout)`` at the current state; a
        shared readout's gradient written into ``grad_out`` when given."""
        hb = torch.cat([self.h, torch.ones_like(self.s[:, :1])], dim=1)
        out = readout_.output(params.readout, hb)
        loss, delta = loss_and_delta(self.loss_kind, out, y)
        dh, g_readout = readout_.backward(params.readout, delta, hb, grad_out)
        ds = torch.zeros_like(self.s)
        ds[:, self.cell.out_slice] = dh
        return loss, out, ds, g_readout


class TanhTrajectory:
    """Closed-form tanh forward pass over double-buffered columns ``z = [h; 1; x]``."""

    def __init__(self, cell: Cell, loss_kind: str, batch: int, dtype: torch.dtype, device) -> None:
        n = cell.hidden
        self.cell = cell
        self.loss_kind = loss_kind
        self.z = torch.zeros(2, batch, n + 1 + cell.inputs, dtype=dtype, device=device)
        self.z[:, :, n] = 1.0
        self.cur = 0  # z[cur] holds [h_t; 1; .]
        self.t = 0
        self._one = torch.ones((), dtype=dtype, device=device)

    @property
    def h(self) -> Tensor:
        return self.z[self.cur, :, : self.cell.hidden]

    @property
    def hb(self) -> Tensor:
        """``[h_t; 1]``: the readout's input."""
        return self.z[self.cur, :, : self.cell.hidden + 1]

    def advance(self, blocks: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One step; returns ``(z_t = [h_{t-1}; 1; x_t] [B, k], d [B, n])``."""
        n, leak = self.cell.hidden, self.cell.leak
        z_prev, z_next = self.z[self.cur], self.z[1 - self.cur]
        z_prev[:, n + 1 :].copy_(x)
        pre = matvec(blocks, z_prev)
        h_next = z_next[:, :n]
        if leak == 1.0:
            torch.tanh(pre, out=h_next)
            d = torch.addcmul(self._one, h_next, h_next, value=-1.0)
        else:
            act = torch.tanh(pre)
            d = torch.addcmul(self._one, act, act, value=-1.0).mul_(leak)
            torch.add(z_prev[:, :n], act, alpha=leak / (1.0 - leak), out=h_next).mul_(1.0 - leak)
        self.cur = 1 - self.cur
        self.t += 1
        return z_prev, d

    def score(
        self, params: Params, y: Tensor, grad_out: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(loss [B], output [B, o], dl/dh [B, n], dl/dreadout)`` at the current state; a
        shared readout's gradient written into ``grad_out`` when given."""
        hb = self.hb
        out = readout_.output(params.readout, hb)
        loss, delta = loss_and_delta(self.loss_kind, out, y)
        dh, g_readout = readout_.backward(params.readout, delta, hb, grad_out)
        return loss, out, dh, g_readout

    @property
    def state(self) -> Tensor:
        """The cell state ``s_t = h_t [B, n]`` (a view of the current buffer)."""
        return self.h

    def set_state(self, h: Tensor) -> None:
        self.h.copy_(h)
