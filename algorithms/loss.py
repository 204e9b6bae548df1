"""Per-step losses of the readout output ``o [B, o]``.

``ce``: softmax cross-entropy. Targets are class indices ``y [B]`` (int64),
``l = logsumexp(o) - o_y``, ``dl/do = softmax(o) - onehot(y)``; or target distributions
``y [B, o]`` (floating point, "soft" labels), ``l = -sum_c y_c log softmax(o)_c``,
``dl/do = softmax(o) - y``.
``mse``: ``l = 1/2 ||o - y||^2`` with ``y [B, o]``, ``dl/do = o - y``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_KINDS = ("ce", "mse")


def loss(kind: str, out: Tensor, y: Tensor) -> Tensor:
    """Per-stream loss ``[B]``; differentiable (used by BPTT)."""
    if kind == "ce":
        return F.cross_entropy(out, y, reduction="none")
    if kind == "mse":
        return 0.5 * (out - y).square().sum(-1)
    raise ValueError(f"unknown loss kind {kind!r}; known: {', '.join(LOSS_KINDS)}")


def loss_and_delta(kind: str, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(l [B], dl/do [B, o])`` in closed form, without autograd."""
    if kind == "ce" and y.is_floating_point():
        logp = torch.log_softmax(out, dim=-1)
        value = (logp * y).sum(-1).neg_()
        return value, logp.exp_().sub_(y)
    if kind == "ce":
        logp = torch.log_softmax(out, dim=-1)
        col = y.unsqueeze(-1)
        value = logp.gather(-1, col).neg_().squeeze(-1)
        delta = logp.exp_()
        delta.scatter_add_(-1, col, torch.full_like(col, -1, dtype=out.dtype))
        return value, delta
    if kind == "mse":
        delta = out - y
        return 0.5 * delta.square().sum(-1), delta
    raise ValueError(f"unknown loss kind {kind!r}; known: {', '.join(LOSS_KINDS)}")


def check_targets(kind: str, y: Tensor, batch: int, outputs: int) -> None:
    """Raise ``ValueError`` naming the problem with a step's targets."""
    if kind == "ce" and y.is_floating_point():
        if y.shape != (batch, outputs):
            raise ValueError(
                f"ce target distributions must have shape [{batch}, {outputs}], got "
                f"{tuple(y.shape)}"
            )
        if not bool(torch.isfinite(y).all()) or bool((y < 0).any()):
            raise ValueError("ce target distributions must be finite and non-negative")
    elif kind == "ce":
        if y.shape != (batch,) or y.dtype != torch.int64:
            raise ValueError(
                f"ce targets must be int64 class indices of shape [{batch}], got "
                f"{y.dtype} {tuple(y.shape)}"
            )
        if bool(((y < 0) | (y >= outputs)).any()):
            raise ValueError(f"ce targets must lie in [0, {outputs}), got {y.tolist()}")
    elif kind == "mse":
        if y.shape != (batch, outputs):
            raise ValueError(
                f"mse targets must have shape [{batch}, {outputs}], got {tuple(y.shape)}"
            )
        if not bool(torch.isfinite(y).all()):
            raise ValueError("mse targets contain non-finite values")
    else:
        raise ValueError(f"unknown loss kind {kind!r}; known: {', '.join(LOSS_KINDS)}")
