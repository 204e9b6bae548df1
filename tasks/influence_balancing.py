"""``influence-balancing`` (Tallec & Ollivier 2017, UORO paper): a linear system, one parameter.

The system (the learner's cell, ``P = 1``, ``S = n``) is

    s' = A s + theta c,    (A s)_i = 1/2 s_i + 1/2 s_{i+1}  (s_{n+1} = 0),
    c = (1, ..., 1, -1, ..., -1)   (``positive`` ones, then n - positive minus ones),

from ``s_0 = 1`` (all ones), with loss ``1/2 (s^1 - 1)^2`` on the first component: a fixed
readout ``[1, n + 1]`` selects ``s^1``, targets are ``y = 1 [B, 1]`` (mse), inputs ``x = 0
[B, 1]`` (m = 1, unused). ``theta`` acts on ``s^1`` positively within a few steps (through the
first ``positive`` units) and negatively in the long run (through the others, which reach
``s^1`` only after travelling up the chain): the fixed point ``(I - A) s* = theta c`` has
``s*^1 = 2 theta (2 positive - n)`` (= -6 theta by default), so the optimum is
``theta* = 1 / (2 (2 positive - n))`` (= -1/6), with loss 0. Truncated BPTT with a truncation
short compared to the chain sees only the positive short-term influence and drives ``theta``
the wrong way (it diverges); unbiased estimators (RTRL, UORO, NoBackTrack) converge.
The system is plain data (``System``); the learner runs it as its cell. ``theta0`` (default
0.5) is the initial ``theta``.
Documented learner settings (the settings table's ``TASK_DEFAULTS``, in
``rnnsweep.algorithms.settings``): Adam, ``lr = 1e-2``, ``lr_decay = 0.3`` (rate
``lr / (1 + 0.3 sqrt(t))``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnsweep.tasks.settings import Setting, integer_setting
from rnnsweep.tasks.stream import Stream
from rnnsweep.tasks.system import System
from rnnsweep.tasks.task import Task


def influence_balancing_system(n: int = 23, positive: int = 10, theta0: float = 0.5) -> System:
    """``fn(theta [1], s [n], x [1]) -> s' [n]``, pure (usable with jvp, vjp and vmap)."""

    def fn(theta: Tensor, s: Tensor, x: Tensor) -> Tensor:
        drive = torch.cat([theta.expand(positive), -theta.expand(n - positive)])
        return 0.5 * (s + F.pad(s[1:], (0, 1))) + drive

    return System(
        name="influence-balancing", hidden=n, inputs=1, state_size=n, num_params=1, fn=fn,
        theta0=(theta0,),
    )


def fixed_point(theta: float, n: int = 23, positive: int = 10) -> Tensor:
    """``s* [n]`` solving ``(I - A) s* = theta c``, float64."""
    a = 0.5 * torch.eye(n, dtype=torch.float64) + 0.5 * torch.diag(
        torch.ones(n - 1, dtype=torch.float64), 1
    )
    c = torch.cat([torch.ones(positive), -torch.ones(n - positive)]).double()
    return torch.linalg.solve(torch.eye(n, dtype=torch.float64) - a, theta * c)


def optimal_theta(n: int = 23, positive: int = 10) -> float:
    """The ``theta`` whose fixed point has ``s*^1 = 1``."""
    return 1.0 / (2.0 * (2 * positive - n))


class InfluenceBalancingStream(Stream):
    """Deterministic: ``x = 0 [B, 1]``, ``y = 1 [B, 1]`` at every step."""

    def _generate(self, steps: int) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(steps, self.batch, 1, dtype=torch.float64)
        return zeros, torch.ones_like(zeros)


SETTINGS = (
    Setting("n", int, 23, "size of the linear system s' = A s + (theta, ..., -theta)", low=2),
    Setting("positive", int, 10, "entries +theta of the input (<= n, != n / 2)", low=0),
    Setting("theta0", float, 0.5, "initial value of the scalar parameter theta"),
)


def influence_balancing_task(*, n: int, positive: int, theta0: float) -> Task:
    name = "influence-balancing"
    positive = integer_setting(name, "positive", positive, low=0, high=n)
    if 2 * positive == n:
        raise ValueError(
            f"{name}: setting 'positive' must differ from n / 2 (no theta reaches the target)"
        )
    settings: dict[str, Any] = {"n": n, "positive": positive, "theta0": theta0}

    def make_stream(batch: int, seed: int, dtype: torch.dtype, device: torch.device) -> Stream:
        return InfluenceBalancingStream(
            task=name, settings=settings, inputs=1, batch=batch, seed=seed, dtype=dtype,
            device=device,
        )

    readout = torch.zeros(1, n + 1, dtype=torch.float64)
    readout[0, 0] = 1.0
    return Task(
        name, 1, 1, "mse", {"optimum": 0.0}, False, settings, make_stream,
        cell=lambda: influence_balancing_system(n, positive, theta0),
        readout=readout, hidden=n, initial_state=torch.ones(n, dtype=torch.float64),
    )
