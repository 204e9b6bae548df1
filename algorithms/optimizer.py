"""First-order optimizers over a tuple of parameter tensors, as (init, update) pairs.

Updates are in place on the parameter tensors (their views, e.g. a learner's shared params,
stay valid) and on the returned state. Learning rate at update ``t``: ``lr / (1 + decay sqrt(t))``
(the UORO paper's schedule). Gradients are clipped by their global norm first:
``g <- g min(1, clip / ||g||)`` (``clip = 0``: no clipping), without leaving the device.

- ``sgd``: ``theta <- theta - lr_t g``.
- ``adam``: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
  ``theta <- theta - lr_t (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "adam")


@dataclass
class OptimizerState:
    kind: str
    t: int = 0  # updates applied
    m: list[Tensor] = field(default_factory=list)
    v: list[Tensor] = field(default_factory=list)


def init(kind: str, params: Sequence[Tensor]) -> OptimizerState:
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; known: {', '.join(OPTIMIZERS)}, kalman")
    if kind == "adam":
        return OptimizerState(
            kind, 0, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        )
    return OptimizerState(kind)


def learning_rate(lr: float, decay: float, t: int) -> float:
    return lr / (1.0 + decay * t**0.5)


def clip_(grads: Sequence[Tensor], clip: float) -> Tensor:
    """Scale ``grads`` in place to global norm <= ``clip``; returns the norm before clipping."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if clip > 0:
        scale = torch.clamp(clip / (norm + 1e-12), max=1.0)
        for g in grads:
            g.mul_(scale)
    return norm


def update(
    state: OptimizerState,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    lr: float,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> OptimizerState:
    """One update of ``params`` in place with (already clipped) ``grads``."""
    state.t += 1
    if state.kind == "sgd":
        for p, g in zip(params, grads, strict=True):
            p.sub_(g, alpha=lr)
        return state
    correction1 = 1.0 - beta1**state.t
    correction2 = 1.0 - beta2**state.t
    for p, g, m, v in zip(params, grads, state.m, state.v, strict=True):
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v / correction2).sqrt_().add_(eps)
        p.addcdiv_(m, denom, value=-lr / correction1)
    return state
