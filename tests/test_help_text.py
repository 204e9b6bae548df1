"""Every option and positional of every subcommand says what it is in ``--help``, and a
mistyped estimator gets the closest name among all a learner takes."""

from __future__ import annotations

import argparse

import pytest

from rnnsweep.algorithms.settings import KALMAN_RULES, RULES
from rnnsweep.orchestrator.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_argument_has_help(command):
    parser = _subcommands()[command]
    silent = [
        action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert silent == [], f"rnnsweep {command}: no help for {silent}"


def test_run_help_lists_every_estimator_and_kalman_rule(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one of " + ", ".join(RULES) in text
    assert "nobacktrack-kalman" in RULES and set(KALMAN_RULES) <= set(RULES)


@pytest.mark.parametrize(
    ("typed", "meant"), [("nobacktrak", "nobacktrack"), ("nobacktrack-kalmn", "nobacktrack-kalman")]
)
def test_a_mistyped_estimator_gets_the_closest_rule(typed, meant, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--task", "add", "--estimator", typed, "--steps", "10", "--no-mlflow"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"unknown estimator {typed!r} (did you mean {meant!r}?)" in err
    assert "known: " + ", ".join(RULES) in err
    assert list(tmp_path.iterdir()) == []
