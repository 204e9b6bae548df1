"""``rnnsweep extend NAME --trials +N --steps S`` on a finished sweep (real Ray, Optuna on
SQLite and PostgreSQL, MLflow): the record's spec changes, the new trials run the new budget,
the completed ones continue from their final checkpoints as continuation trials in their own
MLflow runs (every metric step once, the final loss that of a run planned that long); a
decrease or a bad value exits 2 with the record unchanged."""

from __future__ import annotations

import yaml
from mlflow.tracking import MlflowClient

from rnnsweep.algorithms.learner import Learner
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.stores import sweep_summary

SPEC = {
    "name": "x",
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
    "workers": 1,
}


def test_extend_a_finished_sweep(ray_session, tmp_path, capsys, storage_url):
    state = str(tmp_path / "state")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "storage": {"optuna": storage_url}}))
    assert main(["launch", str(path), "--state-dir", state]) == 0
    capsys.readouterr()
    for bad, words in (
        (["--trials", "1"], "--trials 1: the sweep has 2 trials; it cannot shrink"),
        (["--trials", "+x"], "--trials expects +N (more) or N (in all), got '+x'"),
        (["--steps", "100"], "--steps 100: below the sweep's 200; it cannot shrink"),
        (["--steps", "210"], "--steps 210: trial 0 ended at step 200, inside the new budget's"),
        ([], "give --trials +N and/or --steps S"),
    ):
        assert main(["extend", "x", "--state-dir", state, *bad]) == 2, bad
        assert words in capsys.readouterr().err
    _, record = sweep_store.read_record(state, "x")
    assert record["spec"]["trials"] == 2
    assert len(sweep_store.load_study(record).get_trials()) == 2  # nothing created

    assert main(["extend", "x", "--state-dir", state, "--trials", "+1", "--steps", "300"]) == 0
    err = capsys.readouterr().err
    assert "sweep 'x': trials 2 -> 3, steps 200 -> 300" in err
    assert "to 300 steps, as new trials: 0 as 2, 1 as 3" in err
    _, record = sweep_store.read_record(state, "x")
    assert (record["spec"]["trials"], record["spec"]["steps"]) == (3, 300)
    trials = sweep_store.load_study(record).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    assert [t.user_attrs["steps_done"] for t in trials] == [200, 200, 300, 300, 300]
    assert [t.user_attrs.get("continues") for t in trials] == [None, None, 0, 1, None]
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    spec = spec_.load_spec_dict(record["spec"])
    for origin, cont in ((trials[0], trials[2]), (trials[1], trials[3])):
        assert cont.params == origin.params and cont.user_attrs["seed"] == origin.number
        run_id = cont.user_attrs["mlflow_run_id"]
        assert run_id == origin.user_attrs["mlflow_run_id"]  # the origin's run, continued
        loss = [m.step for m in client.get_metric_history(run_id, "loss")]
        assert sorted(loss) == [100, 200, 300]  # one curve, every step once
        final = [m.step for m in client.get_metric_history(run_id, "final_loss")]
        assert sorted(final) == [200, 300]
        tags = client.get_run(run_id).data.tags
        assert tags["rnnsweep.continues_trial"] == str(origin.number)
        assert tags["rnnsweep.steps_extended"] == "200 -> 300"
        # its value: the final loss of a run planned for 300 steps from the start
        settings = cont.user_attrs["settings"]
        seed = cont.user_attrs["seed"]
        learner = Learner(spec_.learner_spec(spec, cont.user_attrs["estimator"], settings, seed))
        assert cont.value == learner.run(300)["final_loss"]
    capsys.readouterr()
    assert main(["status", "x", "--state-dir", state]) == 0
    assert "sweep x: 3/3 trials (+2 continued), task add, 300 steps each" in capsys.readouterr().out
    summary = sweep_summary(sweep_store.load_study(record), "minimize")
    assert {b["trial"] for b in summary["best"].values()} <= {2, 3, 4}  # never an old budget's
    assert summary["states"] == {"COMPLETE": 3}  # a continued trial counts once, as status does
    # report: one curve per continued run (its origin left out), each curve whole
    from rnnsweep.orchestrator.report import sweep_trials

    reported = sweep_trials(record, client)
    assert [t["number"] for t in reported] == [2, 3, 4]
    assert [p[0] for p in reported[0]["histories"]["loss"]] == [100, 200, 300]

    assert main(["extend", "x", "--state-dir", state, "--trials", "4"]) == 0
    trials = sweep_store.load_study(record).get_trials()
    assert len(trials) == 6 and trials[5].state.name == "COMPLETE"
    assert "continues" not in trials[5].user_attrs
