"""Faults of a sweep's creation and resume (issue 11): a driver killed while creating a sweep,
bad input refused before anything exists, resumes that must not replay suggestions, a finite
space exhausted, and a checkpoint deleted or corrupted before a resume. Real Ray, SQLite,
MLflow and killed processes; after each fault the record is checked with ``record_checks``."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile

import pytest
import record_checks
import yaml
from log_chunks import ONE_LOG_CHUNK
from ray_processes import kill, ray_processes

from rnnsweep.algorithms.learner import Learner
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.driver import Driver
from rnnsweep.orchestrator.stores import CREATION_STAGES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, LOG_EVERY = 600, 100
LR = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def _spec_dict(name="c", trials=1, **overrides):
    spec = {
        "name": name,
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": STEPS,
        "trials": trials,
        "estimators": ["uoro"],
        "fixed": {"log_every": LOG_EVERY},
        "search": LR,
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 200,
        "max_retries": 1,
        "workers": 1,
    }
    spec.update(overrides)
    return spec


def _study(state_dir, name="c"):
    return sweep_store.load_study(record_checks.record_of(str(state_dir), name))


class _FirstTrials:
    """Some of a study's trials, seen as a study by ``record_checks``."""

    def __init__(self, trials) -> None:
        self.trials = trials

    def get_trials(self):
        return self.trials


def _has_study(record) -> bool:
    import optuna

    try:
        optuna.load_study(study_name=record["name"], storage=sweep_store.study_url(record))
    except KeyError:
        return False
    return True


def _parent_runs(record):
    """The sweep's parent runs: runs of its experiment without a parent."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    experiment = client.get_experiment_by_name(record["name"])
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], "", max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- 1. a driver killed while creating the sweep ---------------------------------------------

KILLED_DRIVER = """
import os, signal, sys
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.driver import Driver

spec_path, state_dir, stage = sys.argv[1:]

def hook(event):
    if event.kind == "creating" and event.stage == stage:
        os.kill(os.getpid(), signal.SIGKILL)

Driver(spec_.load_spec(spec_path), state_dir, workers=1, on_event=hook).run()
"""


def _killed_while_creating(spec_path, state_dir, stage, tmp_path) -> None:
    """A real driver process, killed with SIGKILL right after creation stage ``stage``."""
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp_root}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(spec_path), str(state_dir), stage],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        kill(ray_processes(temp_root))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


@pytest.mark.parametrize("stage", CREATION_STAGES)
def test_a_sweep_half_created_by_a_killed_driver_is_finished(ray_session, tmp_path, capsys, stage):
    spec_path, state_dir = tmp_path / "spec.yaml", tmp_path / "state"
    spec_path.write_text(yaml.safe_dump(_spec_dict()))
    _killed_while_creating(spec_path, state_dir, stage, tmp_path)
    path = sweep_store.record_path(str(state_dir), "c")
    _, left = sweep_store.read_record(str(state_dir), "c", creating=True)
    assert left["state"] == "creating" and "mlflow_parent_run_id" not in left
    made = CREATION_STAGES.index(stage)  # what the killed driver had made, beyond its record
    assert _has_study(left) == (made >= 1)
    assert len(_parent_runs(left)) == (made >= 3)
    capsys.readouterr()

    # the other commands say what happened and how to fix it, and change nothing
    assert main(["status", "c", "--state-dir", str(state_dir)]) == 2
    line = _one_error_line(capsys)
    assert "sweep 'c' was left half-created" in line and "`rnnsweep resume c" in line
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(_spec_dict(trials=2)))
    assert main(["launch", str(other), "--state-dir", str(state_dir)]) == 2
    assert "half-created" in _one_error_line(capsys) and os.path.exists(path)

    # resume, or a launch of the same spec, finishes the creation and runs the sweep
    finish = (
        ["resume", "c"] if CREATION_STAGES.index(stage) % 2 == 0 else ["launch", str(spec_path)]
    )
    assert main([*finish, "--state-dir", str(state_dir)]) == 0
    _, record = sweep_store.read_record(str(state_dir), "c")
    assert record["state"] == "created"
    (parent,) = _parent_runs(record)  # one parent run, whichever stage the kill came after
    assert parent.info.run_id == record["mlflow_parent_run_id"]
    assert parent.info.experiment_id == record["mlflow_experiment_id"]
    assert parent.data.tags["rnnsweep.creation"] == record["creation_id"]
    assert parent.info.status == "FINISHED"
    study = _study(state_dir)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]
    steps = record_checks.metric_rows(record)
    assert steps == {0: list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))}
    assert len(record_checks.distinct_parameter_sets(study)) == 1
    capsys.readouterr()
    assert main(["launch", str(spec_path), "--state-dir", str(state_dir)]) == 2
    assert "already exists" in _one_error_line(capsys)
    with pytest.raises(ValueError, match="sweep 'c' already exists in .*`rnnsweep resume c`"):
        Driver(spec_.load_spec(str(spec_path)), str(state_dir), workers=1).run()
    assert sweep_store.read_record(str(state_dir), "c")[1] == record  # untouched


# -- 2. bad input: exit 2, one line, nothing created -----------------------------------------


def test_bad_input_is_refused_before_anything_is_created(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    state = tmp_path / "state"
    mlruns = tmp_path / "mlruns"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec_dict(storage={"mlflow": f"file://{mlruns}"})))
    assert main(["launch", str(spec_path), "--state-dir", str(state)]) == 2
    line = _one_error_line(capsys)
    assert f"MLflow tracking URI 'file://{mlruns}' is a file store, which MLflow 3 refuses" in line
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(mlruns))  # a bare path: a file store too
    spec_path.write_text(yaml.safe_dump(_spec_dict()))
    assert main(["launch", str(spec_path), "--state-dir", str(state)]) == 2
    assert "is a file store" in _one_error_line(capsys)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    long_name = "n" * 5000
    assert main(["launch", str(spec_path), "--state-dir", str(state), "--name", long_name]) == 2
    line = _one_error_line(capsys)
    assert "name: must be at most 100 characters, got 5000" in line and len(line) < 200
    named = tmp_path / "named.yaml"
    named.write_text(yaml.safe_dump(_spec_dict(name=long_name)))
    assert main(["launch", str(named), "--state-dir", str(state)]) == 2
    assert len(_one_error_line(capsys)) < 200

    for workers in ("1000000000", "1025"):
        launch = ["launch", str(spec_path), "--state-dir", str(state), "--workers", workers]
        assert main(launch) == 2
        assert _one_error_line(capsys).endswith(
            f"--workers must be an integer in [1, 1024], got {workers}"
        )
    bad_names = ((long_name, "must be at most 100 characters"), ("..", "must not be '..'"))
    for name, problem in bad_names:
        for command in (["resume", name], ["status", name], ["best", name], ["report", name]):
            assert main([*command, "--state-dir", str(state)]) == 2
            assert f"sweep name {problem}" in _one_error_line(capsys)
        assert main(["ui", name, "--state-dir", str(state)]) == 2
        assert f"sweep name {problem}" in _one_error_line(capsys)
    assert not state.exists() and not mlruns.exists()  # no record, study, experiment or file


def test_a_store_failing_before_the_study_leaves_no_record(ray_session, tmp_path, monkeypatch):
    """The Driver API checks the MLflow store too, and removes its record if the creation
    fails before the study exists: a later launch is not blocked by a half-created sweep."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    spec = spec_.load_spec_dict(_spec_dict(storage={"mlflow": f"file://{tmp_path}/mlruns"}))
    with pytest.raises(ValueError, match="is a file store"):
        Driver(spec, str(tmp_path), workers=1).run()
    assert not os.path.exists(sweep_store.record_path(str(tmp_path), "c"))
    assert not os.path.exists(tmp_path / "optuna.db") and not os.path.exists(tmp_path / "mlruns")


