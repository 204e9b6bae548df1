"""UORO and NoBackTrack stacked in one rank-one state: one batched step for both.

Both keep each stream's influence as ``v w^T`` (``RankOneState``) and, on the tanh RNN's closed
form, update it as

    v' = rho_0 J v + nu * rho,        w' = w / rho_0 + (nu * d / rho) z^T,

where NoBackTrack's ``rho`` has one entry per unit, ``rho_k = sqrt((d_k ||z|| + eps) /
(1 + eps))``, and UORO's is one number per stream, ``rho_1 = sqrt((||d|| ||z|| + eps) /
(||nu|| + eps))``, broadcast over the units. So C estimators of B streams each are C B rows of
one state: one forward pass ``[C B, n] x [n, n + 1 + m]`` with the shared parameters, one
``J v``, one outer-product update of ``w``, with a row mask choosing each row's ``rho``. The
rows draw the signs their estimator would draw alone (counter-based per stream seed), so each
row is the lone estimator's step to rounding. The gradient is kept per estimator: ``[C, P]``,
the mean over that estimator's B streams of ``(dl/dh . v) w``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator import get_estimator
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.trajectory import add_outer_
from rnnsweep.algorithms.uoro import RankOneState, init_rank_one, rho, tanh_forward

RANK_ONE = ("uoro", "nobacktrack")


@dataclass
class StackState:
    rank: RankOneState  # C B rows, estimator c in rows [c B, (c + 1) B)
    count: int  # C
    batch: int  # B
    uoro_rows: Tensor  # [C B, 1] bool: rows that take UORO's single rho

    @property
    def traj(self):
        return self.rank.traj


def stackable(cell: Cell, names: Sequence[str], hyper: dict[str, dict[str, Any]]) -> list[str]:
    """The names of ``names`` that can share one stacked state: UORO and NoBackTrack on the
    tanh closed form, with the same ``eps`` (one per state) and no ``influence_decay``."""
    if cell.name != "tanh":
        return []
    found = []
    for name in names:
        if name not in RANK_ONE:
            continue
        merged = {**get_estimator(name).defaults, **hyper.get(name, {})}
        if merged["path"] in ("auto", "closed-form") and merged["influence_decay"] == 1.0:
            found.append((name, merged["eps"]))
    eps = {e for _, e in found}
    return [name for name, _ in found] if len(eps) == 1 else []


def init(
    cell: Cell,
    params: Params,
    loss_kind: str,
    batch: int,
    names: Sequence[str],
    seeds: Sequence[Tensor],
    hyper: dict[str, dict[str, Any]],
) -> StackState:
    """One state of ``len(names) * batch`` rows; ``seeds[c]`` are estimator c's ``[B]``."""
    first = {**get_estimator(names[0]).defaults, **hyper.get(names[0], {})}
    rows = len(names) * batch
    rank = init_rank_one(
        cell, params, loss_kind, rows, torch.cat(list(seeds)), first, "rank-one stack"
    )
    uoro = torch.tensor([name == "uoro" for name in names], device=params.theta.device)
    return StackState(rank, len(names), batch, uoro.repeat_interleave(batch).unsqueeze(1))


def _rows(t: Tensor, count: int) -> Tensor:
    return t.repeat(count, *([1] * (t.dim() - 1)))


def step(params: Params, state: StackState, s_prev: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """One step of every stacked estimator from ``s_prev [B, n]`` on ``x [B, m]``, ``y``
    (each estimator's B streams see the same ones): the theta gradients ``[C, P]``."""
    st, count, batch = state.rank, state.count, state.batch
    traj, v, w, norms, eps = st.traj, st.v, st.w, st.norms, st.eps
    traj.set_state(_rows(s_prev, count))
    z, d, nu, jv = tanh_forward(params, st, _rows(x, count))
    torch.mul(
        torch.linalg.vector_norm(d, dim=1), torch.linalg.vector_norm(z, dim=1), out=norms[:, 2]
    )
    r = rho(norms, eps)
    r0 = r[:, 0:1]
    per_unit = torch.mul(d, torch.linalg.vector_norm(z, dim=1, keepdim=True))
    per_unit.add_(eps).div_(1.0 + eps).sqrt_()
    rho_k = torch.where(state.uoro_rows, r[:, 1:2].expand_as(d), per_unit)
    torch.addcmul(jv.mul_(r0), nu, rho_k, out=v)
    w.div_(r0.unsqueeze(2))
    add_outer_(w, torch.mul(d, nu).div_(rho_k), z)
    _, _, dh, _ = traj.score(params, _rows(y, count))
    scale = torch.linalg.vecdot(dh, v)  # [C B]
    flat = w.reshape(count, batch, -1)
    grads = torch.bmm(scale.view(count, 1, batch), flat).squeeze(1)
    return grads.div_(batch) if batch > 1 else grads
