"""First-order optimizers over a tuple of parameter tensors, as (init, update) pairs.

Updates are in place on the parameter tensors (their views, e.g. a learner's shared params,
stay valid) and on the returned state. Learning rate at update ``t``: ``lr / (1 + decay sqrt(t))``
(the UORO paper's schedule). Gradients are clipped by their global norm first:
``g <- g min(1, clip / ||g||)`` (``clip = 0``: no clipping), without leaving the device.

- ``sgd``: ``theta <- theta - lr_t g``.
- ``adam``: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
  ``theta <- theta - lr_t (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

A packed population passes its members' learning rates as a tensor ``[pack]`` (float64, on the
parameters' device), and betas and eps as floats or ``[pack]`` tensors: parameters
``[pack, ...]`` then take row-wise steps, with no host synchronisation. With shared betas and
eps, ``adam_unit_steps`` computes the steps (torch's fused kernel where allowed:
``$RNNSWEEP_FUSED_ADAM=0`` forces public operations).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "adam")
FUSED_ADAM_ENV = "RNNSWEEP_FUSED_ADAM"  # 0: never torch's private fused Adam kernel
FUSED_ADAM_AVAILABLE = hasattr(torch, "_fused_adam_")


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
    lr: float | Tensor,
    *,
    beta1: float | Tensor = 0.9,
    beta2: float | Tensor = 0.999,
    eps: float | Tensor = 1e-8,
) -> OptimizerState:
    """One update of ``params`` in place with (already clipped) ``grads``.

    Tensor hyperparameters ``[pack]`` apply row-wise to ``params [pack, ...]``."""
    if isinstance(lr, Tensor):
        return _update_rows(state, params, grads, lr, beta1, beta2, eps)
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


def _rows(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A ``[pack]`` hyperparameter shaped to broadcast over ``like [pack, ...]``."""
    if not isinstance(value, Tensor):
        return value
    return value.view((-1,) + (1,) * (like.dim() - 1))


def _update_rows(
    state: OptimizerState,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    lr: Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float | Tensor,
) -> OptimizerState:
    state.t += 1
    dtype = params[0].dtype
    if state.kind == "sgd":
        rate = lr.to(dtype)
        for p, g in zip(params, grads, strict=True):
            p.sub_(g * _rows(rate, p))
        return state
    t = state.t
    if not any(isinstance(v, Tensor) for v in (beta1, beta2, eps)):
        # shared betas and eps: unit-rate steps in one pass, then each row at its own rate
        rate = lr.to(dtype)
        steps = adam_unit_steps(grads, state.m, state.v, t, beta1, beta2, eps)
        for p, step in zip(params, steps, strict=True):
            p.addcmul_(step, _rows(rate, p))
        return state
    step = (lr / (1.0 - beta1**t)).to(dtype)
    correction2 = 1.0 - beta2**t
    inv_c2 = correction2.reciprocal() if isinstance(correction2, Tensor) else 1.0 / correction2
    beta1, beta2, inv_c2, eps = (
        v.to(dtype) if isinstance(v, Tensor) else v for v in (beta1, beta2, inv_c2, eps)
    )
    for p, g, m, v in zip(params, grads, state.m, state.v, strict=True):
        m.lerp_(g, _rows(1.0 - beta1, p))
        v.lerp_(g.square(), _rows(1.0 - beta2, p))
        denom = (v * _rows(inv_c2, p)).sqrt_().add_(_rows(eps, p))
        p.addcdiv_(m * _rows(step, p), denom, value=-1.0)
    return state


def adam_path(fused: bool | None = None) -> str:
    """Which implementation ``adam_unit_steps`` takes: ``"fused"`` or ``"public"``.

    ``fused=None`` reads ``$RNNSWEEP_FUSED_ADAM`` (``0`` forces the public path; unset or
    ``1``: fused where this torch has the kernel); ``fused=False`` forces the public path."""
    if fused is None:
        setting = os.environ.get(FUSED_ADAM_ENV, "1")
        if setting not in ("0", "1"):
            raise ValueError(f"${FUSED_ADAM_ENV} must be 0 or 1, got {setting!r}")
        fused = setting == "1"
    return "fused" if fused and FUSED_ADAM_AVAILABLE else "public"


