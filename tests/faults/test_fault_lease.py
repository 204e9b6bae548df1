"""The single-writer lease (a row in the sweep's Optuna database), with real driver processes
on real SQLite and PostgreSQL storages: a second driver is refused with exit 3 naming the
holder; a stale lease of another host is taken over and the takeover logged; a SIGKILLed
driver shows in ``status`` as not running, its trials INTERRUPTED, and ``resume`` takes over
at once; SIGTERM stops a driver as Ctrl-C does; ``rnnsweep run`` stopped by a signal prints
its checkpoint and the resume command. After each, the record is checked (``record_checks``).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import tempfile
import time

import pytest
import record_checks
import yaml
from driver_process import rnnsweep_process
from frozen_workers import freeze_with_checkpointed_trials, send
from ray_processes import kill, ray_processes

from rnnsweep.algorithms import checkpoint_file
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.driver import Driver
from rnnsweep.orchestrator.sweep_lease import TABLE, SweepLease

LOG_EVERY = 200


def _spec(storage_url: str | None = None, **overrides) -> dict:
    spec = {
        "name": "t",
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": 40000,
        "trials": 2,
        "estimators": ["uoro", "tbptt"],
        "fixed": {"log_every": LOG_EVERY, "optimizer": "sgd"},
        "search": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "truncation": {"type": "int", "low": 2, "high": 8, "estimators": ["tbptt"]},
        },
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 2000,
        # both trials asked before any stop: a resumed sweep's sampler restarts from its
        # seed, so a trial asked after a resume can repeat a parameter set (not this issue's)
        "workers": 2,
    }
    if storage_url:
        spec["storage"] = {"optuna": storage_url}
    spec.update(overrides)
    return spec


def _status(state_dir: str, capsys) -> tuple[str, dict]:
    capsys.readouterr()
    assert main(["status", "t", "--state-dir", state_dir]) == 0
    text = capsys.readouterr().out
    assert main(["status", "t", "--state-dir", state_dir, "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)


def _check_complete_record(state_dir: str, steps: int, trials: int) -> dict:
    """Every trial COMPLETE, every metric step once and all of them there; distinct params."""
    record = record_checks.record_of(state_dir, "t")
    study = sweep_store.load_study(record)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * trials
    expected = list(range(LOG_EVERY, steps + 1, LOG_EVERY))
    rows = record_checks.metric_rows(record, ("loss", "steps_per_sec"))
    assert rows == {n: expected for n in range(trials)}
    record_checks.distinct_parameter_sets(study)
    return record


def test_a_second_driver_is_refused_and_sigterm_stops_the_first(
    ray_session, storage_url, tmp_path, capsys
):
    state_dir = str(tmp_path / "state")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(storage_url)))
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    proc = rnnsweep_process(["launch", str(spec_path), "--state-dir", state_dir], temp_root)
    try:
        workers = freeze_with_checkpointed_trials(proc, state_dir, temp_root)
        holder = f"pid {proc.pid} on {socket.gethostname()} (heartbeat "
        capsys.readouterr()
        for second in (
            ["resume", "t", "--state-dir", state_dir],
            ["launch", str(spec_path), "--state-dir", state_dir],
        ):
            assert main(second) == 3, second
            err = capsys.readouterr().err
            assert f"error: sweep 't' is being driven by {holder}" in err, err
            assert "lease_timeout 60 s" in err
        text, status = _status(state_dir, capsys)
        assert f"driver running: pid {proc.pid} on {socket.gethostname()}" in text
        assert status["driver"]["running"] and status["driver"]["pid"] == proc.pid
        assert "INTERRUPTED" not in {row["state"] for row in status["trials"]}

        proc.send_signal(signal.SIGTERM)  # as a scheduler stops a job
        time.sleep(1.0)  # its trials cannot end meanwhile: their workers are still stopped
        send(workers, signal.SIGCONT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill(ray_processes(temp_root))
    assert proc.returncode == 130, out
    assert f"interrupted: continue with `rnnsweep resume t --state-dir {state_dir}`" in out
    assert "Traceback" not in out
    record = record_checks.record_of(state_dir, "t")
    client = record_checks._client(record["tracking_uri"])
    assert client.get_run(record["mlflow_parent_run_id"]).info.status == "KILLED"
    study = sweep_store.load_study(record)
    running = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert len(running) == 2  # both stopped mid-way
    for trial in running:  # its checkpoint kept, its child run KILLED
        path = sweep_store.checkpoint_path(state_dir, "t", trial.number)
        with open(path, "rb") as handle:
            step = checkpoint_file.read_header(handle.read(), path).step
        assert step >= trial.user_attrs["checkpoint_step"] > 0
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    text, status = _status(state_dir, capsys)
    assert "driver not running (last seen " in text
    assert f"`rnnsweep resume t --state-dir {state_dir}` continues it" in text
    assert status["driver"]["running"] is False
    interrupted = {row["number"] for row in status["trials"] if row["state"] == "INTERRUPTED"}
    assert interrupted == {t.number for t in running}

    assert main(["resume", "t", "--state-dir", state_dir]) == 0
    assert "took over" not in capsys.readouterr().err  # a released lease is no takeover
    _check_complete_record(state_dir, 40000, 2)


def _rewrite_lease(url: str, **values) -> None:
    """Write the lease row directly, as a driver on another machine would have left it;
    ``heartbeat_age``: seconds before the database's now."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    age = values.pop("heartbeat_age")
    now = (
        "((julianday('now') - 2440587.5) * 86400.0)"
        if engine.dialect.name == "sqlite"
        else "extract(epoch from clock_timestamp())"
    )
    sets = ", ".join(f"{key} = :{key}" for key in values)
    with engine.begin() as connection:
        connection.execute(
            sa.text(f"UPDATE {TABLE} SET {sets}, heartbeat = {now} - :age WHERE sweep = 't'"),
            {**values, "age": age},
        )
    engine.dispose()


