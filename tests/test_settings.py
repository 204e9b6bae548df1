"""The settings table, walked key by key: every key's valid value is accepted and a bad one
exits 2 naming the key (``rnnsweep run --set`` / flags for learner, estimator, task and run
keys; ``rnnsweep launch --dry-run`` for sweep keys), pack-shared keys split packs and
per-member keys do not, defaults agree between ``run`` and sweeps, keys that do not apply and
unknown keys are named, and the README's settings section quotes the table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rnnsweep.algorithms.cell import CELLS
from rnnsweep.algorithms.estimator import estimator_names, get_estimator
from rnnsweep.algorithms.learner import DTYPES, LearnerSpec
from rnnsweep.algorithms.population import PER_MEMBER, pack_key
from rnnsweep.algorithms.settings import LR, ONLINE, SETTINGS, TABLE, hyper_defaults
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.spec import Probe, load_spec_dict
from rnnsweep.orchestrator.sweep_settings import SWEEP_TABLE
from rnnsweep.tasks.registry import task_names, task_setting_entries
from rnnsweep.tasks.settings import Setting

README = Path(__file__).resolve().parent.parent / "README.md"
TASK_ROWS = [(task, entry) for task in task_names() for entry in task_setting_entries(task)]
# Settings a key needs beside it to be valid (cross-key rules: window <= horizon <= every, ...).
CONTEXT: dict[str, dict[str, Any]] = {
    "probe_every": {"probe_window": 1, "probe_horizon": 1},
    "probe_window": {"probe_every": 10, "probe_horizon": 2},
    "n": {"positive": 0},
    "max_gap": {"min_gap": 0},
}


def valid_pair(entry: Setting) -> tuple[Any, Any]:
    """Two different valid values of ``entry``."""
    if entry.choices:
        return entry.choices[0], entry.choices[1]
    if entry.type is bool:
        return False, True
    if entry.type is int:
        low = int(entry.low or 0)
        return low, low + 1
    if entry.low is None:
        return 0.5, 0.25
    return (entry.low + 0.5, entry.low + 0.25) if entry.low_open else (entry.low, entry.low + 0.5)


def bad_value(entry: Setting) -> Any:
    """A value outside the entry's type, bounds or choices."""
    if entry.choices:
        return "nope"
    if entry.nullable or entry.low is None:
        return 5 if entry.type is str else "abc"
    return entry.low if entry.low_open else entry.low - 1


def estimator_for(entry: Setting) -> str:
    """An estimator (and so an optimizer) the key applies to."""
    if entry.estimators is not None:
        return entry.estimators[0]
    return "nobacktrack-kalman" if entry.group == "kalman" else "uoro"


def run_args(task: str, estimator: str, settings: dict[str, Any], tmp_path: Path) -> list[str]:
    args = ["run", "--task", task, "--estimator", estimator, "--steps", "2", "--no-mlflow"]
    args += ["--state-dir", str(tmp_path / "state")]
    if task not in ("influence-balancing",):
        args += ["--hidden", "4"]
    pairs = [f"{k}={'null' if v is None else v}" for k, v in settings.items()]
    return args + (["--set", *pairs] if pairs else [])


def corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("abcab cabba " * 20)
    return str(path)


LEARNER_ROWS = [e for e in TABLE if e.group != "run"]


