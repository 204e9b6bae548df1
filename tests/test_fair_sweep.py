"""A real sweep (local Ray, SQLite Optuna and MLflow) over three estimators with the default
split and the median pruner within estimators: each estimator gets its 4 of 12 trials and at
least two complete, and a pruned trial keeps its last loss and the step it was pruned at."""

from __future__ import annotations

from collections import Counter

from log_chunks import ONE_LOG_CHUNK

from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.driver import Driver
from rnnsweep.orchestrator.study_view import trial_estimator

ESTIMATORS = ["uoro", "tbptt", "rtrl"]
STEPS, LOG_EVERY = 1500, 100


def test_twelve_trials_over_three_estimators_with_the_median_pruner(ray_session, tmp_path):
    spec = spec_.load_spec_dict(
        {
            "name": "fair",
            "task": "add",
            "hidden": 8,
            "steps": STEPS,
            "trials": 12,
            "estimators": ESTIMATORS,
            "fixed": {"log_every": LOG_EVERY},
            "search": {
                "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                "truncation": {"type": "int", "low": 2, "high": 8, "estimators": ["tbptt"]},
            },
            "pruner": "median",
            "checkpoint_every": 500,
            "workers": 2,
        }
    )
    assert (spec.estimator_choice, spec.prune_within, spec.min_complete_per_estimator) == (
        "split",
        "estimator",
        2,
    )
    # one log interval a chunk: a trial reports while it runs, so that the pruner can stop it
    Driver(spec, str(tmp_path), workers=2, chunk_seconds=ONE_LOG_CHUNK).run()
    _, record = sweep_store.read_record(str(tmp_path), "fair")
    trials = sweep_store.load_study(record).get_trials()
    assert Counter(trial_estimator(t) for t in trials) == dict.fromkeys(ESTIMATORS, 4)
    complete = Counter(trial_estimator(t) for t in trials if t.state.name == "COMPLETE")
    assert all(complete[e] >= 2 for e in ESTIMATORS), complete
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    for trial in trials:
        if trial.state.name != "PRUNED":
            continue
        step = trial.user_attrs["pruned_at_step"]
        assert step == trial.last_step and trial.value == trial.intermediate_values[step]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.metrics["pruned_loss"] == trial.value
        assert run.data.metrics["pruned_at_step"] == step and run.info.status == "KILLED"