def test_a_stale_lease_of_another_host_is_taken_over_and_logged(
    ray_session, storage_url, tmp_path, capsys
):
    state_dir = str(tmp_path)
    spec_dict = _spec(storage_url, steps=1200, trials=1, lease_timeout=30, checkpoint_every=400)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    url = sweep_store.optuna_url(storage_url)
    lease = SweepLease(url, "t", timeout=30.0)
    lease.acquire()
    lease.release()
    other = {"host": "elsewhere.invalid", "pid": 4242, "token": "0" * 32}

    _rewrite_lease(url, heartbeat_age=10.0, **other)  # alive on another machine
    capsys.readouterr()
    assert main(["launch", str(spec_path), "--state-dir", state_dir]) == 3
    err = capsys.readouterr().err
    found = re.search(
        r"is being driven by pid 4242 on elsewhere\.invalid \(heartbeat (\d+) s ago\); .*"
        r"can be taken over in (\d+) s \(lease_timeout 30 s\)",
        err,
    )
    assert found, err
    age, wait = int(found[1]), int(found[2])
    assert 10 <= age < 25 and abs(age + wait - 30) <= 1  # the 30 s timeout less its age
    assert not os.path.exists(sweep_store.record_path(state_dir, "t"))

    _rewrite_lease(url, heartbeat_age=3600.0, **other)  # that machine died an hour ago
    out = io.StringIO()
    spec = spec_.load_spec_dict(spec_dict)
    assert Driver(spec, state_dir, workers=1, out=out).run()["states"] == {"COMPLETE": 1}
    line = (
        "took over the lease of sweep 't' from pid 4242 on elsewhere.invalid: its heartbeat "
        "is 60 min old, past the 30 s timeout"
    )
    assert line in out.getvalue()
    record = _check_complete_record(state_dir, 1200, 1)
    tags = record_checks._client(record["tracking_uri"]).get_run(
        record["mlflow_parent_run_id"]
    ).data.tags
    assert [v for k, v in tags.items() if k.startswith("rnnsweep.lease_takeover.")] == [line]


