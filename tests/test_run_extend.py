"""``run --resume CK --steps N`` extends a finished run (its final loss then averages the new
last 10%, as a run planned that long from the start); too short an extension, and a ``--set``
of a key not safe to change on resume, exit 2 with a message; a safe one (``lr``) applies from
the resume step on."""

from __future__ import annotations

import json
import shutil

from mlflow.tracking import MlflowClient

from rnnsweep.algorithms import checkpoint_file
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
    # a key not safe to change on resume: refused in one line naming it and the safe ones
    before = ck.read_bytes()
    assert main(["run", "--resume", str(ck), "--set", "hidden=4", "--checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err
    assert "hidden cannot change mid-run; safe to change on resume: log_every, lr" in err
    assert err.count("\n") == 1 and ck.read_bytes() == before

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


def test_resume_with_a_new_lr_uses_it_from_the_resume_step(tmp_path, capsys):
    """``--set lr=0`` on resume: the parameters stay exactly those of step 1000 while the
    stream goes on to 1500; the checkpoint and the MLflow run record the new value."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ck, at_1000 = tmp_path / "ck.pt", tmp_path / "at1000.pt"
    track = ["--tracking-uri", uri, "--checkpoint", str(ck)]
    assert main(RUN + ["--steps", "1000"] + track) == 0
    shutil.copy(ck, at_1000)
    capsys.readouterr()
    assert main(["run", "--resume", str(ck), "--steps", "1500", "--set", "lr=0"] + track) == 0
    assert "from step 1000: lr default -> 0.0" in capsys.readouterr().err
    old, new = checkpoint_file.read(str(at_1000)), checkpoint_file.read(str(ck))
    assert new.snapshot["counters"]["t"] == 1500
    assert new.snapshot["spec"]["settings"] == {"log_every": 100, "lr": 0.0}
    for before, after in zip(old.snapshot["params"], new.snapshot["params"], strict=True):
        assert after.equal(before)  # lr 0: no update after step 1000
    run = MlflowClient(tracking_uri=uri).get_run(new.extra["mlflow_run_id"])
    assert run.data.tags["rnnsweep.resume_set.1000"] == "lr default -> 0.0"
    # without it, the same resume moves them (so the check above can fail)
    assert main(["run", "--resume", str(at_1000), "--steps", "1500", "--no-mlflow",
                 "--checkpoint", str(ck)]) == 0
    moved = checkpoint_file.read(str(ck)).snapshot["params"]
    assert not moved[0].equal(old.snapshot["params"][0])
