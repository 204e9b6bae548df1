"""The probe: gradient quality on the live online-learning trajectory, without changing it.

The learner calls ``observe(state, params, s_prev, x, y, step)`` (or ``state.observe(...)``,
optionally only where ``state.wants(step)``) for stream 0 every step, before applying that
step's update, so ``params`` is the ``theta_t`` with which ``l_t`` was
computed. A window of ``window`` steps starts at every step that is a multiple of ``every``
(0: off; ``1 <= window <= every``).

Recording. A ring of the last W (``horizon``) steps' ``(s_{t-1}, x_t, y_t)``, the current step
included (step t in slot ``t mod W``, copied into preallocated buffers), is filled only during
``[start - W + 1, start + window)`` (``ProbeState.wants``); outside, ``observe`` costs one
integer modulo.

Shadows. At a window start t0, with ``s = s_{t0-W}`` the oldest recorded state, K shadow copies
of the estimator (per-stream parameters ``params.expand(K)``, so each copy's gradient is kept;
seeds ``stream_seeds`` of a seed derived from ``(seed, t0)``, counter-based, so the learner's own
noise is untouched) and one shadow exact RTRL start from ``s`` and replay the W - 1 recorded
steps before t0 with ``theta_{t0}`` frozen (a ``flush`` afterwards discards gradients of
replayed losses), so that at t0 they cover the same W steps as g*.
From t0 on they step live on the learner's inputs with its moving ``theta_t``. Per window step:

    g_hat_k = shadow k's gradient of l_t (or None: truncated BPTT between updates),
    g_rtrl  = the shadow RTRL's gradient of l_t,
    g*      = d l_t / d theta_t by BPTT over the last W recorded steps, replayed with theta_t
              from the recorded state W steps back (only l_t, the staleness-free truth).

With ``G_hat_k, G_rtrl, G*`` the window sums (flattened ``[P + o (n + 1)]``; the shadows'
``flush`` is added at the window end) the report is

    bias      = ||mean_k G_hat_k - G_rtrl|| / ||G_rtrl||
    variance  = mean_k ||G_hat_k - mean_k G_hat_k||^2 / ||G_rtrl||^2
    cosine    = mean_k cos(G_hat_k, G*)
    staleness = ||G_rtrl - G*|| / ||G*||

(one host synchronisation per window). For an unbiased estimator ``E[bias^2] ~= variance /
(K - 1)``: the shadows and the shadow RTRL see the same states and the same ``theta_t``, so the
unbiasedness claim holds against ``G_rtrl`` even while ``theta`` moves.

The probe never writes ``params``, ``s_prev``, ``x``, ``y`` or the learner's estimator state,
and draws no global random numbers: the learner's trajectory is bit-for-bit the same with the
probe on or off. Checkpoints: ``ProbeState.state_dict`` holds the ring and counters, not the
shadows; a checkpoint taken mid-window restarts that window at the first step observed after
``load_state_dict`` (fresh shadows warmed on the ring, sums reset, same end step, ``window`` in
the report = the steps actually measured). A checkpoint taken outside a window resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator import Estimator, start
from rnnsweep.algorithms.loss import loss as loss_fn
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import SETTINGS
from rnnsweep.algorithms.signs import stream_seeds

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class ProbeConfig:
    every: int = SETTINGS["probe_every"].default  # windows start at its multiples; 0: off
    window: int = SETTINGS["probe_window"].default  # steps measured per window
    samples: int = SETTINGS["probe_samples"].default  # K shadow copies of the estimator
    horizon: int = SETTINGS["probe_horizon"].default  # W: steps replayed for warm-up and g*

    def __post_init__(self) -> None:
        for key in ("every", "window", "samples", "horizon"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"probe: {key} must be an integer, got {value!r}")
        if self.every < 0:
            raise ValueError(f"probe: every must be >= 0 (0: off), got {self.every}")
        if self.every and not 1 <= self.window <= self.every:
            raise ValueError(f"probe: window must be in [1, every={self.every}], got {self.window}")
        if self.samples < 1:
            raise ValueError(f"probe: samples must be >= 1, got {self.samples}")
        if self.horizon < 1:
            raise ValueError(f"probe: horizon must be >= 1, got {self.horizon}")


@dataclass
class _Window:
    """Shadows and sums of the window in progress."""

    start: int
    end: int  # exclusive
    estimator: Estimator
    shadows: Any  # K shadow estimator states
    rtrl: Estimator
    exact: Any  # shadow RTRL state, one stream
    sum_hat: Tensor  # [K, D]
    sum_rtrl: Tensor  # [D]
    sum_star: Tensor  # [D]
    steps: int = 0


@dataclass
class ProbeState:
    config: ProbeConfig
    cell: Cell
    estimator_name: str
    hyper: dict[str, Any]
    loss_kind: str
    seed: int
    dtype: torch.dtype
    device: torch.device
    ring_s: Tensor  # [W, S] s_{t-1}
    ring_x: Tensor  # [W, m]
    ring_y: Tensor | None = None  # [W] (ce) or [W, o] (mse); allocated at the first record
    last: int | None = None  # last recorded step
    count: int = 0  # contiguous recorded steps ending at ``last``, <= W
    window: _Window | None = field(default=None, repr=False)
    resume_end: int | None = None  # restored mid-window: restart it, ending here

    def wants(self, step: int) -> bool:
        """Whether ``observe`` does anything at ``step``: inside ``[start - W + 1, start +
        window)`` of some window (a learner may skip the call, and its ``s_prev`` clone, else)."""
        cfg = self.config
        if not cfg.every:
            return False
        phase = step % cfg.every
        return phase < cfg.window or phase > cfg.every - cfg.horizon

    def observe(
        self, params: Params, s_prev: Tensor, x: Tensor, y: Tensor, step: int
    ) -> dict[str, float | int] | None:
        """``observe(self, ...)``, the module function."""
        return observe(self, params, s_prev, x, y, step)

    def state_dict(self) -> dict[str, Any]:
        """Ring and counters (clones); a window in progress is saved as its end step."""
        end = self.window.end if self.window is not None else self.resume_end
        return {
            "horizon": self.config.horizon,
            "last": self.last,
            "count": self.count,
            "ring_s": self.ring_s.clone(),
            "ring_x": self.ring_x.clone(),
            "ring_y": None if self.ring_y is None else self.ring_y.clone(),
            "window_end": end,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if saved["horizon"] != self.config.horizon or saved["ring_s"].shape != self.ring_s.shape:
            raise ValueError("probe state does not match this probe's horizon or cell")
        self.ring_s.copy_(saved["ring_s"])
        self.ring_x.copy_(saved["ring_x"])
        ring_y = saved["ring_y"]
        self.ring_y = None if ring_y is None else ring_y.to(self.device).clone()
        self.last, self.count = saved["last"], int(saved["count"])
        self.window, self.resume_end = None, saved["window_end"]


def init(
    config: ProbeConfig,
    cell: Cell,
    estimator_name: str,
    estimator_hyper: dict[str, Any],
    loss_kind: str,
    seed: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> ProbeState:
    """A probe for ``estimator_name`` (validated now: name, cell, hyperparameters, loss)."""
    device = torch.device(device)
    hyper = dict(estimator_hyper)
    dummy = Params(
        torch.zeros(cell.num_params, dtype=dtype, device=device),
        torch.zeros(1, cell.hidden + 1, dtype=dtype, device=device),
    )
    _, trial = start(estimator_name, cell, dummy, loss_kind, 1, seed=seed, **hyper)
    if getattr(trial, "traj", None) is None:
        raise ValueError(
            f"probe: estimator {estimator_name!r} is not an online estimator with a forward "
            "pass 'traj' (bptt is offline)"
        )
    width = config.horizon if config.every else 0
    ring_s = torch.zeros(width, cell.state_size, dtype=dtype, device=device)
    ring_x = torch.zeros(width, cell.inputs, dtype=dtype, device=device)
    return ProbeState(
        config, cell, estimator_name, hyper, loss_kind, seed, dtype, device, ring_s, ring_x
    )


def observe(
    state: ProbeState, params: Params, s_prev: Tensor, x: Tensor, y: Tensor, step: int
) -> dict[str, float | int] | None:
    """Feed step ``step`` of stream 0; the report at a window's last step, else ``None``.

    ``params`` shared (``theta [P]``, ``readout [o, n + 1]``), ``s_prev [S]``, ``x [m]``,
    ``y []`` (ce) or ``[o]`` (mse)."""
    cfg = state.config
    if not cfg.every:
        return None
    contiguous = state.last is not None and step == state.last + 1
    if state.window is not None and not contiguous:
        state.window = None  # a gap in the steps: the shadows no longer follow the learner
    resume_end, state.resume_end = state.resume_end, None
    if not state.wants(step):
        return None
    if params.per_stream:
        raise ValueError("probe: params must be the shared (stream 0) parameters, not per-stream")
    if s_prev.shape != (state.cell.state_size,) or x.shape != (state.cell.inputs,):
        raise ValueError(
            f"probe: s_prev {tuple(s_prev.shape)} and x {tuple(x.shape)} must be "
            f"[{state.cell.state_size}] and [{state.cell.inputs}] (stream 0)"
        )
    _record(state, s_prev, x, y, step, contiguous)
    if state.window is None:
        if step % cfg.every == 0:
            end = step + cfg.window
        elif resume_end is not None and contiguous and step < resume_end:
            end = resume_end
        else:
            return None
        state.window = _begin(state, params, step, end)
    return _window_step(state, params, x, y, step)


def _record(
    state: ProbeState, s_prev: Tensor, x: Tensor, y: Tensor, step: int, contiguous: bool
) -> None:
    horizon = state.config.horizon
    if state.ring_y is None:
        state.ring_y = torch.zeros(horizon, *y.shape, dtype=y.dtype, device=state.device)
    slot = step % horizon
    state.ring_s[slot].copy_(s_prev)
    state.ring_x[slot].copy_(x)
    state.ring_y[slot].copy_(y)
    state.count = min(state.count + 1, horizon) if contiguous else 1
    state.last = step


def _slots(state: ProbeState, step: int) -> list[int]:
    """Ring slots of the recorded steps ``step - count + 1 .. step``, oldest first."""
    horizon = state.config.horizon
    return [(step - state.count + 1 + i) % horizon for i in range(state.count)]


def _rows(t: Tensor, batch: int) -> Tensor:
    return t.expand(batch, *t.shape)


def _set_state(est_state: Any, s: Tensor, batch: int) -> None:
    """Put every stream of a fresh estimator state at ``s [S]``."""
    traj = est_state.traj
    if hasattr(traj, "set_state"):
        traj.set_state(_rows(s, batch))
    else:
        traj.s = _rows(s, batch).clone()


def _window_seed(seed: int, start: int) -> int:
    """A 30-bit seed for the window starting at ``start`` (splitmix64 of ``(seed, start)``)."""
    z = (seed * 0x9E3779B97F4A7C15 + start * 0xD1B54A32D192ED03 + 0x7F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) >> 34


def _begin(state: ProbeState, params: Params, step: int, end: int) -> _Window:
    """Start K shadows and a shadow RTRL at the oldest recorded state; replay up to ``step``."""
    k, cell = state.config.samples, state.cell
    slots = _slots(state, step)
    s0 = state.ring_s[slots[0]]
    seeds = stream_seeds(_window_seed(state.seed, step), k, state.device)
    many = params.expand(k)
    estimator, shadows = start(
        state.estimator_name, cell, many, state.loss_kind, k, seeds=seeds, **state.hyper
    )
    rtrl, exact = start("rtrl", cell, params, state.loss_kind, 1)
    _set_state(shadows, s0, k)
    _set_state(exact, s0, 1)
    assert state.ring_y is not None
    for slot in slots[:-1]:
        x, y = state.ring_x[slot], state.ring_y[slot]
        estimator.step(many, shadows, _rows(x, k), _rows(y, k))
        rtrl.step(params, exact, x[None], y[None])
    estimator.flush(many, shadows)  # drop the replayed losses' pending gradient
    size = cell.num_params + params.readout.numel()
    zeros = torch.zeros(size, dtype=state.dtype, device=state.device)
    sum_hat = torch.zeros(k, size, dtype=state.dtype, device=state.device)
    return _Window(step, end, estimator, shadows, rtrl, exact, sum_hat, zeros, zeros.clone())


def _window_step(
    state: ProbeState, params: Params, x: Tensor, y: Tensor, step: int
) -> dict[str, float | int] | None:
    win = state.window
    assert win is not None
    k = state.config.samples
    many = params.expand(k)
    grad = win.estimator.step(many, win.shadows, _rows(x, k), _rows(y, k)).grad
    if grad is not None:
        win.sum_hat.add_(grad.flat())
    win.sum_rtrl.add_(win.rtrl.step(params, win.exact, x[None], y[None]).grad.flat())
    win.sum_star.add_(last_loss_gradient(state, params, step).flat())
    win.steps += 1
    if step + 1 < win.end:
        return None
    tail = win.estimator.flush(many, win.shadows)
    if tail is not None:
        win.sum_hat.add_(tail.flat())
    state.window = None
    return {
        **window_metrics(win.sum_hat, win.sum_rtrl, win.sum_star),
        "step": step,
        "samples": k,
        "window": win.steps,
    }


def last_loss_gradient(state: ProbeState, params: Params, step: int) -> Params:
    """``g* = d l_t / d theta`` through the recorded steps up to ``step`` (at most W), replayed
    with ``params`` from the oldest recorded state; only ``l_t`` is differentiated."""
    cell = state.cell
    slots = _slots(state, step)
    assert state.ring_y is not None
    with torch.enable_grad():
        theta = params.theta.detach().requires_grad_(True)
        readout = params.readout.detach().requires_grad_(True)
        s = state.ring_s[slots[0]]
        for slot in slots:
            s = cell.fn(theta, s, state.ring_x[slot])
        h = s[cell.out_slice]
        hb = torch.cat([h, torch.ones_like(h[:1])])[None]
        out = readout_.output(readout, hb)
        loss = loss_fn(state.loss_kind, out, state.ring_y[slots[-1]][None]).sum()
        g_theta, g_readout = torch.autograd.grad(loss, (theta, readout))
    return Params(g_theta, g_readout)


def window_metrics(sum_hat: Tensor, sum_rtrl: Tensor, sum_star: Tensor) -> dict[str, float]:
    """``bias, variance, cosine, staleness`` of window sums ``[K, D]``, ``[D]``, ``[D]``."""
    mean = sum_hat.mean(0)
    norm_rtrl, norm_star = sum_rtrl.norm(), sum_star.norm()
    values = torch.stack(
        [
            (mean - sum_rtrl).norm() / norm_rtrl,
            (sum_hat - mean).square().sum(1).mean() / norm_rtrl.square(),
            torch.nn.functional.cosine_similarity(sum_hat, sum_star[None], dim=1).mean(),
            (sum_rtrl - sum_star).norm() / norm_star,
        ]
    ).tolist()
    return dict(zip(("bias", "variance", "cosine", "staleness"), values, strict=True))
