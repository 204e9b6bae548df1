"""The split of a sweep's trials over its estimators (``estimator_choice: split``).

``trials`` is shared evenly by the spec's estimators, the remainder going to the first ones in
the spec's order (13 trials over uoro, tbptt, rtrl: 5, 4, 4). Each new trial goes to the
estimator with the fewest trials so far among those below their share (ties: spec order), so
the estimators alternate (uoro, tbptt, rtrl, uoro, ...) and run side by side. Trials are
counted by their recorded estimator (``study_view.trial_estimator``), whatever their state: a
resumed sweep continues the same plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from rnnsweep.orchestrator.study_view import trial_estimator


def shares(estimators: Sequence[str], trials: int) -> dict[str, int]:
    """Trials per estimator: ``trials`` split evenly, the remainder to the first ones."""
    base, extra = divmod(trials, len(estimators))
    return {e: base + (i < extra) for i, e in enumerate(estimators)}


def next_estimator(estimators: Sequence[str], trials: int, existing: Iterable[Any]) -> str | None:
    """The estimator of the next trial, given the study's ``existing`` (frozen) trials;
    ``None`` when every estimator has its share."""
    counts = Counter(trial_estimator(t) for t in existing)
    share = shares(estimators, trials)
    open_ = [e for e in estimators if counts[e] < share[e]]
    if not open_:
        return None
    return min(open_, key=lambda e: (counts[e], estimators.index(e)))


def split_text(estimators: Sequence[str], trials: int) -> str:
    """``uoro 4, tbptt 4, rtrl 4``."""
    return ", ".join(f"{e} {n}" for e, n in shares(estimators, trials).items())


def splits(spec: Any) -> bool:
    """Whether ``spec`` (a ``SweepSpec``) assigns estimators by the split."""
    return spec.estimator_choice == "split" and len(spec.estimators) > 1
