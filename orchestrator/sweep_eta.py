"""How long a trial, and a whole sweep, still needs: the estimates the live table and
``rnnsweep status`` show.

A trial's rate is its own steps per wall-clock second (steps done since it started in this
driver, over the seconds since; ``status`` reads the rate its driver last recorded). A trial
without a rate yet (just started, or not asked yet) is given the median rate of its
estimator's trials, else the median of all. Its ETA is its remaining steps over its rate.

The sweep's ETA places the remaining work on ``slots`` concurrent places (workers × pack): the
trials started first, each on the least loaded place, then the trials still to run, in order,
each on the place that frees first (list scheduling). The ETA is when the last place frees.
It counts every trial still to run at its full steps: pruning can only end the sweep sooner.
"""

from __future__ import annotations

import heapq
import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Remaining:
    """One unfinished trial: ``steps`` still to run, its ``rate`` (steps/s, ``None`` while
    unknown), its ``estimator`` (``None`` if not chosen yet) and whether it has ``started``."""

    steps: int
    rate: float | None = None
    estimator: str | None = None
    started: bool = False


def trial_eta(steps_left: int, rate: float | None) -> float | None:
    """Seconds until a trial with ``steps_left`` at ``rate`` steps/s ends; ``None`` if its rate
    is unknown."""
    if steps_left <= 0:
        return 0.0
    return steps_left / rate if rate else None


def sweep_eta(trials: list[Remaining], slots: int) -> float | None:
    """Seconds until the last of ``trials`` ends on ``slots`` places (the module's rule);
    ``0.0`` when no steps remain, ``None`` when no trial has a rate to estimate from.
    ``trials`` may hold ended ones with 0 steps left: their rates inform the others'."""
    if all(t.steps <= 0 for t in trials):
        return 0.0
    known = [t.rate for t in trials if t.rate]
    if not known:
        return None
    overall = statistics.median(known)
    by_estimator: dict[str, list[float]] = {}
    for t in trials:
        if t.rate and t.estimator is not None:
            by_estimator.setdefault(t.estimator, []).append(t.rate)

    def seconds(t: Remaining) -> float:
        rate = t.rate or (
            statistics.median(by_estimator[t.estimator])
            if t.estimator in by_estimator
            else overall
        )
        return max(0, t.steps) / rate

    places = [0.0] * max(1, slots)
    for t in sorted(trials, key=lambda t: not t.started):  # started first, order kept
        heapq.heapreplace(places, places[0] + seconds(t))
    return max(places)


def recorded_times(
    timing: dict[str, Any] | None,
    state: str,
    steps_done: int,
    steps: int,
    live: bool,
    now: float,
) -> dict[str, float | None]:
    """A trial's times as ``status`` shows them, from its ``timing`` attr (seconds run,
    steps/s and the Unix time its driver last recorded them: at each checkpoint and at its
    end): ``wall_s`` (plus the seconds since, while a ``live`` driver runs it),
    ``steps_per_sec`` and ``eta_s`` (0 once ended; ``None`` while unknown)."""
    timing = timing or {}
    wall, rate = timing.get("wall_s"), timing.get("steps_per_sec")
    if wall is not None and live and state == "RUNNING":
        wall += max(0.0, now - timing.get("at", now))
    ended = state in ("COMPLETE", "PRUNED", "FAIL")
    return {
        "wall_s": None if wall is None else round(wall, 3),
        "steps_per_sec": None if rate is None else round(rate, 3),
        "eta_s": 0.0 if ended else _rounded(trial_eta(steps - steps_done, rate)),
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
