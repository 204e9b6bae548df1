"""``rnnsweep delete NAME`` on real stores (Optuna on SQLite and PostgreSQL) after real
sweeps: the study, the MLflow runs (and the experiment when nothing else is in it), the
checkpoints, journal, lease rows and record go; another sweep in the same stores is untouched;
the typed name confirms; a driver holding the sweep refuses it (exit 3)."""

from __future__ import annotations

import io
import os

import optuna
import sqlalchemy as sa
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.sweep_lease import TABLE, SweepLease

SPEC = {
    "task": "add",
    "hidden": 8,
    "dtype": "float64",
    "steps": 200,
    "trials": 2,
    "estimators": ["uoro", "tbptt"],
    "fixed": {"log_every": 100},
    "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "pruner": "none",
    "sampler": "random",
    "checkpoint_every": 100,
    "workers": 1,
}


def _launch(tmp_path, state: str, name: str, storage: str | None = None) -> dict:
    path = tmp_path / f"{name}.yaml"
    spec = {"name": name, **SPEC, **({"storage": {"optuna": storage}} if storage else {})}
    path.write_text(yaml.safe_dump(spec))
    assert main(["launch", str(path), "--state-dir", state]) == 0
    return sweep_store.read_record(state, name)[1]


def _active_runs(client: MlflowClient, experiment: str) -> list:
    return client.search_runs([experiment], "", run_view_type=ViewType.ACTIVE_ONLY)


def test_delete_removes_one_sweep_and_keeps_the_other(
    ray_session, tmp_path, capsys, monkeypatch, storage_url
):
    """Both sweeps' studies in one Optuna database, SQLite or PostgreSQL."""
    state = str(tmp_path / "state")
    a = _launch(tmp_path, state, "a", storage_url)
    b = _launch(tmp_path, state, "b", storage_url)
    assert sweep_store.study_url(a).split(":")[0] == storage_url.split(":")[0]
    client = MlflowClient(tracking_uri=a["tracking_uri"])
    assert len(_active_runs(client, a["mlflow_experiment_id"])) == 3  # parent + 2 children
    os.makedirs(sweep_store.checkpoint_dir(state, "a"), exist_ok=True)
    with open(os.path.join(sweep_store.checkpoint_dir(state, "a"), "trial-9.pt"), "wb") as f:
        f.write(b"x")  # a checkpoint left behind (a stopped sweep's)
    capsys.readouterr()

    # a wrong name typed: nothing deleted, exit 1
    monkeypatch.setattr("sys.stdin", io.StringIO("b\n"))
    assert main(["delete", "a", "--state-dir", state]) == 1
    assert "not deleted (expected 'a')" in capsys.readouterr().err
    assert os.path.exists(sweep_store.record_path(state, "a"))

    # a driver holding the sweep: exit 3, nothing deleted, not even asked
    lease = SweepLease(sweep_store.study_url(a), "a", 60.0)
    lease.acquire()
    try:
        assert main(["delete", "a", "--state-dir", state, "--yes"]) == 3
        assert f"sweep 'a' is being driven by pid {os.getpid()}" in capsys.readouterr().err
    finally:
        lease.release()
    assert len(_active_runs(client, a["mlflow_experiment_id"])) == 3

    # the name typed: deleted
    monkeypatch.setattr("sys.stdin", io.StringIO("a\n"))
    assert main(["delete", "a", "--state-dir", state]) == 0
    assert "deleted sweep 'a': 3 MLflow run(s), 1 Optuna study" in capsys.readouterr().out
    storage = sweep_store.study_url(a)
    assert optuna.get_all_study_names(storage) == ["b"]
    assert _active_runs(client, a["mlflow_experiment_id"]) == []
    assert client.get_experiment(a["mlflow_experiment_id"]).lifecycle_stage == "deleted"
    assert not os.path.exists(sweep_store.checkpoint_dir(state, "a"))
    assert not os.path.exists(sweep_store.record_path(state, "a"))
    engine = sa.create_engine(storage)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(f"SELECT sweep FROM {TABLE}")).scalars().all()
    engine.dispose()
    assert rows == ["b"]
    assert main(["status", "a", "--state-dir", state]) == 2  # gone
    # the other sweep is whole
    assert main(["status", "b", "--state-dir", state]) == 0
    assert len(_active_runs(client, b["mlflow_experiment_id"])) == 3

    # an experiment holding another run is kept, with that run
    other = client.create_run(b["mlflow_experiment_id"]).info.run_id
    assert main(["delete", "b", "--state-dir", state, "--yes"]) == 0
    assert [r.info.run_id for r in _active_runs(client, b["mlflow_experiment_id"])] == [other]
    assert client.get_experiment(b["mlflow_experiment_id"]).lifecycle_stage == "active"
    assert optuna.get_all_study_names(storage) == []

    # the same name can be launched again
    again = _launch(tmp_path, state, "a", storage_url)
    assert len(_active_runs(client, again["mlflow_experiment_id"])) == 3
