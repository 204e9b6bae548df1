"""``trial_attrs.set_user_attrs``: several user attributes of a trial in one storage
transaction (SQLite and PostgreSQL), all or none; and a sweep's driver writes each trial's
record (the same keys and values as one attribute per call) in a few Optuna commits a trial."""

from __future__ import annotations

import os

import optuna
import pytest
import sqlalchemy as sa

from rnnsweep.benchmarks.driver_throughput import spec_dict
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.driver import Driver
from rnnsweep.orchestrator.trial_attrs import set_user_attrs

ATTRS = {"estimator": "uoro", "settings": {"lr": 0.01, "log_every": 4}, "seed": 7, "run": "x"}


def _commits(engine) -> list[int]:
    count = [0]
    sa.event.listen(engine, "commit", lambda connection: count.__setitem__(0, count[0] + 1))
    return count


def _statements(engine) -> list[int]:
    count = [0]
    sa.event.listen(engine, "before_cursor_execute", lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def test_attrs_land_in_one_commit_and_read_back(storage_url):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage_url)
    trial = study.ask()
    trial.set_user_attr("seed", 1)  # an existing key is overwritten
    engine = study._storage._backend.engine
    commits, statements = _commits(engine), _statements(engine)
    set_user_attrs(trial, ATTRS)
    assert commits[0] == 1
    # the trial read once, then one upsert of every key (Optuna's own path: two per key)
    assert statements[0] == 2
    assert trial.user_attrs == ATTRS
    reread = optuna.load_study(study_name=study.study_name, storage=storage_url)
    assert reread.trials[0].user_attrs == ATTRS


def test_a_finished_trial_takes_none_of_them(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    trial = study.ask()
    set_user_attrs(trial, {"estimator": "uoro"})
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError, match="finished"):
        set_user_attrs(trial, {"seed": 3, "run": "y"})
    assert study.trials[0].user_attrs == {"estimator": "uoro"}


def test_in_memory_storage_gets_one_call_per_key():
    study = optuna.create_study()
    trial = study.ask()
    set_user_attrs(trial, ATTRS)
    assert study.trials[0].user_attrs == ATTRS == trial.user_attrs


def test_a_sweeps_trials_take_few_optuna_commits_and_keep_their_record(ray_session, tmp_path):
    """Near-instant trials (as the throughput benchmark runs them): each trial's record has
    the keys it had with one attribute per transaction, in at most 11 Optuna commits a trial
    (ask and its read, its two parameters, settings with the run id, report, end with the
    node and checkpoint step, tell and its reads: 10.5; it was 11.5 with the node in a
    transaction of its own, and 21 with one per attribute)."""
    trials = 6
    spec = spec_.load_spec_dict({**spec_dict("random", trials, 4, 2), "name": "attrs"})
    commits: list[list[int]] = []

    def on_event(event) -> None:
        if event.kind == "asked" and not commits:
            commits.append(_commits(driver.stores.study._storage._backend.engine))

    with open(os.devnull, "w") as quiet:
        driver = Driver(spec, str(tmp_path), workers=2, out=quiet, on_event=on_event)
        driver.run()
    done = driver.stores.study.get_trials()
    assert [t.state.name for t in done] == ["COMPLETE"] * trials
    per_trial = commits[0][0] / trials
    assert per_trial <= 11, per_trial
    for t in done:
        assert set(t.user_attrs) == {
            "estimator",
            "settings",
            "seed",
            "mlflow_run_id",
            "ray_node_id",
            "ray_node_ip",
            "checkpoint_step",
            "steps_done",
            "timing",
        }, t.user_attrs
        attrs = t.user_attrs
        assert attrs["seed"] == spec.seed + t.number
        assert attrs["settings"]["lr"] == t.params["lr"]
        assert attrs["checkpoint_step"] == attrs["steps_done"] == 4
        assert set(attrs["timing"]) == {"at", "steps_per_sec", "wall_s"}