def adam_unit_steps(
    grads: Sequence[Tensor],
    m: Sequence[Tensor],
    v: Sequence[Tensor],
    t: int,
    beta1: float,
    beta2: float,
    eps: float,
    fused: bool | None = None,
) -> list[Tensor]:
    """Adam's moments, in place, and its unit-rate steps, one tensor per parameter tensor:

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
        step = -(m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps).

    The only use of a private torch API in rnnsweep: ``torch._fused_adam_`` (one pass over m,
    v and g) where ``adam_path(fused)`` says ``"fused"``; otherwise the same formula in public
    tensor operations, in the order of torch's own single-tensor Adam (equal to 1e-12 in
    float64, tests/test_optimizer.py).
    """
    steps = [g.new_zeros(g.shape) for g in grads]
    # a fill, not a copy from the host: no synchronisation on a GPU
    count = [torch.full((1,), float(t), dtype=torch.float32, device=g.device) for g in grads]
    adam_(steps, grads, m, v, count, t, 1.0, beta1, beta2, eps, fused)  # 0 - 1 * step
    return steps


def adam_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    m: Sequence[Tensor],
    v: Sequence[Tensor],
    count: Sequence[Tensor],
    t: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    fused: bool | None = None,
) -> None:
    """One Adam update of ``params`` in place at the float rate ``lr``, all hyperparameters
    shared (a lone learner's case, in the fewest operations):

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
        theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps),

    at update ``t`` (the fused kernel reads it from ``count``, one float32 ``[1]`` per tensor on
    its device that the caller keeps at ``t``). Fused as ``adam_unit_steps``, else public
    operations equal to it to 1e-12."""
    if adam_path(fused) == "fused":
        dense = [g.contiguous() for g in grads]  # the kernel walks dense memory
        _fused_adam(list(params), dense, list(m), list(v), list(count), lr, beta1, beta2, eps)
        return
    correction1 = 1.0 - beta1**t
    correction2_sqrt = (1.0 - beta2**t) ** 0.5
    for p, g, m_, v_ in zip(params, grads, m, v, strict=True):
        m_.lerp_(g, 1.0 - beta1)
        v_.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v_.sqrt() / correction2_sqrt).add_(eps)
        p.addcdiv_(m_, denom, value=-lr / correction1)


def lone_stepper(
    kind: str,
    params: Sequence[Tensor],
    m: Sequence[Tensor],
    v: Sequence[Tensor],
    beta1: float,
    beta2: float,
    eps: float,
    fused: bool | None = None,
) -> Callable[[Sequence[Tensor], Sequence[Tensor], int, float], None]:
    """``step(grads, count, t, lr)``: ``adam_`` (or sgd's ``theta <- theta - lr g``) over fixed
    ``params`` and moments with every argument but the gradients, the count and the rate bound
    once: a lone learner's update, with the least work per call. The gradients must be dense
    (contiguous), as a lone learner's gradient ring is."""
    params, m, v = list(params), list(m), list(v)
    if kind == "sgd":

        def sgd_step(grads: Sequence[Tensor], count: Sequence[Tensor], t: int, lr: float) -> None:
            for p, g in zip(params, grads, strict=True):
                p.sub_(g, alpha=lr)

        return sgd_step
    if adam_path(fused) == "fused":

        def fused_step(grads: Sequence[Tensor], count: Sequence[Tensor], t: int, lr: float) -> None:
            _fused_adam(params, grads, m, v, count, lr, beta1, beta2, eps)

        return fused_step

    def public_step(grads: Sequence[Tensor], count: Sequence[Tensor], t: int, lr: float) -> None:
        adam_(params, grads, m, v, count, t, lr, beta1, beta2, eps, fused=False)

    return public_step


def _fused_adam(
    out: list[Tensor],
    grads: list[Tensor],
    m: list[Tensor],
    v: list[Tensor],
    count: list[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """``out <- out - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` with m and v
    advanced in place: torch's fused Adam kernel, the package's one private torch API.
    ``grads`` must be dense (the kernel walks memory): the callers' part."""
    torch._fused_adam_(
        out,
        grads,
        m,
        v,
        [],
        count,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=0.0,
        eps=eps,
        amsgrad=False,
        maximize=False,
    )
