"""``rnnsweep run`` and a sweep, given no tracking URI, log to the same MLflow store: the one
default of ``tracking.default_tracking_uri`` (real CLI, real local Ray, real SQLite stores)."""

from __future__ import annotations

import os

import yaml

from rnnsweep.orchestrator import sweep_store, tracking
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.run_command import EXPERIMENT

SWEEP = {
    "name": "same-store",
    "task": "add",
    "hidden": 4,
    "dtype": "float64",
    "steps": 200,
    "trials": 1,
    "estimators": ["uoro"],
    "fixed": {"log_every": 100},
    "search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    "pruner": "none",
    "sampler": "random",
    "workers": 1,
}


def test_default_is_the_environment_or_sqlite_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    expected = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    assert tracking.default_tracking_uri("state") == expected
    assert sweep_store.default_tracking_uri is tracking.default_tracking_uri
    assert not (tmp_path / "state").exists()  # resolving creates nothing
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.default_tracking_uri("state") == "http://tracking.example:5000"


def test_run_and_sweep_log_to_the_same_default_store(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --state-dir: both must resolve it the same way
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = ["run", "--task", "add", "--estimator", "uoro", "--hidden", "4", "--steps", "200"]
    assert main([*run, "--set", "log_every=100", "--state-dir", "state"]) == 0
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    assert main(["launch", str(spec), "--state-dir", "state"]) == 0

    _, record = sweep_store.read_record("state", SWEEP["name"])
    uri = record["tracking_uri"]
    assert uri == f"sqlite:///{os.path.join(tmp_path, 'state', 'mlflow.db')}"
    store = tracking.client(uri)
    names = {experiment.name for experiment in store.search_experiments()}
    assert {EXPERIMENT, SWEEP["name"]} <= names
    runs = store.search_runs([store.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert [r.data.tags["estimator"] for r in runs] == ["uoro"]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
