"""A view of an Optuna study that shows only some of its trials (e.g. one estimator's).

Optuna's samplers and pruners read a study's trials through ``study._get_trials`` /
``study.get_trials``, both of which end in ``study._storage.get_all_trials``; Hyperband even
builds a new ``Study`` on ``study._storage`` for each bracket. So the view is a shallow copy of
the study whose storage is a proxy that filters ``get_all_trials`` and passes every other call
(writes included: a pruner's rung attributes, a sampler's constant-liar params) to the real
storage. A sampler or pruner handed the view sees only the kept trials, and nothing else
changes for it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

Keep = Callable[[FrozenTrial], bool]


class _FilteredStorage:
    """An Optuna storage whose ``get_all_trials`` returns only the trials ``keep`` accepts;
    every other method is the wrapped storage's."""

    def __init__(self, storage: Any, keep: Keep) -> None:
        self._inner, self._keep = storage, keep

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if self._keep(t)]

    def get_n_trials(self, study_id: int, state: Any = None) -> int:
        states = None if state is None else (state if isinstance(state, tuple) else (state,))
        return len(self.get_all_trials(study_id, deepcopy=False, states=states))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def study_view(study: optuna.Study, keep: Keep, pruner: Any = None) -> optuna.Study:
    """``study`` as seen through ``keep``: same name, id, directions and sampler (``pruner``
    in place of its own if given), its trials only those ``keep`` accepts."""
    view = copy.copy(study)  # (``Study.__setstate__`` gives the copy its own trial cache)
    view._storage = _FilteredStorage(study._storage, keep)
    if pruner is not None:
        view.pruner = pruner
    return view


def trial_estimator(trial: FrozenTrial) -> str | None:
    """The estimator of a trial: recorded (user attr), suggested (param) or assigned before
    sampling (``enqueue_trial``'s fixed params); ``None`` while it has none."""
    found = trial.user_attrs.get("estimator") or trial.params.get("estimator")
    if found is None:
        found = trial.system_attrs.get("fixed_params", {}).get("estimator")
    return found
