"""``rnnsweep run``: summary JSON, MLflow run with stepped metrics, resume, bad input."""

from __future__ import annotations

import json
import os

import pytest

from rnnsweep.orchestrator.cli import main

BASE = ["run", "--task", "add", "--estimator", "uoro", "--hidden", "8", "--dtype", "float64"]


def _mlflow_client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_run_without_mlflow_writes_summary(tmp_path, capsys):
    out = tmp_path / "summary.json"
    code = main(
        BASE
        + [
            "--steps",
            "600",
            "--set",
            "log_every=100",
            "lr=0.01",
            "--no-mlflow",
            "--summary-json",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())
    for key in (
        "final_loss",
        "steps",
        "steps_per_sec",
        "diverged",
        "reason",
    ):
        assert key in summary
    assert not any(key.startswith(("bias", "staleness")) for key in summary)  # no probe
    assert summary["steps"] == 600 and summary["diverged"] is False
    assert 0.3 < summary["final_loss"] < 2.0
    assert "final loss" in capsys.readouterr().err


def test_run_records_mlflow_run_with_stepped_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ck = tmp_path / "ck.pt"
    out = tmp_path / "summary.json"
    code = main(
        BASE
        + [
            "--steps",
            "900",
            "--set",
            "log_every=100",
            "probe_every=200",
            "probe_window=50",
            "probe_samples=8",
            "probe_horizon=50",
            "--tracking-uri",
            uri,
            "--checkpoint",
            str(ck),
            "--summary-json",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())
    client = _mlflow_client(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["estimator"] == "uoro" and run.data.params["probe_every"] == "200"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(100, 1000, 100))
    for key in ("steps_per_sec", "grad_norm"):
        assert client.get_metric_history(run.info.run_id, key), key
    # Each probe window logged once, at its own step (its end), never repeated between windows.
    for key in ("bias", "bias_se", "variance", "cosine", "staleness", "horizon_error"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [50, 250, 450, 650, 850], key
    staleness = client.get_metric_history(run.info.run_id, "staleness")
    values = [m.value for m in sorted(staleness, key=lambda m: m.step)]
    assert summary["staleness_last"] == pytest.approx(values[-1])
    assert summary["staleness_max"] == pytest.approx(max(values))
    assert summary["staleness_mean"] == pytest.approx(sum(values) / 5)
    assert summary["probe_windows"] == 5
    from rnnsweep.algorithms.learner import load_checkpoint

    assert load_checkpoint(str(ck)).counters["t"] == 900


def test_resume_continues_same_mlflow_run_bit_for_bit(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ck = tmp_path / "ck.pt"
    from rnnsweep.algorithms.learner import Learner, LearnerSpec, save_checkpoint
    from rnnsweep.orchestrator.tracking import Tracker

    # Simulate a crash after step 400: checkpoint at 400, metrics logged up to 500.
    spec = LearnerSpec(
        "add", "uoro", "tanh", 8, seed=0, dtype="float64", settings={"log_every": 100}
    )
    learner = Learner(spec)
    tracker = Tracker(uri, "rnnsweep-runs", run_name="crashed")
    learner.run(
        1000,
        on_report=lambda r: tracker.log_metrics(r["step"], r),
        should_stop=lambda: learner.counters["t"] >= 400,
    )
    save_checkpoint(learner, str(ck), {"mlflow_run_id": tracker.run_id})
    learner.run(
        1000,
        on_report=lambda r: tracker.log_metrics(r["step"], r),
        should_stop=lambda: learner.counters["t"] >= 500,
    )
    tracker.close("FAILED")

    out = tmp_path / "resumed.json"
    assert (
        main(["run", "--resume", str(ck), "--tracking-uri", uri, "--summary-json", str(out)]) == 0
    )
    summary = json.loads(out.read_text())
    assert summary["mlflow_run_id"] == tracker.run_id and summary["steps"] == 1000
    steps = [m.step for m in _mlflow_client(uri).get_metric_history(tracker.run_id, "loss")]
    assert sorted(steps) == list(range(100, 1100, 100))  # none missing, none twice

    straight = Learner(spec).run(1000)
    assert summary["final_loss"] == straight["final_loss"]


def test_bad_set_key_exits_2_before_any_work(tmp_path, capsys):
    state = tmp_path / "state"
    code = main(BASE + ["--set", "lrr=0.1", "--state-dir", str(state)])
    assert code == 2
    assert "unknown setting 'lrr'" in capsys.readouterr().err
    assert not os.path.exists(state)


@pytest.mark.parametrize(
    "pair,message",
    [
        ("lr", "expects key=value"),
        ("truncation=3", "setting 'truncation' applies only to tbptt, not to uoro"),
    ],
)
def test_set_syntax_errors(pair, message, capsys):
    assert main(BASE + ["--no-mlflow", "--set", pair]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    assert main(["run", "--resume", str(bad), "--no-mlflow"]) == 2
    assert "corrupt or not a checkpoint" in capsys.readouterr().err


def test_set_values_are_yaml_scalars_with_exponents_as_numbers():
    from rnnsweep.orchestrator.run_command import parse_sets

    assert parse_sets(
        [
            "process_noise=1e-4",
            "lr=0.01",
            "truncation=8",
            "optimizer=sgd",
            "clip=2E1",
            "labels=soft",
        ]
    ) == {
        "process_noise": 1e-4,
        "lr": 0.01,
        "truncation": 8,
        "optimizer": "sgd",
        "clip": 20.0,
        "labels": "soft",
    }
