"""``launch SPEC --set KEY=VALUE``: dotted overrides checked against the spec's schema, shown
by ``--dry-run``, refused with exit 2 naming the ``--set`` (nothing created), and applied to a
real sweep."""

from __future__ import annotations

import pytest
import yaml

from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.spec_overrides import OverrideError, apply_overrides, parse_value

SPEC = {
    "name": "ov",
    "task": "add",
    "hidden": 8,
    "dtype": "float64",
    "steps": 300,
    "trials": 3,
    "estimators": ["uoro", "tbptt"],
    "fixed": {"log_every": 100},
    "search": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "truncation": {"type": "int", "low": 2, "high": 8, "estimators": ["tbptt"]},
    },
    "pruner": "none",
    "sampler": "random",
    "workers": 1,
}


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "ov.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def test_dotted_keys_and_yaml_values():
    out = apply_overrides(
        SPEC,
        [
            "trials=40",
            "search.lr.high=1e-3",
            "probe.every=100",
            "estimators=[uoro, rtrl]",
            "search.truncation=null",
            "trials=41",  # a later one wins
        ],
    )
    assert out["trials"] == 41
    assert out["search"]["lr"] == {"type": "float", "low": 1e-4, "high": 0.001, "log": True}
    assert out["probe"] == {"every": 100}
    assert out["estimators"] == ["uoro", "rtrl"]
    assert "truncation" not in out["search"]
    assert SPEC["trials"] == 3 and SPEC["search"]["lr"]["high"] == 1e-2  # the input is kept
    assert parse_value("1e-2") == 0.01 and parse_value("true") is True
    assert parse_value("tpe") == "tpe"


@pytest.mark.parametrize(
    "pair, words",
    [
        ("trails=4", ["--set trails=4", "unknown key 'trails' at top level", "'trials'"]),
        ("search.lr.hihg=3", ["unknown key 'hihg' in search.lr", "did you mean 'high'"]),
        ("probe.evry=3", ["unknown key 'evry' in probe", "did you mean 'every'"]),
        ("trials.x=3", ["--set trials.x=3", "trials is 3", "not a mapping"]),
        ("noequals", ["expects KEY=VALUE", "'noequals'"]),
    ],
)
def test_unknown_keys_named(pair, words):
    with pytest.raises(OverrideError) as caught:
        apply_overrides(SPEC, [pair])
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    "pair, words",
    [
        ("trails=4", ["--set trails=4", "did you mean 'trials'"]),
        ("trials=0", ["--set trials=0", "trials: must be an integer >= 1, got 0"]),
        ("search.lr.high=abc", ["--set search.lr.high=abc", "search.lr.high: must be a finite"]),
        ("search.lr.high=1e-5", ["--set search.lr.high=1e-5", "search.lr.low: must be < high"]),
        ("fixed.lrr=3", ["--set fixed.lrr=3", "did you mean 'lr'"]),
        ("sampler=tpee", ["--set sampler=tpee", "tpe"]),
    ],
)
def test_bad_override_exits_2_and_creates_nothing(spec_file, tmp_path, capsys, pair, words):
    state = tmp_path / "state"
    assert main(["launch", str(spec_file), "--set", pair, "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    for word in words:
        assert word in err, err
    assert not state.exists()


def test_dry_run_shows_the_result(spec_file, tmp_path, capsys):
    state = tmp_path / "state"
    argv = ["launch", str(spec_file), "--dry-run", "--state-dir", str(state)]
    assert main(argv + ["--set", "trials=7", "--set", "search.lr.high=2e-3"]) == 0
    out = capsys.readouterr().out
    assert "overrides (--set): trials=7, search.lr.high=2e-3" in out
    assert "trials: 7" in out
    assert "high: 0.002" in out
    assert not state.exists()


def test_launch_applies_overrides(ray_session, spec_file, tmp_path):
    state = str(tmp_path / "state")
    argv = ["launch", str(spec_file), "--state-dir", state, "--set", "trials=2"]
    assert main(argv + ["--set", "steps=200", "--set", "search.lr.high=1e-3"]) == 0
    _, record = sweep_store.read_record(state, "ov")
    assert record["spec"]["trials"] == 2 and record["spec"]["steps"] == 200
    assert record["spec"]["search"]["lr"]["high"] == 1e-3
    trials = sweep_store.load_study(record).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(t.user_attrs["settings"]["lr"] <= 1e-3 for t in trials)
    assert all(t.user_attrs["steps_done"] == 200 for t in trials)
