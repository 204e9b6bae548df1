"""``Tracker`` keeps a sweep's per-trial MLflow writes off the caller's thread: a new run's
params go to its writer thread (one ``log_batch`` with what else is queued), tags queued at a
trial's end go with its last metrics in one call, a known experiment id is not looked up; a
reopened run gets the params it lacks (what a driver killed before its writer wrote them left
out). A real MLflow SQLite store."""

from __future__ import annotations

import threading
import time

from rnnsweep.orchestrator import tracking
from rnnsweep.orchestrator.tracking import Tracker

PARAMS = {"estimator": "uoro", "lr": 0.01, "cell": {"kind": "tanh", "hidden": 4}}
FLAT = {"estimator": "uoro", "lr": "0.01", "cell.kind": "tanh", "cell.hidden": "4"}


def _watched(uri: str) -> list[tuple[str, str, int, int, int]]:
    """Every ``log_batch`` and experiment lookup of the store's client from now on, as
    ``(call, thread, metrics, params, tags)``."""
    client = tracking.client(uri)
    calls: list[tuple[str, str, int, int, int]] = []
    log_batch, by_name = client.log_batch, client.get_experiment_by_name

    def watched_batch(run_id, metrics=(), params=(), tags=(), **kwargs):
        name = threading.current_thread().name
        calls.append(("log_batch", name, len(metrics or ()), len(params or ()), len(tags or ())))
        return log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    def watched_lookup(name):
        calls.append(("lookup", threading.current_thread().name, 0, 0, 0))
        return by_name(name)

    client.log_batch, client.get_experiment_by_name = watched_batch, watched_lookup
    return calls


def test_a_new_runs_params_and_end_tags_go_to_the_writer(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.experiment_id(tracking.client(uri), "writes")
    calls = _watched(uri)
    tracker = Tracker(uri, "writes", tags={"a": 1}, experiment_id=experiment, params=PARAMS)
    tracker.log_metrics(1, {"loss": 0.5})
    tracker.flush()
    tracker.log_metrics(2, {"loss": 0.25})
    tracker.queue_tags({"optuna_state": "COMPLETE", "reason": "done"})
    tracker.close("FINISHED")
    run = tracking.client(uri).get_run(tracker.run_id)
    assert run.data.params == FLAT
    assert run.data.tags["optuna_state"] == "COMPLETE" and run.data.tags["a"] == "1"
    assert run.data.metrics == {"loss": 0.25} and run.info.status == "FINISHED"
    assert all(call[1] == "mlflow-writer" for call in calls), calls  # no lookup, no batch here
    assert calls[-1] == ("log_batch", "mlflow-writer", 1, 0, 2), calls  # last metric + tags
    assert sum(call[3] for call in calls) == len(FLAT)


def test_a_short_run_writes_params_metrics_and_end_tags_in_one_call(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.experiment_id(tracking.client(uri), "short")
    calls = _watched(uri)
    tracker = Tracker(uri, "short", experiment_id=experiment, params=PARAMS)
    tracker.log_metrics(4, {"loss": 0.5, "final_loss": 0.5})
    tracker.queue_tags({"optuna_state": "COMPLETE"})
    tracker.close("FINISHED")
    assert calls == [("log_batch", "mlflow-writer", 2, len(FLAT), 1)], calls
    run = tracking.client(uri).get_run(tracker.run_id)
    assert run.data.params == FLAT and run.data.tags["optuna_state"] == "COMPLETE"


def test_a_long_runs_params_are_written_within_params_wait(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "long", params=PARAMS)
    try:
        deadline = time.monotonic() + tracking.PARAMS_WAIT + 5.0
        written = {}
        while time.monotonic() < deadline and written != FLAT:  # no metric, no flush
            time.sleep(0.05)
            written = tracking.client(uri).get_run(tracker.run_id).data.params
        assert written == FLAT
    finally:
        tracker.close("FINISHED")


def test_a_reopened_run_gets_the_params_it_lacks_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = Tracker(uri, "reopened")  # a run whose params were never written
    first.log_params({"lr": 0.01})  # one of them was
    first.close("KILLED")
    calls = _watched(uri)
    again = Tracker(uri, "reopened", run_id=first.run_id, params=PARAMS)
    try:
        assert tracking.client(uri).get_run(first.run_id).data.params == FLAT
        assert [c[1] for c in calls if c[3]] == [threading.current_thread().name]
    finally:
        again.close("FINISHED")


def test_many_tags_and_params_are_split_at_mlflows_limit(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {f"p{i}": i for i in range(150)}
    calls = _watched(uri)
    tracker = Tracker(uri, "limits", params=params)
    tracker.log_metrics(1, {f"m{i}": float(i) for i in range(1200)})
    tracker.queue_tags({f"t{i}": i for i in range(130)})
    tracker.close("FINISHED")
    run = tracking.client(uri).get_run(tracker.run_id)
    assert len(run.data.params) == 150 and len(run.data.metrics) == 1200
    assert len([t for t in run.data.tags if t.startswith("t")]) == 130
    batches = [c for c in calls if c[0] == "log_batch"]
    assert all(c[2] <= 1000 and c[3] <= 100 and c[4] <= 100 for c in batches), batches
