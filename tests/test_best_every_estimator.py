"""`best` and `report` list every estimator of the spec: one without a completed trial is
named with what became of its trials ("no completed trial (1 pruned, 1 failed)"), never
dropped. A real sweep on a local Ray instance with SQLite and MLflow stores."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.driver import Driver
from rnnsweep.orchestrator.sweep_commands import no_complete_text

# tbptt(truncation 1) with SGD at lr 0.1 overflows float32 on influence-balancing near step
# 900 (a FAIL); at lr 0.01 it runs, and the pruner below stops it at its first report. uoro
# (Adam, 1e-4) completes. A finite space: the four trials try each of the three sets once.
SPEC = {
    "name": "t",
    "task": "influence-balancing",
    "hidden": 23,
    "dtype": "float32",
    "steps": 1200,
    "trials": 4,
    "estimators": ["uoro", "tbptt"],
    "fixed": {"log_every": 100, "truncation": 1, "lr_decay": 0.0, "clip": 0.0},
    "search": {
        "optimizer": {"type": "categorical", "choices": ["sgd"], "estimators": ["tbptt"]},
        "lr": {"type": "categorical", "choices": [0.1, 0.01], "estimators": ["tbptt"]},
    },
    "pruner": "none",
    "sampler": "random",
    "checkpoint_every": 600,
    "max_retries": 1,
    "workers": 2,
}


class PruneSlowLr(optuna.pruners.BasePruner):
    """Prunes the trials with ``lr == 0.01`` (only tbptt's have it) at their first report."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.params.get("lr") == 0.01


def _counts(state_dir: str) -> dict[str, dict[str, int]]:
    """Trials per estimator and state, read from the Optuna study itself."""
    _, record = sweep_store.read_record(state_dir, "t")
    counts: dict[str, dict[str, int]] = {}
    for t in sweep_store.load_study(record).get_trials():
        per = counts.setdefault(t.user_attrs["estimator"], {})
        per[t.state.name] = per.get(t.state.name, 0) + 1
    return counts


def _best_values(state_dir: str) -> dict[str, float]:
    _, record = sweep_store.read_record(state_dir, "t")
    best: dict[str, float] = {}
    for t in sweep_store.load_study(record).get_trials():
        if t.state.name == "COMPLETE":
            name = t.user_attrs["estimator"]
            best[name] = min(best.get(name, float("inf")), t.value)
    return best


def test_best_and_report_list_an_estimator_without_a_completed_trial(
    ray_session, tmp_path, capsys
):
    spec = spec_.load_spec_dict(SPEC)
    Driver(spec, str(tmp_path), workers=2, pruner=PruneSlowLr()).run()
    capsys.readouterr()
    counts = _counts(str(tmp_path))
    tbptt = counts["tbptt"]
    assert "COMPLETE" not in tbptt and tbptt.get("FAIL", 0) >= 1 and tbptt.get("PRUNED", 0) >= 1
    assert counts["uoro"].get("COMPLETE", 0) >= 1
    expected = f"no completed trial ({tbptt['PRUNED']} pruned, {tbptt['FAIL']} failed)"
    assert no_complete_text(tbptt) == expected

    # best: one row per estimator of the spec, in its order
    assert main(["best", "t", "--state-dir", str(tmp_path)]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    rows = {row["estimator"]: row for row in out["best"]}
    assert [row["estimator"] for row in out["best"]] == ["uoro", "tbptt"]
    assert rows["tbptt"]["value"] is None and rows["tbptt"]["note"] == expected
    assert rows["tbptt"]["trials"] == {k.lower(): v for k, v in tbptt.items()}
    assert "run" not in rows["tbptt"]
    assert rows["uoro"]["value"] == pytest.approx(_best_values(str(tmp_path))["uoro"], rel=1e-12)
    assert rows["uoro"]["run"]["estimator"] == "uoro"

    # -o writes the same rows; running back the estimator without one says why
    best_file = tmp_path / "best.yaml"
    assert main(["best", "t", "--state-dir", str(tmp_path), "-o", str(best_file)]) == 0
    assert yaml.safe_load(best_file.read_text())["best"] == out["best"]
    capsys.readouterr()
    code = main(["run", "--config", str(best_file), "--estimator", "tbptt", "--no-mlflow"])
    assert code == 2
    assert f"has no run for estimator 'tbptt': {expected}" in capsys.readouterr().err

    # report: the same rows in summary.json and on stderr
    assert main(["report", "t", "--state-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert f"best tbptt: {expected}" in err and "best uoro: " in err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert list(summary["estimators"]) == ["uoro", "tbptt"]
    assert summary["estimators"]["tbptt"]["note"] == expected
    assert summary["estimators"]["tbptt"]["best_value"] is None
    assert "note" not in summary["estimators"]["uoro"]


def test_no_complete_text_names_each_state_once_in_a_fixed_order():
    states = {"RUNNING": 2, "FAIL": 1, "PRUNED": 3, "INTERRUPTED": 1}
    assert no_complete_text(states) == (
        "no completed trial (3 pruned, 1 failed, 2 running, 1 interrupted)"
    )
    assert no_complete_text({}) == "no completed trial (none started)"