# -- 3. resumes never replay suggestions; a finite space is exhausted, not repeated -----------


def _interrupted_at_asked(numbers):
    """A driver hook: Ctrl-C as trial ``number`` (one of ``numbers``) is about to start, once
    each."""
    left = set(numbers)

    def hook(event) -> None:
        if event.kind == "asked" and event.number in left:
            left.discard(event.number)
            raise KeyboardInterrupt

    return hook


def test_three_resumes_never_repeat_a_parameter_set(ray_session, tmp_path):
    spec = spec_.load_spec_dict(_spec_dict(trials=8, steps=200, checkpoint_every=100))
    hook = _interrupted_at_asked({2, 4, 6})
    with pytest.raises(KeyboardInterrupt):
        Driver(spec, str(tmp_path), workers=1, on_event=hook).run()
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            Driver(spec, str(tmp_path), workers=1, on_event=hook).run(resume=True)
    summary = Driver(spec, str(tmp_path), workers=1, on_event=hook).run(resume=True)
    assert summary["states"] == {"COMPLETE": 8}
    study = _study(tmp_path)
    sets = record_checks.distinct_parameter_sets(study)  # a replayed seed repeats trial 0's lr
    assert len(sets) == 8
    record_checks.metric_rows(record_checks.record_of(str(tmp_path), "c"))


def test_a_finite_space_is_tried_once_before_any_repeat_across_a_resume(ray_session, tmp_path):
    search = {"truncation": {"type": "categorical", "choices": [2, 4], "estimators": ["tbptt"]}}
    spec = spec_.load_spec_dict(
        _spec_dict(
            trials=6,
            steps=200,
            estimators=["uoro", "tbptt"],
            search=search,
            estimator_choice="searched",  # every set once before a repeat, across estimators
        )
    )
    with pytest.raises(KeyboardInterrupt):
        Driver(spec, str(tmp_path), workers=1, on_event=_interrupted_at_asked({1})).run()
    out = io.StringIO()
    summary = Driver(spec, str(tmp_path), workers=1, out=out).run(resume=True)
    assert summary["states"] == {"COMPLETE": 6}
    assert "search space exhausted after 3 trials: every parameter set is tried; the 3 " in (
        out.getvalue()
    )
    trials = _study(tmp_path).trials
    first = record_checks.distinct_parameter_sets(_FirstTrials(trials[:3]))
    assert sorted(first) == sorted(
        [
            (("estimator", "uoro"),),
            (("estimator", "tbptt"), ("truncation", 2)),
            (("estimator", "tbptt"), ("truncation", 4)),
        ]
    )
    # past exhaustion: every set once more (fewest-tried first), each trial its own seed
    assert sorted(record_checks.distinct_parameter_sets(_FirstTrials(trials[3:]))) == sorted(first)
    assert len({t.user_attrs["seed"] for t in trials}) == 6


