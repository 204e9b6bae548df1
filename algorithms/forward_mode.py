"""Derivatives of a cell through ``torch.func``, batched over streams with ``vmap``.

For ``s' = F(theta, s, x)``: ``J v`` with ``J = dF/ds`` (one forward-mode product, ``jvp``),
``u^T dF/dtheta`` (one reverse-mode product, ``vjp``), and the full Jacobians
``J [B, S, S]`` and ``dF/dtheta [B, S, P]`` for the exact and dense estimators. ``theta`` is
``[P]`` (shared, not batched by ``vmap``) or ``[B, P]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from rnnsweep.algorithms.cell import Cell


def _theta_dim(theta: Tensor) -> int | None:
    return None if theta.dim() == 1 else 0


def state_jvp(cell: Cell, theta: Tensor, s: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(F(theta, s, x), J v)``, both ``[B, S]``."""

    def one(th: Tensor, s_: Tensor, x_: Tensor, v_: Tensor) -> tuple[Tensor, Tensor]:
        return jvp(lambda state: cell.fn(th, state, x_), (s_,), (v_,))

    return vmap(one, in_dims=(_theta_dim(theta), 0, 0, 0))(theta, s, x, v)


def param_vjp(cell: Cell, theta: Tensor, s: Tensor, x: Tensor, u: Tensor) -> Tensor:
    """``u^T dF/dtheta [B, P]`` for cotangents ``u [B, S]``."""

    def one(th: Tensor, s_: Tensor, x_: Tensor, u_: Tensor) -> Tensor:
        _, pull = vjp(lambda p: cell.fn(p, s_, x_), th)
        return pull(u_)[0]

    return vmap(one, in_dims=(_theta_dim(theta), 0, 0, 0))(theta, s, x, u)


def jacobians(cell: Cell, theta: Tensor, s: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(F [B, S], J = dF/ds [B, S, S], dF/dtheta [B, S, P])``."""

    def one(th: Tensor, s_: Tensor, x_: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        j_s = jacfwd(lambda state: cell.fn(th, state, x_))(s_)
        j_theta = jacrev(lambda p: cell.fn(p, s_, x_))(th)
        return cell.fn(th, s_, x_), j_s, j_theta

    return vmap(one, in_dims=(_theta_dim(theta), 0, 0))(theta, s, x)


def param_rows(
    cell: Cell, theta: Tensor, s: Tensor, x: Tensor
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``(||dF_k/dtheta|| [B, S], u -> u^T dF/dtheta [B, P])``.

    S + 1 reverse passes through the batched cell with per-stream copies of ``theta`` (a
    per-sample-gradient layout that batches well), the rows never stored; or, when P <= S,
    P forward-mode products giving ``dF/dtheta`` whole.
    """
    batch = s.shape[0]
    if theta.shape[-1] <= s.shape[1]:  # few parameters: P forward-mode products are cheaper

        def one(th: Tensor, s_: Tensor, x_: Tensor) -> Tensor:
            return jacfwd(lambda p: cell.fn(p, s_, x_))(th)

        jac = vmap(one, in_dims=(_theta_dim(theta), 0, 0))(theta, s, x)
        return torch.linalg.vector_norm(jac, dim=2), lambda u: torch.bmm(
            u.unsqueeze(1), jac
        ).squeeze(1)
    with torch.enable_grad():
        leaf = theta.detach().expand(batch, -1).clone().requires_grad_(True)
        out = vmap(cell.fn)(leaf, s.detach(), x.detach())
        norms = torch.stack(
            [
                torch.linalg.vector_norm(
                    torch.autograd.grad(out[:, k].sum(), leaf, retain_graph=True)[0], dim=1
                )
                for k in range(out.shape[1])
            ],
            dim=1,
        )

    def pull(u: Tensor) -> Tensor:
        with torch.enable_grad():
            return torch.autograd.grad(out, leaf, u)[0]

    return norms, pull
