"""Alignment of estimators on one trajectory (the "alignment matrix" of Marschall, Cho &
Savin 2020).

One learner is driven by one estimator (a real ``Learner``: its optimizer, rates, clipping).
Every other estimator runs **passively** on the same trajectory: at every step t it is given a
copy of the driver's parameters ``theta_t`` (those with which ``l_t`` is computed, before the
step's update), the driver's hidden state ``s_{t-1}`` (set into its forward pass before the
step) and the same ``(x_t, y_t)``; it keeps its own estimator state (influence, ring, noise)
and its gradients are never applied. The driven estimator is measured the same way, by a
passive twin that draws the driver's own noise (its stream seeds); every other stochastic
estimator gets seeds of its own, so that no two estimators share noise.

``g*`` is exact RTRL run passively on the same trajectory from step 0 (the dense ``torch.func``
path, an implementation independent of RTRL's tanh closed form): its influence
``G_t = J_t G_{t-1} + dF/dtheta|_t`` is linearised at the parameters the learner actually had
at each step, so ``g*_t = (dl_t/ds_t) G_t`` is the true online gradient of ``l_t`` along the
driven trajectory (the gradient an exact online learner would apply).

Windows. Every ``every`` steps a window of ``window`` steps opens; each estimator's pending
gradient is flushed and dropped when it opens (truncated BPTT's losses from before it), and
flushed into the window when it closes, so every sum covers exactly the window's losses. Per
window, with ``G_e = sum_t g_e,t`` over the **recurrent parameters theta only** (the readout's
gradient is exact for every estimator and would only dilute the figures):

    cosine_e   = cos(G_e, G*)              each estimator against g*
    matrix_ab  = cos(G_a, G_b)             pairwise, symmetric, ones on the diagonal

(a zero ``G`` gives NaN). Batching: UORO and NoBackTrack on the tanh closed form share one
state layout (``RankOneState``) and run stacked in one state with one forward pass
(``rank_one_stack``); every other estimator owns a layout of its own (rtrl a dense influence,
kf-rtrl Kronecker factors, snap1 a block-diagonal influence, rflo eligibility traces, tbptt a
ring of past steps) and steps alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import rank_one_stack
from rnnsweep.algorithms.estimator import Estimator, start
from rnnsweep.algorithms.learner import Learner
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.signs import stream_seeds

REFERENCE = "g*"


@dataclass(frozen=True)
class AlignmentConfig:
    every: int = 100  # a window opens at every multiple of ``every``
    window: int = 100  # steps measured per window, 1 <= window <= every

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"--probe-every must be >= 1, got {self.every}")
        if not 1 <= self.window <= self.every:
            raise ValueError(
                f"--window must be in [1, --probe-every={self.every}], got {self.window}"
            )


@dataclass
class _Group:
    """Estimators stepped in one computation: ``names`` share ``state`` (B streams each)."""

    names: list[str]
    estimator: Estimator | None  # None: a stacked rank-one group (``rank_one_stack``)
    state: Any


@dataclass
class AlignmentState:
    config: AlignmentConfig
    names: list[str]  # measured estimators, in the user's order
    batch: int  # B streams per estimator
    params: Params  # the passives' own copy of the driver's parameters (shared layout)
    groups: list[_Group]
    reference: Any  # exact RTRL state (g*)
    rtrl: Estimator
    sums: Tensor  # [E + 1, P]: window sums of the estimators, then g*
    start: int | None = None  # first step of the open window
    reports: list[dict[str, Any]] = field(default_factory=list)


def init(
    learner: Learner,
    names: Sequence[str],
    hyper: dict[str, dict[str, Any]],
    config: AlignmentConfig,
) -> AlignmentState:
    """Passive estimators ``names`` (hyperparameters ``hyper[name]``) for ``learner``'s
    trajectory; ``ValueError`` naming an estimator that does not fit its cell or task."""
    if learner.population.pack != 1 or learner.population.filter is not None:
        raise ValueError("compare drives one learner with sgd or adam (not the Kalman filter)")
    cell, loss_kind, batch = learner.cell, learner.loss_kind, learner.batch
    params = Params(learner.params.theta.clone(), learner.params.readout.clone())
    drive, seed = learner.spec.estimator, learner.spec.seed
    # the twin of the driver draws the driver's noise; the others draw rows of their own
    pool = stream_seeds(seed, batch * (len(names) + 1), params.theta.device)
    seeds = {
        name: pool[:batch] if name == drive else pool[batch * (i + 1) : batch * (i + 2)]
        for i, name in enumerate(names)
    }
    stacked = rank_one_stack.stackable(cell, names, hyper)
    groups: list[_Group] = []
    if len(stacked) > 1:
        state = rank_one_stack.init(
            cell, params, loss_kind, batch, stacked, [seeds[n] for n in stacked], hyper
        )
        groups.append(_Group(list(stacked), None, state))
    for name in names:
        if len(stacked) > 1 and name in stacked:
            continue
        try:
            estimator, state = start(
                name, cell, params, loss_kind, batch, seeds=seeds[name], **hyper.get(name, {})
            )
        except ValueError as error:
            raise ValueError(f"estimator {name!r} cannot run here: {error}") from None
        groups.append(_Group([name], estimator, state))
    rtrl, reference = start("rtrl", cell, params, loss_kind, batch, path="generic")
    sums = torch.zeros(len(names) + 1, cell.num_params, dtype=params.theta.dtype,
                       device=params.theta.device)
    return AlignmentState(config, list(names), batch, params, groups, reference, rtrl, sums)


def _set_state(est_state: Any, s: Tensor) -> None:
    traj = est_state.traj
    traj.set_state(s) if hasattr(traj, "set_state") else setattr(traj, "s", s.clone())


def _flush(state: AlignmentState, add: bool) -> None:
    for group in state.groups:
        if group.estimator is None:
            continue  # rank-one estimators leave nothing pending
        tail = group.estimator.flush(state.params, group.state)
        if tail is not None and add:
            state.sums[state.names.index(group.names[0])].add_(tail.theta)


def observe(
    state: AlignmentState, params: Params, s_prev: Tensor, x: Tensor, y: Tensor, t: int
) -> dict[str, Any] | None:
    """Step every passive estimator and g* at step ``t`` (before the driver's update):
    ``params`` the driver's (shared), ``s_prev [B, S]``, ``x [B, m]``, ``y``. Returns the
    window's report at its last step, else ``None``."""
    cfg = state.config
    state.params.theta.copy_(params.theta)
    state.params.readout.copy_(params.readout)
    opening = state.start is None and t % cfg.every == 0
    if opening:
        _flush(state, add=False)
        state.sums.zero_()
        state.start = t
    inside = state.start is not None
    for group in state.groups:
        if group.estimator is None:
            grads = rank_one_stack.step(state.params, group.state, s_prev, x, y)
            if inside:
                for name, g in zip(group.names, grads, strict=True):
                    state.sums[state.names.index(name)].add_(g)
            continue
        _set_state(group.state, s_prev)
        grad = group.estimator.step(state.params, group.state, x, y).grad
        if inside and grad is not None:
            state.sums[state.names.index(group.names[0])].add_(grad.theta)
    _set_state(state.reference, s_prev)
    g_star = state.rtrl.step(state.params, state.reference, x, y).grad
    if not inside:
        return None
    state.sums[-1].add_(g_star.theta)
    if t + 1 < state.start + cfg.window:
        return None
    _flush(state, add=True)
    report = {"step": t, "start": state.start, **window_metrics(state.sums, state.names)}
    state.start = None
    state.reports.append(report)
    return report


def window_metrics(sums: Tensor, names: Sequence[str]) -> dict[str, Any]:
    """``sums [E + 1, P]`` (estimators, then g*) -> ``{"cosine": {name: cos to g*},
    "matrix": E x E list of pairwise cosines}``; a zero sum gives NaN."""
    norms = torch.linalg.vector_norm(sums, dim=1, keepdim=True)
    unit = sums / norms  # NaN for a zero row
    gram = (unit @ unit.T).clamp_(-1.0, 1.0).tolist()
    e = len(names)
    return {
        "cosine": {name: gram[i][e] for i, name in enumerate(names)},
        "matrix": [row[:e] for row in gram[:e]],
    }


def summarize(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Means over windows: ``{"windows", "mean_cosine": {name: ...}, "mean_matrix": E x E}``
    (NaN windows skipped entry by entry)."""
    if not reports:
        return {"windows": 0, "mean_cosine": {}, "mean_matrix": []}
    cos = torch.tensor([[r["cosine"][n] for n in names] for r in reports], dtype=torch.float64)
    mat = torch.tensor([r["matrix"] for r in reports], dtype=torch.float64)
    return {
        "windows": len(reports),
        "mean_cosine": dict(zip(names, cos.nanmean(0).tolist(), strict=True)),
        "mean_matrix": mat.nanmean(0).tolist(),
    }


class _TappedStream:
    """The driver's stream, seen through: each ``next()`` hands the step's inputs, with the
    driver's parameters and state at that moment, to ``tap`` before the driver steps."""

    def __init__(self, stream: Any, tap: Callable[[Tensor, Tensor], None]) -> None:
        self._stream, self._tap = stream, tap

    def next(self) -> tuple[Tensor, Tensor]:
        x, y = self._stream.next()
        self._tap(x, y)
        return x, y

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def attach(learner: Learner, state: AlignmentState,
           on_window: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Make every step of ``learner`` feed ``state`` first: ``Population.step`` draws the
    step's ``(x_t, y_t)`` before its estimator step and update, so at that moment its
    parameters are ``theta_t`` and its forward pass holds ``s_{t-1}``. The passives read
    them and write nothing of the learner's (its trajectory is bit-for-bit a lone run's)."""
    population = learner.population
    def tap(x: Tensor, y: Tensor) -> None:
        s_prev = population.est_state.traj.state.clone()
        report = observe(state, population.est_params, s_prev, x, y, population.counters["t"])
        if report is not None and on_window is not None:
            on_window(report)

    population.stream = _TappedStream(population.stream, tap)