# -- 4. a checkpoint deleted or corrupted before a resume -------------------------------------


class _AllCheckpointed:
    """A driver hook: Ctrl-C once every running trial has a checkpoint past step 0."""

    def __init__(self) -> None:
        self.checkpointed: set[int] = set()

    def __call__(self, event) -> None:
        if event.kind == "checkpoint":
            self.checkpointed.add(event.number)
            if event.running and event.running <= self.checkpointed:
                raise KeyboardInterrupt


def _broken_sweep(state_dir):
    """Three trials packed on one actor, interrupted once each has a checkpoint; then trial 1's
    checkpoint deleted and trial 2's truncated."""
    spec = spec_.load_spec_dict(_spec_dict(trials=3, pack=3))
    hook = _AllCheckpointed()
    driver = Driver(spec, str(state_dir), workers=1, chunk_seconds=ONE_LOG_CHUNK, on_event=hook)
    with pytest.raises(KeyboardInterrupt):
        driver.run()
    study = _study(state_dir)
    assert all(0 < t.user_attrs["checkpoint_step"] < STEPS for t in study.get_trials())
    paths = {n: sweep_store.checkpoint_path(str(state_dir), "c", n) for n in range(3)}
    os.remove(paths[1])
    data = open(paths[2], "rb").read()
    with open(paths[2], "wb") as handle:
        handle.write(data[: len(data) // 2])
    return spec, study, paths


def _plain_value(spec, trial) -> float:
    learner = spec_.learner_spec(
        spec, trial.user_attrs["estimator"], trial.user_attrs["settings"], trial.user_attrs["seed"]
    )
    return pytest.approx(Learner(learner).run(spec.steps)["final_loss"], rel=1e-9)


def test_a_deleted_checkpoint_fails_its_trial_naming_the_file(ray_session, tmp_path):
    spec, before, paths = _broken_sweep(tmp_path)
    had = before.trials[1].user_attrs["checkpoint_step"]
    summary = Driver(spec, str(tmp_path), workers=1).run(resume=True)
    assert summary["states"] == {"COMPLETE": 1, "FAIL": 2}
    trials = _study(tmp_path).trials
    assert trials[1].user_attrs["fail_reason"] == (
        f"checkpoint {paths[1]!r} of trial 1 is missing (the trial had reached step {had}); "
        "a resume with --restart-broken restarts such a trial from step 0 instead; "
        "`rnnsweep extend c --trials +1` adds a trial in its place"
    )
    assert trials[2].user_attrs["fail_reason"].startswith(f"checkpoint {paths[2]!r} of trial 2 ")
    assert trials[0].state.name == "COMPLETE" and trials[0].value == _plain_value(spec, trials[0])
    record = record_checks.record_of(str(tmp_path), "c")
    steps = record_checks.metric_rows(record)
    assert steps[0] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=record["tracking_uri"]).get_run(
        trials[1].user_attrs["mlflow_run_id"]
    )
    assert run.info.status == "FAILED" and run.data.tags["reason"] == trials[1].user_attrs[
        "fail_reason"
    ]


def test_restart_broken_restarts_from_zero_in_a_fresh_run(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    spec, before, paths = _broken_sweep(tmp_path)
    old_runs = {t.number: t.user_attrs["mlflow_run_id"] for t in before.trials}
    assert main(["resume", "c", "--state-dir", str(tmp_path), "--restart-broken"]) == 0
    record = record_checks.record_of(str(tmp_path), "c")
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    steps = record_checks.metric_rows(record, keys=("loss", "final_loss"))
    full = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert steps == {0: full, 1: full, 2: full}  # one row per step, in one run per trial
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    for number in (1, 2):
        trial = trials[number]
        why = trial.user_attrs["restarted"]
        assert why.startswith(f"checkpoint {paths[number]!r} of trial {number} is ")
        assert why.endswith("; restarted from step 0 (resume --restart-broken)")
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["rnnsweep.restarted"] == why
        old = client.get_run(old_runs[number])
        assert old.info.lifecycle_stage == "deleted" and old.data.tags["rnnsweep.replaced"] == why
        assert trial.value == _plain_value(spec, trial)  # as if run from the start
    assert os.path.exists(paths[2] + ".broken")
    assert trials[0].user_attrs["mlflow_run_id"] == old_runs[0]
    assert "restarted" not in trials[0].user_attrs
    assert trials[0].value == _plain_value(spec, trials[0])