def test_status_after_sigkill_says_not_running_and_resume_takes_over_at_once(
    ray_session, tmp_path, capsys
):
    state_dir = str(tmp_path / "state")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(steps=20000)))
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    proc = rnnsweep_process(["launch", str(spec_path), "--state-dir", state_dir], temp_root)
    try:
        freeze_with_checkpointed_trials(proc, state_dir, temp_root)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill(ray_processes(temp_root))
    text, status = _status(state_dir, capsys)
    assert "driver not running (last seen " in text and " ago) — `rnnsweep resume t" in text
    assert status["driver"] == {
        "running": False,
        "host": socket.gethostname(),
        "pid": proc.pid,
        "heartbeat_age_s": status["driver"]["heartbeat_age_s"],
    }
    states = [row["state"] for row in status["trials"]]
    assert "INTERRUPTED" in states and "RUNNING" not in states
    assert " INTERRUPTED " in text

    started = time.monotonic()
    assert main(["resume", "t", "--state-dir", state_dir]) == 0  # no 60 s wait
    err = capsys.readouterr().err
    assert (
        f"took over the lease of sweep 't' from pid {proc.pid} on {socket.gethostname()}: "
        f"pid {proc.pid} is no longer running on this host"
    ) in err
    assert time.monotonic() - started < 300
    _check_complete_record(state_dir, 20000, 2)
    text, status = _status(state_dir, capsys)
    assert "driver not running (last seen " in text and "resume" not in text  # all done


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stopped_by_a_signal_prints_its_checkpoint(signum, tmp_path):
    checkpoint = str(tmp_path / "ck.pt")
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    args = ["run", "--task", "add", "--estimator", "uoro", "--hidden", "8", "--no-mlflow"]
    args += ["--steps", "100000000", "--checkpoint", checkpoint, "--checkpoint-every", "500"]
    proc = rnnsweep_process(args, temp_root)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(checkpoint) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint in 120 s"
            time.sleep(0.2)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    step = checkpoint_file.read(checkpoint).snapshot["counters"]["t"]
    assert step > 0
    assert (
        f"interrupted at step {step}: checkpoint {checkpoint}; continue with "
        f"`rnnsweep run --resume {checkpoint}`"
    ) in out
    assert "final loss" not in out and "nan" not in out


def test_a_driver_whose_lease_was_taken_over_stops_writing(ray_session, tmp_path):
    import sqlalchemy as sa

    from rnnsweep.orchestrator.sweep_lease import LeaseHeld

    state_dir = str(tmp_path)
    url = sweep_store.default_optuna_url(state_dir)
    spec = spec_.load_spec_dict(_spec(steps=20000, lease_timeout=0.4))  # a beat every 0.1 s
    thief = {"host": "thief.invalid", "pid": 1, "token": "f" * 32}
    driver: Driver

    def steal(event) -> None:  # at the first checkpoint, another driver takes the lease
        if event.kind != "checkpoint" or driver.stores.lease_lost():
            return
        _rewrite_lease(url, heartbeat_age=0.0, **thief)
        deadline = time.monotonic() + 60
        while not driver.stores.lease_lost():
            assert time.monotonic() < deadline, "the heartbeat never noticed"
            time.sleep(0.05)

    driver = Driver(spec, state_dir, workers=2, out=io.StringIO(), on_event=steal)
    with pytest.raises(LeaseHeld, match="taken over by pid 1 on thief.invalid; this driver st"):
        driver.run()
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        row = connection.execute(sa.text(f"SELECT host, pid, token FROM {TABLE}")).one()
    engine.dispose()
    assert tuple(row) == ("thief.invalid", 1, "f" * 32)  # left to its new holder
    record = record_checks.record_of(state_dir, "t")
    client = record_checks._client(record["tracking_uri"])
    assert client.get_run(record["mlflow_parent_run_id"]).info.status == "RUNNING"
    record_checks.metric_rows(record)  # nothing written twice
