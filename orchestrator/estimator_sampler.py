"""One sampler per estimator, for sweeps that give every estimator its share of the trials.

With ``estimator_choice: split`` the driver assigns each new trial its estimator before
sampling (``estimator_split.next_estimator``, handed to Optuna as a fixed parameter with
``enqueue_trial``). ``EstimatorSampler`` then samples that trial's other parameters with the
inner sampler of its estimator, shown a view of the study that holds that estimator's trials
only (``study_view``): a TPE fitted to tbptt's trials never proposes uoro's learning rates,
and a slow learner's bad early losses never steer the others. The estimator itself is taken
out of the relative search space (it is fixed, as with Optuna's ``PartialFixedSampler``).

A trial asked without an assignment (a spec with ``estimator_choice: searched`` never gets
this sampler; a caller asking directly may) is sampled by one more inner sampler over the
whole study, as a single sampler would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from rnnsweep.orchestrator.study_view import study_view, trial_estimator

ESTIMATOR = "estimator"  # the parameter ``spec.suggest`` samples the estimator as


class EstimatorSampler(BaseSampler):
    """Delegates each trial to the sampler of its estimator, over that estimator's trials.

    ``make(seed)`` builds one inner sampler; each estimator's gets its own seed drawn from
    ``seed`` (``numpy.random.SeedSequence``), so the estimators' draws are independent and a
    sweep's draws repeat with its seed.
    """

    def __init__(
        self, estimators: Sequence[str], make: Callable[[int], BaseSampler], seed: int
    ) -> None:
        states = np.random.SeedSequence([seed % 2**64, len(estimators)]).generate_state(
            len(estimators) + 1
        )
        self.estimators = tuple(estimators)
        self.samplers = {e: make(int(s)) for e, s in zip(estimators, states[:-1], strict=True)}
        self.shared = make(int(states[-1]))

    def _route(self, study: optuna.Study, trial: FrozenTrial) -> tuple[BaseSampler, Any]:
        estimator = trial_estimator(trial)
        if estimator not in self.samplers:
            return self.shared, study
        view = study_view(study, lambda t: trial_estimator(t) == estimator)
        return self.samplers[estimator], view

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        sampler, view = self._route(study, trial)
        space = sampler.infer_relative_search_space(view, trial)
        if sampler is not self.shared:
            space.pop(ESTIMATOR, None)
        return space

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        sampler, view = self._route(study, trial)
        return sampler.sample_relative(view, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        sampler, view = self._route(study, trial)
        if param_name == ESTIMATOR and sampler is not self.shared:
            return trial_estimator(trial)  # (Optuna answers fixed params before asking)
        return sampler.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        sampler, view = self._route(study, trial)
        sampler.before_trial(view, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        sampler, view = self._route(study, trial)
        sampler.after_trial(view, trial, state, values)

    def reseed_rng(self) -> None:
        for sampler in (*self.samplers.values(), self.shared):
            sampler.reseed_rng()
