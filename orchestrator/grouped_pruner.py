"""A pruner that prunes a trial only against the trials of its own group.

Estimators learn at different speeds by design: a median pruner comparing uoro's early losses
with tbptt's prunes every uoro trial. ``GroupedPruner`` groups trials by ``keys`` (by default
estimator, task and cell) and hands the inner pruner (median, percentile, hyperband, any
Optuna pruner) a view of the study that holds only the trial's group (``study_view``), so the
inner pruner's own rules (startup, warm-up, percentiles, rungs) apply within the group.

``min_complete``: no trial of a group is pruned before the group has that many COMPLETE
trials, whatever the scope (the inner pruner is still asked, so that a stateful one records
those trials, and its answer ignored). ``within="global"`` keeps that guard but lets the
inner pruner see every trial (the comparison across estimators, as a plain pruner makes it).

A trial's value of a key is read from its user attrs, then its recorded ``settings``, then its
params, then ``defaults`` (a sweep's task and cell are the spec's, one per study).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from rnnsweep.orchestrator.study_view import study_view, trial_estimator

GROUP_KEYS = ("estimator", "task", "cell")
SCOPES = ("estimator", "global")


class GroupedPruner(BasePruner):
    """``inner`` applied within each group of trials (see the module's doc)."""

    def __init__(
        self,
        inner: BasePruner,
        within: str = "estimator",
        min_complete: int = 2,
        keys: Sequence[str] = GROUP_KEYS,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        if within not in SCOPES:
            raise ValueError(f"within must be one of {', '.join(SCOPES)}, got {within!r}")
        if min_complete < 0:
            raise ValueError(f"min_complete must be >= 0, got {min_complete}")
        self.inner, self.within, self.min_complete = inner, within, min_complete
        self.keys, self.defaults = tuple(keys), dict(defaults or {})

    def group(self, trial: FrozenTrial) -> tuple[Any, ...]:
        """The trial's value of each key."""
        settings = trial.user_attrs.get("settings") or {}
        out = []
        for key in self.keys:
            if key == "estimator":
                value = trial_estimator(trial)
            else:
                value = trial.user_attrs.get(key, settings.get(key, trial.params.get(key)))
            out.append(self.defaults.get(key) if value is None else value)
        return tuple(out)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        mine = self.group(trial)

        def same(other: FrozenTrial) -> bool:
            return self.group(other) == mine

        view = study if self.within == "global" else study_view(study, same, pruner=self.inner)
        # Asked even before the group has min_complete trials: a stateful pruner (Hyperband's
        # rungs) records the trial, so the group's first trials are competitors later.
        if not self.inner.prune(view, trial):
            return False
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return sum(same(t) for t in complete) >= self.min_complete
