"""What a sweep driver keeps in Optuna's storage (SQLite and PostgreSQL) and in MLflow survives it.

A driver asks and tells trials; a resumed driver loads the study by name from a second study
object and finds every trial, state, parameter, intermediate value and user attribute. A trial
left RUNNING by a driver that died can be told later, by number, from another process.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = "rnnsweep-storage-test"


def _first_driver(url: str) -> None:
    """Ask/tell one COMPLETE, one PRUNED and one FAIL trial, with attributes."""
    study = optuna.create_study(storage=url, study_name=STUDY, direction="minimize")
    study.set_user_attr("sweep", {"estimator": "uoro", "steps": 1000})

    done = study.ask()
    lr = done.suggest_float("lr", 1e-4, 1e-1, log=True)
    done.suggest_categorical("cell", ["tanh", "gru"])
    done.set_user_attr("mlflow_run_id", "run-0")
    done.report(0.9, step=100)
    done.report(0.4, step=200)
    assert study.tell(done, 0.25).state == TrialState.COMPLETE

    pruned = study.ask()
    pruned.suggest_float("lr", 1e-4, 1e-1, log=True)
    pruned.suggest_categorical("cell", ["tanh", "gru"])
    pruned.report(3.0, step=100)
    pruned.set_user_attr("pruned_at", 100)
    assert study.tell(pruned, state=TrialState.PRUNED).state == TrialState.PRUNED

    failed = study.ask()
    failed.suggest_float("lr", 1e-4, 1e-1, log=True)
    failed.set_user_attr("error", "loss diverged: nan")
    assert study.tell(failed, state=TrialState.FAIL).state == TrialState.FAIL

    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.best_params["lr"] == pytest.approx(lr)


def test_study_survives_its_driver(storage_url):
    _first_driver(storage_url)

    resumed = optuna.load_study(study_name=STUDY, storage=storage_url)
    assert resumed.user_attrs["sweep"] == {"estimator": "uoro", "steps": 1000}
    trials = resumed.get_trials(deepcopy=False)
    assert [(t.number, t.state) for t in trials] == [
        (0, TrialState.COMPLETE),
        (1, TrialState.PRUNED),
        (2, TrialState.FAIL),
    ]
    done, pruned, failed = trials
    assert done.value == 0.25 and resumed.best_trial.number == 0
    assert done.intermediate_values == {100: 0.9, 200: 0.4}
    assert done.user_attrs == {"mlflow_run_id": "run-0"}
    assert set(done.params) == {"lr", "cell"} and 1e-4 <= done.params["lr"] <= 1e-1
    # Optuna records the last intermediate value as the value of a pruned trial.
    assert pruned.value == 3.0 and pruned.intermediate_values == {100: 3.0}
    assert pruned.user_attrs == {"pruned_at": 100}
    assert failed.value is None and failed.user_attrs == {"error": "loss diverged: nan"}
    assert all(t.datetime_complete is not None for t in trials)

    # A resumed driver that re-tells a finished trial changes nothing.
    again = resumed.tell(0, 99.0, skip_if_finished=True)
    assert again.value == 0.25
    with pytest.raises(ValueError, match="Cannot tell a PRUNED trial"):
        resumed.tell(1, 1.0)

    # New trials continue the numbering.
    trial = resumed.ask()
    assert trial.number == 3
    resumed.tell(trial, 0.5)
    reloaded = optuna.load_study(study_name=STUDY, storage=storage_url)
    assert len(reloaded.trials) == 4 and reloaded.best_value == 0.25


DEAD_DRIVER = textwrap.dedent(
    """
    import os, sys
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=sys.argv[1], study_name=sys.argv[2])
    trial = study.ask()
    trial.suggest_int("hidden", 8, 64)
    trial.set_user_attr("worker", "node-1")
    trial.report(1.5, step=10)
    print(trial.number, flush=True)
    os._exit(17)  # dies without telling: no cleanup, no atexit
    """
)


def test_running_trial_of_a_dead_driver_is_told_by_number(storage_url):
    dead = subprocess.run(
        [sys.executable, "-c", DEAD_DRIVER, storage_url, STUDY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dead.returncode == 17, dead.stderr
    number = int(dead.stdout.split()[-1])

    study = optuna.load_study(study_name=STUDY, storage=storage_url)
    (orphan,) = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert orphan.number == number
    assert orphan.user_attrs == {"worker": "node-1"}
    assert orphan.intermediate_values == {10: 1.5}

    told = study.tell(number, 0.125)
    assert told.state == TrialState.COMPLETE and told.value == 0.125

    final = optuna.load_study(study_name=STUDY, storage=storage_url).trials
    assert [(t.number, t.state, t.value) for t in final] == [(number, TrialState.COMPLETE, 0.125)]
    assert 8 <= final[0].params["hidden"] <= 64


def test_tracker_writes_metric_history_and_resumes(tmp_path):
    from rnnsweep.orchestrator.tracking import Tracker, client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "storage-test", run_name="trial-0", tags={"estimator": "uoro"})
    tracker.log_params({"lr": 0.01, "cell": {"kind": "tanh", "hidden": 8}})
    for step in range(0, 500, 100):
        tracker.log_metrics(step, {"loss": 1.0 / (step + 1), "skipped": "text", "bad": math.nan})
    tracker.log_metrics(400, {"grad_norm": 2.5, "inf": math.inf, "flag": True})
    tracker.close()

    mlflow = client(uri)
    run = mlflow.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-0"
    assert run.data.tags["estimator"] == "uoro"
    assert run.data.params == {"lr": "0.01", "cell.kind": "tanh", "cell.hidden": "8"}
    assert set(run.data.metrics) == {"loss", "grad_norm"}
    history = sorted((m.step, m.value) for m in mlflow.get_metric_history(tracker.run_id, "loss"))
    assert history == [(s, pytest.approx(1.0 / (s + 1))) for s in range(0, 500, 100)]
    assert [(m.step, m.value) for m in mlflow.get_metric_history(tracker.run_id, "grad_norm")] == [
        (400, 2.5)
    ]

    # Resume the same run by id: the history continues after the last step written.
    resumed = Tracker(uri, "storage-test", run_id=tracker.run_id)
    assert mlflow.get_run(tracker.run_id).info.status == "RUNNING"
    start = resumed.resume_step("loss") + 100
    assert start == 500
    for step in range(start, 800, 100):
        resumed.log_metrics(step, {"loss": 1.0 / (step + 1)})
    resumed.flush()
    resumed.close("FAILED")
    steps = sorted(m.step for m in mlflow.get_metric_history(tracker.run_id, "loss"))
    assert steps == list(range(0, 800, 100))
    assert mlflow.get_run(tracker.run_id).info.status == "FAILED"
