"""``SweepStores.asked`` counts the trials asked without reading the study's trial list on
every call (the driver asks it twice a loop turn), stays equal to the study's own count (a
resume counts what earlier drivers asked; continuations are not counted), and an ask cut short
by an outage after Optuna created its trial takes that trial up instead of making another.
Real Optuna (SQLite) and MLflow stores, opened as the driver opens them."""

from __future__ import annotations

import sqlite3

import optuna
from opened_stores import opened_stores

from rnnsweep.orchestrator import continuation
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.stores import SweepStores


def _spec(**overrides) -> spec_.SweepSpec:
    spec = {
        "name": "counted",
        "task": "add",
        "hidden": 4,
        "steps": 4,
        "trials": 20,
        "estimators": ["uoro"],
        "fixed": {"log_every": 4},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "sampler": "random",
    }
    spec.update(overrides)
    return spec_.load_spec_dict(spec)


def _originals(stores: SweepStores) -> int:
    return len(continuation.originals(stores.study.get_trials(deepcopy=False)))


def _count_reads(stores: SweepStores) -> list[int]:
    """Counts the study's ``get_trials`` calls from now on."""
    calls = [0]
    get_trials = stores.study.get_trials

    def counted(*args, **kwargs):
        calls[0] += 1
        return get_trials(*args, **kwargs)

    stores.study.get_trials = counted
    return calls


def test_asked_is_counted_once_then_kept_by_ask(tmp_path):
    stores = opened_stores(_spec(), tmp_path)
    try:
        get_trials = stores.study.get_trials
        calls = _count_reads(stores)
        assert stores.asked() == 0
        for n in range(1, 8):
            trial, estimator, settings = stores.ask()
            stores.record_settings(trial, estimator, settings)
            if n % 2:
                stores.study.tell(trial, settings["lr"])
            assert stores.asked() == stores.asked() == n
            assert calls[0] == 1, calls  # the first count's read only: none per ask or count
            assert len(continuation.originals(get_trials(deepcopy=False))) == n
    finally:
        stores.close("FINISHED")


def test_resume_counts_earlier_asks_and_leaves_out_continuations(tmp_path):
    spec = _spec()
    first = opened_stores(spec, tmp_path)
    for _ in range(3):
        trial, estimator, settings = first.ask()
        first.record_settings(trial, estimator, settings)
        first.study.tell(trial, settings["lr"])
    # a continuation (as `rnnsweep extend` makes one): a trial, not an ask
    origin = first.study.get_trials(deepcopy=False)[0]
    first.study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=origin.params,
            distributions=origin.distributions,
            user_attrs={**origin.user_attrs, continuation.CONTINUES: origin.number},
        )
    )
    first.close("KILLED")
    again = opened_stores(spec, tmp_path, resume=True)
    try:
        assert len(again.study.get_trials(deepcopy=False)) == 4
        assert again.asked() == 3
        trial, _, _ = again.ask()
        assert trial.number == 4
        assert again.asked() == 4 == _originals(again)
    finally:
        again.close("FINISHED")


def test_an_ask_cut_short_after_its_trial_was_created_takes_that_trial(tmp_path):
    stores = opened_stores(_spec(), tmp_path)
    try:
        trial, estimator, settings = stores.ask()
        stores.record_settings(trial, estimator, settings)
        ask = stores.study.ask
        failed = [0]

        def created_then_locked(*args, **kwargs):
            made = ask(*args, **kwargs)
            if not failed[0]:  # the commit landed, then the connection failed
                failed[0] += 1
                raise sqlite3.OperationalError("database is locked")
            return made

        stores.study.ask = created_then_locked
        trial, _, _ = stores.ask()
        assert failed[0] == 1
        numbers = [t.number for t in stores.study.get_trials(deepcopy=False)]
        assert numbers == [0, 1] and trial.number == 1  # no second trial made
        assert stores.asked() == 2
    finally:
        stores.close("FINISHED")
