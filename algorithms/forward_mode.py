"""Derivatives of a cell through ``torch.func``, batched over streams with ``vmap``.

For ``s' = F(theta, s, x)``: ``J v`` with ``J = dF/ds`` (one forward-mode product, ``jvp``),
``u^T dF/dtheta`` (one reverse-mode product, ``vjp``), and the full Jacobians
``J [B, S, S]`` and ``dF/dtheta [B, S, P]`` for the exact and dense estimators. ``theta`` is
``[P]`` (shared, not batched by ``vmap``) or ``[B, P]``.
"""

from __future__ import annotations

from torch import Tensor
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from algorithms.cell import Cell


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


def param_jacobian(cell: Cell, theta: Tensor, s: Tensor, x: Tensor) -> Tensor:
    """``dF/dtheta [B, S, P]`` (S reverse-mode products per stream)."""

    def one(th: Tensor, s_: Tensor, x_: Tensor) -> Tensor:
        return jacrev(lambda p: cell.fn(p, s_, x_))(th)

    return vmap(one, in_dims=(_theta_dim(theta), 0, 0))(theta, s, x)
