"""Per-task learner defaults (``TASK_DEFAULTS`` in the settings table): a task's documented
settings replace the table's defaults for that task, per estimator; explicit settings win;
`rnnsweep settings` shows them; the learning benchmark's anbn runs leave them to the table."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from rnnsweep.algorithms import settings as table
from rnnsweep.algorithms.learner_spec import LearnerSpec, split_settings
from rnnsweep.benchmarks import learning
from rnnsweep.orchestrator.cli import main


@pytest.fixture
def anbn_defaults(monkeypatch):
    """A known entry for anbn: uoro's rate and clip, and an every-estimator decay."""
    entry = {"*": {"lr_decay": 0.05}, "uoro": {"lr": 3e-4, "clip": 2.0}}
    monkeypatch.setitem(table.TASK_DEFAULTS, "anbn", entry)
    return entry


def learner_of(task: str, estimator: str, **settings) -> dict:
    return split_settings(LearnerSpec(task, estimator, "gru", 8, settings=settings))[0]


def test_task_defaults_replace_the_tables_per_estimator(anbn_defaults):
    uoro = learner_of("anbn", "uoro")
    assert (uoro["lr"], uoro["clip"], uoro["lr_decay"]) == (3e-4, 2.0, 0.05)
    # "*" reaches every estimator; the estimator's own keys only it
    tbptt = learner_of("anbn", "tbptt")
    assert (tbptt["lr"], tbptt["clip"], tbptt["lr_decay"]) == (1e-3, 0.0, 0.05)
    # another task keeps the table's defaults
    add = learner_of("add", "uoro")
    assert (add["lr"], add["clip"], add["lr_decay"]) == (1e-4, 0.0, 0.01)


def test_task_defaults_route_estimator_keys_to_the_estimator(monkeypatch):
    """An estimator's hyperparameter in a task's entry reaches that estimator's hyperparameters
    (not the learner's), where it applies; an explicit setting still wins."""
    entry = {"*": {"influence_decay": 0.9}, "nobacktrack": {"influence_decay": 0.99}}
    monkeypatch.setitem(table.TASK_DEFAULTS, "anbn", entry)

    def hyper_of(estimator: str, **settings) -> dict:
        spec = LearnerSpec("anbn", estimator, "gru", 8, settings=settings)
        learner, hyper, *_ = split_settings(spec)
        assert "influence_decay" not in learner
        return hyper

    assert hyper_of("uoro") == {"influence_decay": 0.9}
    assert hyper_of("nobacktrack") == {"influence_decay": 0.99}
    assert hyper_of("nobacktrack", influence_decay=1.0) == {"influence_decay": 1.0}
    assert hyper_of("tbptt") == {}  # it does not apply there, and is not forced on it


def test_explicit_settings_override_task_defaults(anbn_defaults):
    uoro = learner_of("anbn", "uoro", lr=1e-3, lr_decay=0.0)
    assert (uoro["lr"], uoro["clip"], uoro["lr_decay"]) == (1e-3, 2.0, 0.0)


def test_influence_balancing_keeps_its_documented_settings():
    rtrl = learner_of("influence-balancing", "rtrl")
    assert (rtrl["optimizer"], rtrl["lr"], rtrl["lr_decay"]) == ("adam", 1e-2, 0.3)
    # a *-kalman rule keeps its filter: a task's optimizer default does not contradict it
    assert learner_of("influence-balancing", "uoro-kalman")["optimizer"] == "kalman"


def test_settings_command_shows_task_defaults(anbn_defaults, capsys):
    assert main(["settings", "lr", "clip"]) == 0
    out = capsys.readouterr().out
    assert "default by task: task influence-balancing: every estimator 0.01; task anbn: uoro " \
        "0.0003" in out
    assert "default by task: task anbn: uoro 2" in out
    assert main(["settings", "clip", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["by_task"] == "task anbn: uoro 2"


def test_learning_anbn_jobs_are_the_papers_setting_with_table_defaults():
    args = argparse.Namespace(quick=False, seeds=None, only="anbn", estimators=None)
    jobs = learning.jobs(args)
    estimators = ("tbptt", "uoro", "nobacktrack")
    assert sorted({(task, est, seed, steps) for task, est, _, seed, steps in jobs}) == sorted(
        ("anbn", est, seed, 360_000) for est in estimators for seed in (0, 1, 2)
    )
    # only the estimator's own setting (tbptt's truncation): learner defaults come from the table
    assert {est: settings for _, est, settings, _, _ in jobs} == {
        "tbptt": {"truncation": 64}, "uoro": {}, "nobacktrack": {}
    }
    assert learning.NETWORK["anbn"] == ("gru", 64)
    assert learning.ANBN_TARGET["tbptt"] == pytest.approx(1.15 * learning.ANBN_OPTIMUM, abs=1e-3)
    quick = learning.jobs(argparse.Namespace(quick=True, seeds="4", only="anbn", estimators="uoro"))
    assert [(est, seed, steps) for _, est, _, seed, steps in quick] == [("uoro", 4, 36_000)]
    # --compile adds only compile: true, and only where the estimator takes it (not tbptt)
    compiled = learning.jobs(argparse.Namespace(**{**vars(args), "compile": True}))
    assert {est: settings for _, est, settings, _, _ in compiled} == {
        "tbptt": {"truncation": 64}, "uoro": {"compile": True}, "nobacktrack": {"compile": True}
    }


def test_learning_anbn_run_reports_bits_per_character():
    r = learning.one_run("anbn", "uoro", {}, 0, 40)
    assert (r["cell"], r["hidden"]) == ("gru", 64)
    # 3 symbols: an untrained model is near log2(3) bits, far above its ln(3) nats
    assert 1.0 < r["first_loss"] < 2.0
    assert math.isfinite(r["final_loss"]) and r["final_loss"] > 0
    tbptt = {**r, "diverged": False, "estimator": "tbptt"}
    met, words = learning.verdict({**tbptt, "final_loss": 0.16})
    assert met and words == "met (<= 0.164)"
    met, words = learning.verdict({**tbptt, "final_loss": 0.17})
    assert not met and words == "MISSED (<= 0.164)"
