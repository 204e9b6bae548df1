"""The probe: gradient quality on the live online-learning trajectory, without changing it.

The learner calls ``observe(state, params, s_prev, x, y, step)`` for stream 0 every step where
``state.wants(step)``, before applying that step's update, so ``params`` is the ``theta_t``
with which ``l_t`` is computed and ``s_prev`` the state ``s_{t-1}``. Every norm and cosine
below is over the **recurrent parameters** ``theta`` only: the readout's gradient is exact for
every estimator (given the state) and would dilute them; it is reported apart, as
``readout_cosine``.

Windows. A window starts at every step t0 that is a multiple of ``every`` (0: off) and spans
W = ``horizon`` steps, ``t0 .. t0 + W - 1``; its gradients are the sums over its last ``window``
steps (``1 <= window <= W <= every``; ``window = W`` sums them all). At t0 every shadow starts
from the live state ``s_{t0-1}`` with zero influence, then steps on the learner's inputs:

    g_moving  exact RTRL along the theta_t the learner actually has at each step;
    g_held    exact RTRL with theta (and readout) held at their value at t0, on its own states;
    g_2W      as g_held, but with the influence at t0 accumulated over the W recorded steps
              before t0 (theta held, Jacobians at the recorded live states): the same losses
              with W more steps of history;
    g_hat_k   K = ``samples`` shadow copies of the estimator, ``theta_t`` moving, independent
              noise (seeds derived from ``(seed, t0)``), one batched step for all K;
    g_full    (``full`` only) exact RTRL along the moving theta from the start of the run,
              teacher-forced onto the live states.

The three exact shadows are one batched 3-stream RTRL. Per window, each metric reported at the
window's own step (``step`` = t0 + W, the learner's step count when it closes):

    staleness      = ||g_moving - g_held|| / ||g_held||       what the moving theta alone does
                     to exact RTRL; exactly 0 when theta does not move (lr = 0), for every W
    horizon_error  = ||g_held - g_2W|| / ||g_2W||              whether W covers the task's memory
                     (a run warns once, naming ``probe_horizon``, when it exceeds 0.1)
    staleness_full = ||g_full - g_2W|| / ||g_2W||               staleness from before the window
                     too. Reference: g_2W, the held-theta gradient with 2W steps of history (a
                     held-theta gradient over the whole run cannot be formed online); the figure
                     includes the truncation beyond 2W, so read it where horizon_error is small
    bias_sq        = (||mean_k g_hat_k - g_moving||^2 - tr S / K) / ||g_moving||^2,
                     S the sample covariance of the g_hat_k (divisor K - 1): the unbiased
                     estimate of the squared relative bias of the estimator (the noise floor
                     of a K-sample mean removed); may be negative. Equal to
                     sum_{i != j} d_i . d_j / (K (K - 1)) with d_k = g_hat_k - g_moving.
    bias_se        standard error of bias_sq: jackknife over the K shadows (leave-one-out
                     U-statistics u_(i); se^2 = (K - 1)/K sum_i (u_(i) - mean u)^2); NaN for K < 3
    bias           = sqrt(max(0, bias_sq))
    variance       = mean_k ||g_hat_k - mean_k g_hat_k||^2 / ||g_moving||^2
    cosine         = mean_k cos(g_hat_k, g_held)              the direction a user cares about
    readout_cosine = mean_k cos(readout part of g_hat_k, readout part of g_held)

``bias`` and ``variance`` are relative to g_moving, so they measure the estimator alone
(staleness is not folded into them); with K = 1 no noise floor can be removed and ``bias_sq``
is ``||g_hat - g_moving||^2 / ||g_moving||^2``. An estimator that emits its gradient late
(truncated BPTT) counts what it emits during the measured steps, plus its ``flush`` at the end.

Recording. A ring of the last W steps' ``(s_{t-1}, x_t, y_t)`` (step t in slot ``t mod W``) is
filled during the W steps before each window and during it (``wants``); outside, ``observe``
costs one integer modulo (with ``full`` every step is observed).

The probe never writes ``params``, ``s_prev``, ``x``, ``y`` or the learner's estimator state,
and draws no global random numbers: the learner's trajectory is bit-for-bit the same with the
probe on or off. ``state_dict`` holds the ring, the counters, the window in progress (its
shadows' states, held parameters and sums) and the ``full`` shadow: a restored probe continues
exactly as if never interrupted, mid-window included.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import checkpoint
from rnnsweep.algorithms.cell import Cell
from rnnsweep.algorithms.estimator import Estimator, start
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import SETTINGS
from rnnsweep.algorithms.signs import stream_seeds

_MASK = (1 << 64) - 1
FULL_MAX_HIDDEN = 64  # the full-run RTRL shadow costs O(n^4) per step: refused above
HORIZON_WARNING = 0.1  # horizon_error above which a run warns (once)
METRICS = (
    "bias",
    "bias_sq",
    "bias_se",
    "variance",
    "cosine",
    "readout_cosine",
    "staleness",
    "horizon_error",
    "staleness_full",
)


@dataclass(frozen=True)
class ProbeConfig:
    every: int = SETTINGS["probe_every"].default  # windows start at its multiples; 0: off
    window: int = SETTINGS["probe_window"].default  # measured steps: the last of the W
    samples: int = SETTINGS["probe_samples"].default  # K shadow copies of the estimator
    horizon: int = SETTINGS["probe_horizon"].default  # W: steps each window spans
    full: bool = SETTINGS["probe_full"].default  # also the shadow RTRL from the run's start

    def __post_init__(self) -> None:
        for key in ("every", "window", "samples", "horizon"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"probe: {key} must be an integer, got {value!r}")
        if not isinstance(self.full, bool):
            raise ValueError(f"probe: full must be true or false, got {self.full!r}")
        if self.every < 0:
            raise ValueError(f"probe: every must be >= 0 (0: off), got {self.every}")
        if self.samples < 1:
            raise ValueError(f"probe: samples must be >= 1, got {self.samples}")
        if self.horizon < 1:
            raise ValueError(f"probe: horizon must be >= 1, got {self.horizon}")
        if self.every and not 1 <= self.window <= self.every:
            raise ValueError(f"probe: window must be in [1, every={self.every}], got {self.window}")
        if self.every and self.horizon > self.every:
            raise ValueError(f"probe: horizon must be <= every={self.every}, got {self.horizon}")
        if self.every and self.window > self.horizon:
            raise ValueError(
                f"probe: window must be <= horizon={self.horizon} (the steps a window spans), "
                f"got {self.window}"
            )


def config_from(settings: dict[str, Any]) -> ProbeConfig:
    """The probe's configuration from a learner's resolved ``probe_*`` settings."""
    return ProbeConfig(
        settings["probe_every"],
        settings["probe_window"],
        settings["probe_samples"],
        settings["probe_horizon"],
        settings["probe_full"],
    )


@dataclass
class _Window:
    """Shadows and sums of the window in progress."""

    start: int
    end: int  # exclusive: start + W
    estimator: Estimator
    shadows: Any  # K shadow estimator states
    rtrl: Estimator
    exact: Any  # 3-stream RTRL state: moving, held, held with 2W of history
    theta3: Tensor  # [3, P]: row 0 follows the learner, rows 1, 2 held
    readout3: Tensor  # [3, o, n + 1]
    sums: dict[str, Tensor]  # hat [K, P], hat_r [K, R], exact [3, P], exact_r [3, R], full [P]
    steps: int = 0  # measured steps so far


@dataclass
class _Full:
    """The moving exact RTRL shadow that runs from the start of the run."""

    rtrl: Estimator
    state: Any


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
    full: _Full | None = field(default=None, repr=False)
    warned: bool = False  # horizon_error has been warned about

    def wants(self, step: int) -> bool:
        """Whether ``observe`` does anything at ``step``: in a window or the W steps before it
        (every step with ``full``); a learner may skip the call, and its ``s_prev`` clone,
        else."""
        cfg = self.config
        if not cfg.every:
            return False
        if cfg.full:
            return True
        phase = step % cfg.every
        return phase < cfg.horizon or phase >= cfg.every - cfg.horizon

    def observe(
        self, params: Params, s_prev: Tensor, x: Tensor, y: Tensor, step: int
    ) -> dict[str, float | int] | None:
        """``observe(self, ...)``, the module function."""
        return observe(self, params, s_prev, x, y, step)

    def state_dict(self) -> dict[str, Any]:
        """Ring, counters, the window in progress and the full shadow (clones, plain trees)."""
        win = self.window
        saved_window = None
        if win is not None:
            saved_window = {
                "start": win.start,
                "end": win.end,
                "steps": win.steps,
                "theta3": win.theta3.clone(),
                "readout3": win.readout3.clone(),
                "shadows": checkpoint.snapshot(win.shadows),
                "exact": checkpoint.snapshot(win.exact),
                "sums": {k: v.clone() for k, v in win.sums.items()},
            }
        return {
            "horizon": self.config.horizon,
            "last": self.last,
            "count": self.count,
            "ring_s": self.ring_s.clone(),
            "ring_x": self.ring_x.clone(),
            "ring_y": None if self.ring_y is None else self.ring_y.clone(),
            "warned": self.warned,
            "window": saved_window,
            "full": None if self.full is None else checkpoint.snapshot(self.full.state),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if "window" not in saved:
            raise ValueError("probe state was written by an older probe (before issue 12)")
        if saved["horizon"] != self.config.horizon or saved["ring_s"].shape != self.ring_s.shape:
            raise ValueError("probe state does not match this probe's horizon or cell")
        self.ring_s.copy_(saved["ring_s"])
        self.ring_x.copy_(saved["ring_x"])
        ring_y = saved["ring_y"]
        self.ring_y = None if ring_y is None else ring_y.to(self.device).clone()
        self.last, self.count = saved["last"], int(saved["count"])
        self.warned = bool(saved["warned"])
        self.window = None
        if saved["window"] is not None:
            self.window = _restore_window(self, saved["window"])
        self.full = None
        if saved["full"] is not None:
            if not self.config.full:
                raise ValueError("probe state holds a full-run shadow; this probe has none")
            self.full = _new_full(self)
            checkpoint.restore(self.full.state, saved["full"], "probe.full")


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
    """A probe for ``estimator_name`` (validated now: name, cell, hyperparameters, loss, and
    the size the ``full`` shadow allows)."""
    device = torch.device(device)
    hyper = dict(estimator_hyper)
    if config.every and config.full and cell.hidden > FULL_MAX_HIDDEN:
        raise ValueError(
            f"probe: probe_full runs exact RTRL over the whole run (O(n^4) per step) and is "
            f"refused for hidden {cell.hidden} > {FULL_MAX_HIDDEN}; set probe_full=false"
        )
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
    """Feed step ``step`` of stream 0; the window's report at its last step, else ``None``.

    ``params`` shared (``theta [P]``, ``readout [o, n + 1]``), ``s_prev [S]``, ``x [m]``,
    ``y []`` (ce) or ``[o]`` (mse)."""
    cfg = state.config
    if not cfg.every:
        return None
    contiguous = state.last is not None and step == state.last + 1
    if not contiguous:
        state.window = None  # a gap in the steps: the shadows no longer follow the learner
        if state.last is not None:
            state.count = 0
    if not state.wants(step):
        return None
    if params.per_stream:
        raise ValueError("probe: params must be the shared (stream 0) parameters, not per-stream")
    if s_prev.shape != (state.cell.state_size,) or x.shape != (state.cell.inputs,):
        raise ValueError(
            f"probe: s_prev {tuple(s_prev.shape)} and x {tuple(x.shape)} must be "
            f"[{state.cell.state_size}] and [{state.cell.inputs}] (stream 0)"
        )
    if state.ring_y is None:
        state.ring_y = torch.zeros(cfg.horizon, *y.shape, dtype=y.dtype, device=state.device)
    g_full = _full_step(state, params, s_prev, x, y, contiguous) if cfg.full else None
    if state.window is None and step % cfg.every == 0:
        state.window = _begin(state, params, s_prev, step)  # reads the ring before this step
    _record(state, s_prev, x, y, step)
    if state.window is None:
        return None
    return _window_step(state, params, x, y, step, g_full)


def _record(state: ProbeState, s_prev: Tensor, x: Tensor, y: Tensor, step: int) -> None:
    assert state.ring_y is not None
    slot = step % state.config.horizon
    state.ring_s[slot].copy_(s_prev)
    state.ring_x[slot].copy_(x)
    state.ring_y[slot].copy_(y)
    state.count = min(state.count + 1, state.config.horizon)
    state.last = step


def _slots(state: ProbeState) -> list[int]:
    """Ring slots of the recorded steps ``last - count + 1 .. last``, oldest first."""
    horizon = state.config.horizon
    if state.last is None:
        return []
    return [(state.last - state.count + 1 + i) % horizon for i in range(state.count)]


def _rows(t: Tensor, batch: int) -> Tensor:
    return t.expand(batch, *t.shape)


def _set_state(est_state: Any, s: Tensor, batch: int) -> None:
    """Put every stream of an estimator state at ``s [S]``."""
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


def _new_full(state: ProbeState) -> _Full:
    cell, dt, dev = state.cell, state.dtype, state.device
    shape = Params(
        torch.zeros(cell.num_params, dtype=dt, device=dev),
        torch.zeros(1, cell.hidden + 1, dtype=dt, device=dev),
    )
    rtrl, exact = start("rtrl", cell, shape, state.loss_kind, 1)
    return _Full(rtrl, exact)


def _full_step(
    state: ProbeState, params: Params, s_prev: Tensor, x: Tensor, y: Tensor, contiguous: bool
) -> Tensor:
    """One step of the full-run shadow on the live state; its ``theta`` gradient ``[P]``.
    It starts (zero influence) at the first observed step, or again after a gap."""
    if state.full is None or not contiguous:
        state.full = _new_full(state)
    full = state.full
    _set_state(full.state, s_prev, 1)
    return full.rtrl.step(params, full.state, x[None], y[None]).grad.theta


def _shadows(state: ProbeState, params: Params, start_step: int) -> tuple[Estimator, Any]:
    k = state.config.samples
    seeds = stream_seeds(_window_seed(state.seed, start_step), k, state.device)
    return start(
        state.estimator_name,
        state.cell,
        params.expand(k),
        state.loss_kind,
        k,
        seeds=seeds,
        **state.hyper,
    )


def _zero_sums(state: ProbeState, readout_size: int) -> dict[str, Tensor]:
    k, p = state.config.samples, state.cell.num_params
    dt, dev = state.dtype, state.device
    sums = {
        "hat": torch.zeros(k, p, dtype=dt, device=dev),
        "hat_r": torch.zeros(k, readout_size, dtype=dt, device=dev),
        "exact": torch.zeros(3, p, dtype=dt, device=dev),
        "exact_r": torch.zeros(3, readout_size, dtype=dt, device=dev),
    }
    if state.config.full:
        sums["full"] = torch.zeros(p, dtype=dt, device=dev)
    return sums


def _begin(state: ProbeState, params: Params, s_prev: Tensor, step: int) -> _Window:
    """Shadows at ``s_prev`` with zero influence; row 2 of the exact RTRL gets the influence
    of the recorded W steps before ``step`` (theta held, teacher-forced on their states)."""
    cell = state.cell
    theta3 = params.theta.detach().expand(3, -1).clone()
    readout3 = params.readout.detach().expand(3, *params.readout.shape).clone()
    rtrl, exact = start("rtrl", cell, Params(theta3, readout3), state.loss_kind, 3)
    slots = _slots(state)
    if slots:
        assert state.ring_y is not None
        held = Params(theta3[1], readout3[1])
        _, history = start("rtrl", cell, held, state.loss_kind, 1)
        for slot in slots:
            _set_state(history, state.ring_s[slot], 1)
            rtrl.step(held, history, state.ring_x[slot][None], state.ring_y[slot][None])
        exact.g[2].copy_(history.g[0])
    _set_state(exact, s_prev, 3)
    estimator, shadows = _shadows(state, params, step)
    _set_state(shadows, s_prev, state.config.samples)
    sums = _zero_sums(state, params.readout.numel())
    end = step + state.config.horizon
    return _Window(step, end, estimator, shadows, rtrl, exact, theta3, readout3, sums)


def _restore_window(state: ProbeState, saved: dict[str, Any]) -> _Window:
    theta3 = saved["theta3"].to(state.device).clone()
    readout3 = saved["readout3"].to(state.device).clone()
    rtrl, exact = start("rtrl", state.cell, Params(theta3, readout3), state.loss_kind, 3)
    checkpoint.restore(exact, saved["exact"], "probe.window.exact")
    held = Params(theta3[1], readout3[1])
    estimator, shadows = _shadows(state, held, saved["start"])
    checkpoint.restore(shadows, saved["shadows"], "probe.window.shadows")
    sums = _zero_sums(state, readout3[0].numel())
    if set(sums) != set(saved["sums"]):
        raise ValueError("probe state's window does not match this probe (probe_full)")
    for key, value in saved["sums"].items():
        checkpoint.restore(sums[key], value, f"probe.window.sums.{key}")
    return _Window(
        saved["start"], saved["end"], estimator, shadows, rtrl, exact, theta3, readout3, sums,
        int(saved["steps"]),
    )


def _window_step(
    state: ProbeState, params: Params, x: Tensor, y: Tensor, step: int, g_full: Tensor | None
) -> dict[str, float | int] | None:
    win = state.window
    assert win is not None
    cfg, sums = state.config, win.sums
    k = cfg.samples
    measured = step >= win.end - cfg.window
    many = params.expand(k)
    grad = win.estimator.step(many, win.shadows, _rows(x, k), _rows(y, k)).grad
    win.theta3[0].copy_(params.theta)
    win.readout3[0].copy_(params.readout)
    exact = win.rtrl.step(
        Params(win.theta3, win.readout3), win.exact, _rows(x, 3), _rows(y, 3)
    ).grad
    if measured:
        if grad is not None:
            sums["hat"].add_(grad.theta)
            sums["hat_r"].add_(grad.readout.reshape(k, -1))
        sums["exact"].add_(exact.theta)
        sums["exact_r"].add_(exact.readout.reshape(3, -1))
        if g_full is not None:
            sums["full"].add_(g_full)
        win.steps += 1
    if step + 1 < win.end:
        return None
    tail = win.estimator.flush(many, win.shadows)
    if tail is not None:
        sums["hat"].add_(tail.theta)
        sums["hat_r"].add_(tail.readout.reshape(k, -1))
    state.window = None
    report: dict[str, float | int] = {
        **window_metrics(sums),
        "step": win.end,
        "start": win.start,
        "samples": k,
        "window": win.steps,
    }
    horizon_error = report["horizon_error"]
    if not state.warned and horizon_error > HORIZON_WARNING:
        state.warned = True
        warnings.warn(
            f"probe: horizon_error {horizon_error:.3g} > {HORIZON_WARNING} in the window ending "
            f"at step {win.end}: probe_horizon = {cfg.horizon} steps do not cover the task's "
            "memory; raise probe_horizon",
            RuntimeWarning,
            stacklevel=2,
        )
    return report


def squared_bias(hat: Tensor, reference: Tensor) -> tuple[float, float]:
    """``(b2, se)``: the unbiased estimate of ``||E hat_k - reference||^2`` from ``hat [K, D]``
    (``||mean - reference||^2 - tr S / K``, S the sample covariance with divisor K - 1) and its
    jackknife standard error over the K rows (NaN for K < 3). K = 1: the raw squared error."""
    d = (hat - reference).double()
    k = d.shape[0]
    if k == 1:
        return float(d.square().sum()), math.nan
    total = d.sum(0)
    sq = d.square().sum(1)  # [K]
    cross = float(total.square().sum() - sq.sum())  # sum_{i != j} d_i . d_j
    b2 = cross / (k * (k - 1))
    if k < 3:
        return b2, math.nan
    # leave row i out: sum_{j != l, both != i} d_j . d_l = cross - 2 d_i . (total - d_i)
    loo = (cross - 2.0 * (d @ total - sq)) / ((k - 1) * (k - 2))
    se = math.sqrt(float((k - 1) / k * (loo - loo.mean()).square().sum()))
    return b2, se


def window_metrics(sums: dict[str, Tensor]) -> dict[str, float]:
    """The window's metrics (see the module's docstring) from its gradient sums."""
    hat = sums["hat"].double()
    moving, held, wide = sums["exact"].double().unbind(0)
    norm2 = float(moving.square().sum()) or math.nan  # a zero reference: NaN, not an error
    b2, se = squared_bias(hat, moving)
    mean = hat.mean(0)
    cos = torch.nn.functional.cosine_similarity
    out = {
        "bias_sq": b2 / norm2,
        "bias_se": se / norm2,
        "bias": math.sqrt(max(0.0, b2 / norm2)) if norm2 == norm2 else math.nan,
        "variance": float((hat - mean).square().sum(1).mean()) / norm2,
        "cosine": float(cos(hat, held[None], dim=1).mean()),
        "readout_cosine": float(
            cos(sums["hat_r"].double(), sums["exact_r"][1].double()[None], dim=1).mean()
        ),
        "staleness": float((moving - held).norm() / held.norm()),
        "horizon_error": float((held - wide).norm() / wide.norm()),
    }
    if "full" in sums:
        out["staleness_full"] = float((sums["full"].double() - wide).norm() / wide.norm())
    return out
