"""``rnnsweep extend NAME --trials +N --steps S`` on a finished sweep (real Ray, SQLite,
MLflow): the record's spec changes, the new trials run the new budget, the completed ones
stay; a decrease or a bad value exits 2 with the record unchanged."""

from __future__ import annotations

import yaml

from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main

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


def test_extend_a_finished_sweep(ray_session, tmp_path, capsys):
    state = str(tmp_path / "state")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    assert main(["launch", str(path), "--state-dir", state]) == 0
    capsys.readouterr()
    for bad, words in (
        (["--trials", "1"], "--trials 1: the sweep has 2 trials; it cannot shrink"),
        (["--trials", "+x"], "--trials expects +N (more) or N (in all), got '+x'"),
        (["--steps", "100"], "--steps 100: below the sweep's 200; it cannot shrink"),
        ([], "give --trials +N and/or --steps S"),
    ):
        assert main(["extend", "x", "--state-dir", state, *bad]) == 2, bad
        assert words in capsys.readouterr().err
    assert sweep_store.read_record(state, "x")[1]["spec"]["trials"] == 2

    assert main(["extend", "x", "--state-dir", state, "--trials", "+1", "--steps", "300"]) == 0
    assert "sweep 'x': trials 2 -> 3, steps 200 -> 300" in capsys.readouterr().err
    _, record = sweep_store.read_record(state, "x")
    assert (record["spec"]["trials"], record["spec"]["steps"]) == (3, 300)
    trials = sweep_store.load_study(record).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert [t.user_attrs["steps_done"] for t in trials] == [200, 200, 300]

    assert main(["extend", "x", "--state-dir", state, "--trials", "4"]) == 0
    trials = sweep_store.load_study(record).get_trials()
    assert len(trials) == 4 and trials[3].state.name == "COMPLETE"