@pytest.mark.parametrize("entry", LEARNER_ROWS, ids=[e.name for e in LEARNER_ROWS])
def test_learner_key_valid_accepted_bad_exits_2(entry, tmp_path, capsys):
    estimator = estimator_for(entry)
    for value in valid_pair(entry):
        settings = {**CONTEXT.get(entry.name, {}), entry.name: value}
        assert main(run_args("add", estimator, settings, tmp_path)) == 0, capsys.readouterr().err
    capsys.readouterr()
    bad = {**CONTEXT.get(entry.name, {}), entry.name: bad_value(entry)}
    assert main(run_args("add", estimator, bad, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{entry.name}" in err and "error" in err
    assert not (tmp_path / "state").exists()


RUN_ROWS = [e for e in TABLE if e.group == "run"]


@pytest.mark.parametrize("entry", RUN_ROWS, ids=[e.name for e in RUN_ROWS])
def test_run_key_flag_valid_accepted_bad_exits_2(entry, tmp_path, capsys):
    base = ["run", "--task", "add", "--estimator", "uoro", "--steps", "2", "--no-mlflow"]
    for value in valid_pair(entry):
        flags = {"hidden": "4", entry.name: str(value)}
        args = base + [x for k, v in flags.items() for x in (f"--{k}", v)]
        assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(base + [f"--{entry.name}", str(bad_value(entry))]) == 2
    assert f"'{entry.name}'" in capsys.readouterr().err


@pytest.mark.parametrize(("task", "entry"), TASK_ROWS, ids=[f"{t}.{e.name}" for t, e in TASK_ROWS])
def test_task_key_valid_accepted_bad_exits_2(task, entry, tmp_path, capsys):
    estimator = "rflo" if task == "text" else "uoro"  # text's `path` is also uoro's
    values = (corpus(tmp_path), None) if entry.name == "path" else valid_pair(entry)
    for value in values:
        settings = {**CONTEXT.get(entry.name, {}), entry.name: value}
        assert main(run_args(task, estimator, settings, tmp_path)) == 0, capsys.readouterr().err
    capsys.readouterr()
    bad = {**CONTEXT.get(entry.name, {}), entry.name: bad_value(entry)}
    assert main(run_args(task, estimator, bad, tmp_path)) == 2
    assert f"{task}: setting '{entry.name}'" in capsys.readouterr().err


def _sweep_file(tmp_path: Path, dotted: str, value: Any) -> str:
    spec: dict[str, Any] = {
        "name": "walk",
        "task": "add",
        "hidden": 4,
        "steps": 20,
        "trials": 2,
        "estimators": ["uoro"],
        "fixed": {"log_every": 10},
    }
    node = spec
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    path = tmp_path / "walk.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("entry", SWEEP_TABLE, ids=[e.name for e in SWEEP_TABLE])
def test_sweep_key_valid_accepted_bad_exits_2(entry, tmp_path, capsys):
    state = tmp_path / "state"
    if entry.nullable:
        values = (f"sqlite:///{tmp_path}/x.db", None)
    elif entry.name == "sampler":
        values = ("tpe", "random")  # cmaes and gp need optional packages
    elif entry.name == "objective.metric":
        values = ("final_loss",)  # final_bpc needs a character task
    else:
        values = valid_pair(entry)
    for value in values:
        path = _sweep_file(tmp_path, entry.name, value)
        code = main(["launch", path, "--dry-run", "--state-dir", str(state)])
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    path = _sweep_file(tmp_path, entry.name, bad_value(entry))
    assert main(["launch", path, "--dry-run", "--state-dir", str(state)]) == 2
    assert f"{entry.name}: " in capsys.readouterr().err
    assert not state.exists()


@pytest.mark.parametrize(
    ("task", "entry"),
    [("add", e) for e in TABLE] + TASK_ROWS,
    ids=[e.name for e in TABLE] + [f"{t}.{e.name}" for t, e in TASK_ROWS],
)
def test_pack_shared_keys_split_packs_per_member_keys_do_not(task, entry, tmp_path):
    estimator = "rflo" if task == "text" else estimator_for(entry)
    keys = []
    for value in (
        (corpus(tmp_path), None) if entry.name == "path" and task == "text" else (valid_pair(entry))
    ):
        fields: dict[str, Any] = {"hidden": 4}
        settings = dict(CONTEXT.get(entry.name, {}))
        if entry.group == "run":
            fields[entry.name] = value
        else:
            settings[entry.name] = value
        if task == "influence-balancing":
            fields.pop("hidden")
        spec = LearnerSpec(task=task, estimator=estimator, settings=settings, **fields)
        keys.append(pack_key(spec))
    assert (keys[0] == keys[1]) is bool(entry.per_member), entry.name
    assert (entry.name in PER_MEMBER) is bool(entry.per_member and entry.group != "run")


def test_estimator_defaults_are_the_tables():
    for name in estimator_names():
        assert dict(get_estimator(name).defaults) == hyper_defaults(name)
    for entry in TABLE:
        for estimator in entry.estimators or ():
            assert estimator.removesuffix("-kalman") in estimator_names(), estimator
    assert set(ONLINE) == set(estimator_names()) - {"bptt"}
    assert set(SETTINGS["dtype"].choices) == set(DTYPES)
    from rnnsweep.algorithms import gru, lstm, tanh_rnn  # noqa: F401 - fill the cell registry

    assert set(SETTINGS["cell"].choices) == set(CELLS)


def test_run_and_sweep_defaults_agree():
    """One default per key: a sweep's probe and run keys are the table's, as `run` uses."""
    assert Probe().samples == SETTINGS["probe_samples"].default == 16
    spec = load_spec_dict(
        {"name": "d", "task": "add", "steps": 10, "trials": 1, "estimators": ["uoro"]}
    )
    for key in ("cell", "hidden", "seed", "dtype"):
        assert getattr(spec, key) == SETTINGS[key].default, key
    assert (spec.probe.window, spec.probe.horizon) == (100, 100)
    differing = [e.name for e in TABLE + SWEEP_TABLE if e.why]
    assert differing == ["checkpoint_every"]  # the only one, and the table says why


@pytest.mark.parametrize(
    ("estimator", "pair", "message"),
    [
        ("uoro", "truncation=3", "setting 'truncation' applies only to tbptt, not to uoro"),
        ("uoro", "process_noise=1e-3", "setting 'process_noise' applies only with the Kalman"),
        (
            "nobacktrack-kalman",
            "lr=0.1",
            "setting 'lr' applies only with optimizer sgd or adam, not to nobacktrack-kalman",
        ),
        ("tbptt", "trunction=3", "unknown setting 'trunction' (did you mean 'truncation'?)"),
        ("uoro", "hidden=8", "use --hidden"),
    ],
)
def test_run_names_keys_that_do_not_apply_and_suggests_unknown(
    estimator, pair, message, tmp_path, capsys
):
    args = ["run", "--task", "add", "--estimator", estimator, "--no-mlflow", "--set", pair]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_spec_names_keys_that_do_not_apply_and_suggests_unknown():
    from rnnsweep.orchestrator.spec import SpecError

    base = {"name": "d", "task": "add", "steps": 10, "trials": 1, "estimators": ["uoro"]}
    with pytest.raises(SpecError, match=r"fixed.truncation: .*\(a hyperparameter of tbptt\)"):
        load_spec_dict({**base, "fixed": {"truncation": 4}})
    with pytest.raises(SpecError, match=r"did you mean 'truncation'"):
        load_spec_dict({**base, "fixed": {"trunction": 4}})


def test_settings_command_lists_every_key(capsys):
    assert main(["settings", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {(row["group"], row["name"]) for row in rows}
    expected = {(e.group, e.name) for e in TABLE + SWEEP_TABLE}
    expected |= {(f"task:{t}", e.name) for t, e in TASK_ROWS}
    assert names == expected
    lr = next(row for row in rows if row["name"] == "lr")
    assert (lr["type"], lr["bounds"], lr["pack"]) == ("float", ">= 0", "per-member")
    truncation = next(row for row in rows if row["name"] == "truncation")
    assert (truncation["default"], truncation["applies_to"]) == (16, ["tbptt"])
    assert main(["settings", "probe_samples"]) == 0
    out = capsys.readouterr().out
    assert "probe_samples" in out and "default 16" in out and "per-member" in out
    assert main(["settings", "--estimator", "uoro", "--task", "add"]) == 0
    out = capsys.readouterr().out
    assert "\neps " in out and "\ntruncation " not in out and "\nt1 " in out
    assert main(["settings", "lrr"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


def test_run_help_lists_the_tables_keys(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for entry in TABLE:
        if entry.group != "run":
            assert entry.name in out, entry.name
    assert "units (default 32)" in out


def _readme_section() -> str:
    text = README.read_text()
    start = text.index("### Settings")
    return text[start : text.index("\n## ", start)]


def test_readme_settings_section_quotes_the_table():
    section = _readme_section()
    assert "rnnsweep settings" in section
    keys: dict[str, list[Setting]] = {}
    for entry in [*TABLE, *SWEEP_TABLE, *(e for _, e in TASK_ROWS)]:
        keys.setdefault(entry.name, []).append(entry)
    quoted = re.findall(r"`([a-z_][a-z0-9_.]*)(?:=([^`]+))?`", section)
    assert len(quoted) >= 10
    for name, value in quoted:
        assert name in keys, f"README names {name!r}, which is not a setting"
        if not value:
            continue
        if name == "lr":
            assert float(value) in {v for rates in LR.values() for v in rates.values()}
            continue
        defaults = [float(e.default) if e.type in (int, float) else e.default for e in keys[name]]
        quoted_value = float(value) if keys[name][0].type in (int, float) else value
        assert quoted_value in defaults, f"README quotes {name}={value}; default {defaults}"
