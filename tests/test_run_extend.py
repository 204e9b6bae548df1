"""``run --resume CK --steps N`` extends a finished run (its final loss then averages the new
last 10%, as a run planned that long from the start); too short an extension, and ``--set`` on
resume, exit 2 with a message."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.orchestrator.cli import main

RUN = ["run", "--task", "add", "--estimator", "uoro", "--hidden", "8", "--dtype", "float64",
       "--seed", "0", "--set", "log_every=100"]


def test_resume_with_more_steps_extends_a_finished_run(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ck, out = tmp_path / "ck.pt", tmp_path / "s.json"
    track = ["--tracking-uri", uri, "--summary-json", str(out)]
    assert main(RUN + ["--steps", "1000", "--checkpoint", str(ck)] + track) == 0
    first = json.loads(out.read_text())
    capsys.readouterr()

    # the new tail (last 10%) would start before step 1000: refused, the least length named
    assert main(["run", "--resume", str(ck), "--steps", "1050", "--no-mlflow"]) == 2
    assert "extend it to at least 1111 steps" in capsys.readouterr().err
    # settings cannot change on resume: refused, never ignored
    assert main(["run", "--resume", str(ck), "--set", "lr=0.1", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "lr=0.1 cannot change them" in err and err.count("\n") == 1

    resume = ["run", "--resume", str(ck), "--steps", "2000", "--checkpoint", str(ck)]
    assert main(resume + track) == 0
    extended = json.loads(out.read_text())
    assert extended["mlflow_run_id"] == first["mlflow_run_id"]
    assert extended["steps"] == extended["planned_steps"] == 2000
    spec = LearnerSpec(
        "add", "uoro", "tanh", 8, seed=0, dtype="float64", settings={"log_every": 100}
    )
    assert extended["final_loss"] == Learner(spec).run(2000)["final_loss"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.tags["rnnsweep.steps_extended"] == "1000 -> 2000"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(100, 2100, 100))  # none missing, none twice
