"""An extended Kalman filter over a flat parameter vector, as pure functions over a plain state.

    state = init(q_size, batch, structure, p0, blocks)
    theta = update(state, theta, H, e, R, process_noise)   # state's covariance updated in place

``theta [B, Q]`` holds B independent filters (B = 1 for one model). One observation per call:
Jacobian ``H = do/dtheta [B, o, Q]``, innovation ``e = y - o [B, o]``, observation covariance
``R [B, o, o]``. The update is the EKF in covariance form,

    S = H Sigma H^T + R,    K = Sigma H^T S^-1,
    theta' = theta + K e,   Sigma' = Sigma - K H Sigma + q I,

computed through the Cholesky factor ``S = C C^T``: with ``M = C^-1 H Sigma`` and
``u = C^-1 e``, ``K e = M^T u`` and ``K H Sigma = M^T M`` (symmetric positive semi-definite by
construction). The factorisation is ``cholesky_ex``, which raises nothing: an indefinite ``S``
(only possible with ``R`` singular) yields non-finite parameters, for the learner's divergence
check, and ``update`` never waits on the device.

Covariance ``structure``:

- ``full``: ``Sigma [B, Q, Q]``, the reference; O(Q^2) memory, for small Q.
- ``block``: the coordinates are cut into contiguous blocks (``blocks``, sizes summing to Q) and
  only the diagonal blocks ``Sigma_j`` are kept (decoupled EKF, Puskorius & Feldkamp 1991).
  The innovation covariance is shared, ``S = sum_j H_j Sigma_j H_j^T + R``, and each block
  gets ``K_j = Sigma_j H_j^T S^-1``, ``theta_j += K_j e``, ``Sigma_j -= K_j H_j Sigma_j``. Blocks
  of equal size are batched into one ``[B, count, k, k]`` tensor.
- ``diagonal``: ``Sigma = diag(sigma)``, ``sigma [B, Q]``: ``S = H diag(sigma) H^T + R``,
  ``K = diag(sigma) H^T S^-1``, ``sigma_i -= (K H Sigma)_ii`` (clamped at 0 against rounding).

When the approximations are exact. Started from a block-diagonal ``Sigma``, the full filter's
correction ``K H Sigma = Sigma H^T S^-1 H Sigma`` has cross block ``(j, k)`` equal to
``Sigma_j H_j^T S^-1 H_k Sigma_k``. It vanishes, so that ``block`` equals ``full`` step after
step, when the observation splits into independent parts (``R``, hence ``S``, block-diagonal
over the parts) each of which depends on the coordinates of a single block; ``diagonal`` is the
case of one-coordinate blocks. Example: readout rows with squared error and ``R = r I`` (output
i sees row i only). An observation that mixes blocks correlates them, and the decoupled filters
drop that correlation.

Observations (``observation``). ``mse``: the output is a Gaussian prediction, ``H = do/dtheta``,
``R = r I``, ``e = y - o``. ``ce``: softmax over the logits, class targets; the filter observes
the mean parameter ``p = softmax(o)`` with the one-hot target as the observation, whose
covariance is the Fisher matrix ``F = diag(p) - p p^T`` (Ollivier 2018, "Online natural gradient
as a Kalman filter"): ``H = F do/dtheta``, ``R = F + r I``, ``e = onehot(y) - p``. ``F`` is
positive semi-definite of rank ``o - 1`` (its null space is the ones vector), so ``r > 0`` is
required for ``R`` to be invertible.

Defaults, and why. With ``Sigma = p0 I`` small enough that ``p0 ||H||^2 << r``, the first update is
an SGD step: ``K e ~ (p0 / r) H^T e`` for ``mse`` (``H^T e = -dl/dtheta``), and ``~ p0 H_o^T e``
for ``ce`` with small ``r`` (``F (F + r I)^-1 e ~ e`` since ``e`` is orthogonal to the ones vector).
``Sigma`` then shrinks along observed directions like recursive least squares (a 1/t step
size), until the process noise holds it at ``sigma_i ~ sqrt(q r) / |H_i|`` (the steady state of
``sigma' = (sigma + q) r / (H_i^2 (sigma + q) + r)``), i.e. a per-coordinate step
``sqrt(q / r) g_i / |H_i|`` — an RMS-normalised (Adam-like) step of size ``sqrt(q / r)``.
``P0 = 1e-2`` is an SGD-sized first step, about that steady state for unit-scale Jacobians;
``PROCESS_NOISE = 1e-5`` gives an Adam-like step of about 3e-3 for ``mse``, so the filter keeps
tracking the moving optimum of an online RNN instead of freezing (q = 0 is the exact Bayesian
posterior of a static model, the right choice only for a stationary linear model);
``OBS_NOISE`` is 1 for ``mse`` (unit noise variance, so early steps are SGD with rate ``p0``) and
1e-2 for ``ce``, a small ridge on the Fisher: a larger one damps the correction of confidently
wrong predictions (target probability ``p_y``) by ``p_y / (p_y + r)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import memory_budget
from rnnsweep.algorithms.settings import SETTINGS

STRUCTURES = ("diagonal", "block", "full")
# Building a learner whose filter is ``full`` peaks at about four covariances (measured: 4.4 GB
# for a 1.1 GB covariance at n=128: the member's state, and the population's stacked copy and
# its restore): what ``init`` checks against the free memory.
FULL_BUILD_COPIES = 4
P0 = SETTINGS["p0"].default
PROCESS_NOISE = SETTINGS["process_noise"].default
OBS_NOISE = {"mse": 1.0, "ce": 1e-2}


@dataclass
class BlockGroup:
    """Blocks of size ``k``: coordinates ``index [count * k]``, ``cov [B, count, k, k]``."""

    size: int
    index: Tensor
    cov: Tensor


@dataclass
class KalmanState:
    """Covariance of B filters over Q coordinates; ``cov`` is ``[B, Q, Q]`` (full), ``[B, Q]``
    (diagonal) or unused (block: see ``groups``)."""

    structure: str
    q_size: int
    batch: int
    cov: Tensor | None = None
    blocks: tuple[int, ...] = ()
    groups: list[BlockGroup] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        covs = [g.cov for g in self.groups] if self.structure == "block" else [self.cov]
        covs = [c.clone() for c in covs]  # a snapshot, not the live buffers
        return {
            "structure": self.structure,
            "q_size": self.q_size,
            "batch": self.batch,
            "blocks": list(self.blocks),
            "covs": covs,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        mine = (self.structure, self.q_size, self.batch, list(self.blocks))
        theirs = (saved["structure"], saved["q_size"], saved["batch"], list(saved["blocks"]))
        if mine != theirs:
            raise ValueError(f"Kalman state {theirs} does not match this filter {mine}")
        targets = [g.cov for g in self.groups] if self.structure == "block" else [self.cov]
        for target, cov in zip(targets, saved["covs"], strict=True):
            target.copy_(cov)


def _check_noise(name: str, value: float | Tensor) -> None:
    if isinstance(value, Tensor):  # per-filter noises of a packed population, checked there
        return
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def init(
    q_size: int,
    batch: int = 1,
    structure: str = "diagonal",
    p0: float = P0,
    blocks: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> KalmanState:
    """Prior covariance ``Sigma_0 = p0 I`` for ``batch`` filters over ``q_size`` coordinates.

    ``blocks`` (sizes of contiguous blocks, summing to ``q_size``) is required for ``block``.
    """
    if structure not in STRUCTURES:
        raise ValueError(
            f"unknown covariance structure {structure!r}; known: {', '.join(STRUCTURES)}"
        )
    if q_size < 1 or batch < 1:
        raise ValueError(f"q_size and batch must be >= 1, got {q_size}, {batch}")
    if not p0 > 0.0 or p0 == float("inf"):
        raise ValueError(f"p0 must be a finite number > 0, got {p0!r}")
    if structure == "full":
        memory_budget.check_fits(
            FULL_BUILD_COPIES * batch * q_size * q_size * dtype.itemsize,
            device,
            f"a learner with the full Kalman covariance [{batch}, {q_size}, {q_size}] ({dtype}, "
            f"{FULL_BUILD_COPIES} copies while it is built)",
        )
        cov = torch.zeros(batch, q_size, q_size, dtype=dtype, device=device)
        cov.diagonal(dim1=1, dim2=2).fill_(p0)
        return KalmanState(structure, q_size, batch, cov)
    if structure == "diagonal":
        return KalmanState(
            structure, q_size, batch, torch.full((batch, q_size), p0, dtype=dtype, device=device)
        )
    if blocks is None:
        raise ValueError("structure 'block' needs blocks (sizes of contiguous blocks)")
    sizes = tuple(int(k) for k in blocks)
    if any(k < 1 for k in sizes):
        raise ValueError(f"block sizes must be >= 1, got {list(sizes)}")
    if sum(sizes) != q_size:
        raise ValueError(f"block sizes sum to {sum(sizes)}, expected q_size = {q_size}")
    starts: dict[int, list[int]] = {}
    offset = 0
    for k in sizes:
        starts.setdefault(k, []).append(offset)
        offset += k
    groups = []
    for k, firsts in starts.items():
        index = (torch.tensor(firsts).unsqueeze(1) + torch.arange(k)).reshape(-1).to(device)
        eye = torch.eye(k, dtype=dtype, device=device).mul_(p0)
        groups.append(BlockGroup(k, index, eye.repeat(batch, len(firsts), 1, 1)))
    return KalmanState(structure, q_size, batch, None, sizes, groups)


def covariance(state: KalmanState) -> Tensor:
    """The covariance as a dense ``[B, Q, Q]`` (for inspection and tests; O(Q^2))."""
    if state.structure == "full":
        return state.cov.clone()
    if state.structure == "diagonal":
        return torch.diag_embed(state.cov)
    ref = state.groups[0].cov
    dense = torch.zeros(state.batch, state.q_size, state.q_size, dtype=ref.dtype, device=ref.device)
    for g in state.groups:
        idx = g.index.view(-1, g.size)
        rows = idx.unsqueeze(2).expand(-1, -1, g.size)
        cols = idx.unsqueeze(1).expand(-1, g.size, -1)
        dense[:, rows, cols] = g.cov
    return dense


def _per_filter(value: float | Tensor, dims: int) -> float | Tensor:
    """A float, or a ``[B]`` tensor of per-filter values shaped to broadcast over ``dims`` dims."""
    if isinstance(value, Tensor):
        return value.view((-1,) + (1,) * (dims - 1))
    return value


def update(
    state: KalmanState,
    theta: Tensor,
    H: Tensor,
    innovation: Tensor,
    obs_cov: Tensor,
    process_noise: float | Tensor = PROCESS_NOISE,
) -> Tensor:
    """One EKF step: returns ``theta' [B, Q]``; ``state``'s covariance is updated in place.

    ``theta [B, Q]``, ``H [B, o, Q]``, ``innovation e [B, o]``, ``obs_cov R [B, o, o]``;
    ``process_noise`` a float, or one per filter ``[B]``.
    """
    batch, q_size = state.batch, state.q_size
    if theta.shape != (batch, q_size):
        raise ValueError(f"theta has shape {tuple(theta.shape)}, expected [{batch}, {q_size}]")
    if H.dim() != 3 or H.shape[0] != batch or H.shape[2] != q_size:
        raise ValueError(f"H has shape {tuple(H.shape)}, expected [{batch}, o, {q_size}]")
    obs = H.shape[1]
    if innovation.shape != (batch, obs):
        raise ValueError(
            f"innovation has shape {tuple(innovation.shape)}, expected [{batch}, {obs}]"
        )
    if obs_cov.shape != (batch, obs, obs):
        raise ValueError(
            f"obs_cov has shape {tuple(obs_cov.shape)}, expected [{batch}, {obs}, {obs}]"
        )
    _check_noise("process_noise", process_noise)

    if state.structure == "full":
        hs = torch.bmm(H, state.cov)  # H Sigma [B, o, Q]
        s = torch.baddbmm(obs_cov, hs, H.mT)
    elif state.structure == "diagonal":
        hs = H * state.cov.unsqueeze(1)
        s = torch.baddbmm(obs_cov, hs, H.mT)
    else:
        hs_groups = []
        s = obs_cov.clone()
        for g in state.groups:
            h_g = H[:, :, g.index].view(batch, obs, -1, g.size)  # [B, o, c, k]
            hs_g = torch.einsum("bock,bckl->bocl", h_g, g.cov).reshape(batch, obs, -1)
            s.baddbmm_(hs_g, h_g.reshape(batch, obs, -1).mT)
            hs_groups.append(hs_g)
        hs = torch.cat(hs_groups, dim=2)  # H Sigma, coordinates in group order

    chol = torch.linalg.cholesky_ex(s)[0]
    # One triangular solve for [C^-1 e | C^-1 H Sigma].
    rhs = torch.cat([innovation.unsqueeze(2), hs], dim=2)
    sol = torch.linalg.solve_triangular(chol, rhs, upper=False)
    u, m = sol[:, :, :1], sol[:, :, 1:]
    step = torch.bmm(m.mT, u).squeeze(2)  # K e

    if state.structure == "full":
        cov = state.cov
        cov.baddbmm_(m.mT, m, alpha=-1.0)
        cov.copy_(torch.add(cov, cov.mT).mul_(0.5))
        cov.diagonal(dim1=1, dim2=2).add_(_per_filter(process_noise, 2))
        return theta + step
    if state.structure == "diagonal":
        state.cov.sub_(m.square().sum(1)).clamp_(min=0.0).add_(_per_filter(process_noise, 2))
        return theta + step
    new_theta = theta.clone()
    offset = 0
    for g in state.groups:
        width = g.index.numel()
        m_g = m[:, :, offset : offset + width].reshape(batch, obs, -1, g.size)
        new_theta.index_add_(1, g.index, step[:, offset : offset + width])
        g.cov.sub_(torch.einsum("bock,bocl->bckl", m_g, m_g))
        g.cov.diagonal(dim1=2, dim2=3).add_(_per_filter(process_noise, 3))
        offset += width
    return new_theta


def observation(
    loss_kind: str,
    out: Tensor,
    y: Tensor,
    H_out: Tensor,
    obs_noise: float | Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(H [B, o, Q], R [B, o, o], e [B, o])`` for outputs ``out [B, o]``, ``H_out = do/dtheta``.

    ``mse`` (``y [B, o]``): ``H = H_out``, ``R = r I``, ``e = y - o``. ``ce`` (``y [B]`` class
    indices, or a target distribution ``[B, o]``): ``p = softmax(o)``, ``F = diag(p) - p p^T``,
    ``H = F H_out``, ``R = F + r I``, ``e = onehot(y) - p`` (or ``y - p``); needs ``r > 0``.
    ``obs_noise`` r defaults to ``OBS_NOISE[loss_kind]``; a tensor ``[B]`` gives one per stream.
    """
    if loss_kind not in OBS_NOISE:
        raise ValueError(f"unknown loss kind {loss_kind!r}; known: {', '.join(OBS_NOISE)}")
    r = OBS_NOISE[loss_kind] if obs_noise is None else obs_noise
    _check_noise("obs_noise", r)
    batch, outputs = out.shape
    eye = torch.eye(outputs, dtype=out.dtype, device=out.device)
    r = _per_filter(r, 3)
    if loss_kind == "mse":
        return H_out, (eye * r).expand(batch, -1, -1).clone(), y - out
    if not isinstance(r, Tensor) and r == 0.0:
        raise ValueError("obs_noise must be > 0 for ce: the Fisher diag(p) - p p^T is singular")
    p = torch.softmax(out, dim=-1)
    fisher = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    if y.is_floating_point():  # soft targets: a distribution over the classes
        e = y - p
    else:
        e = p.neg().scatter_add_(-1, y.unsqueeze(-1), torch.ones_like(p[:, :1]))
    return torch.bmm(fisher, H_out), fisher + eye * r, e
