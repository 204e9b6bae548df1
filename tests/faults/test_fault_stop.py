"""``rnnsweep stop NAME`` against a real driver process on SQLite: the request goes through the
sweep's Optuna database, the driver stops as on Ctrl-C (exit 130, resume hint), its running
trials keep their checkpoints, the runs end KILLED, and ``resume`` completes the sweep. With no
driver, ``stop`` says there is nothing to stop (exit 0)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import record_checks
import yaml
from driver_process import rnnsweep_process
from frozen_workers import freeze_with_checkpointed_trials, send
from ray_processes import kill, ray_processes

from rnnsweep.algorithms import checkpoint_file
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.sweep_lease import read_holder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG_EVERY, STEPS = 200, 40000

SPEC = {
    "name": "t",
    "task": "add",
    "hidden": 8,
    "dtype": "float64",
    "steps": STEPS,
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
    "workers": 2,
    "lease_timeout": 8.0,  # a heartbeat every 2 s: the stop is read within 2 s
}


def test_stop_from_another_process_then_resume(ray_session, tmp_path, capsys):
    state_dir = str(tmp_path / "state")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    proc = rnnsweep_process(["launch", str(spec_path), "--state-dir", state_dir], temp_root)
    try:
        # the trials stand still until the driver has let the sweep go: none can end first
        workers = freeze_with_checkpointed_trials(proc, state_dir, temp_root)
        capsys.readouterr()
        # `stop` in a process of its own, as from another terminal: it waits for the release
        stopper = subprocess.run(
            [sys.executable, "-m", "rnnsweep.orchestrator.cli", "stop", "t"]
            + ["--state-dir", state_dir],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert stopper.returncode == 0, stopper.stderr
        holder = f"pid {proc.pid} on {socket.gethostname()}"
        assert f"asked the driver of sweep 't' ({holder}) to stop" in stopper.stdout
        assert f"stopped: continue it with `rnnsweep resume t --state-dir {state_dir}`" in (
            stopper.stdout
        )
        send(workers, signal.SIGCONT)  # the lease is released: the driver is shutting down
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill(ray_processes(temp_root))
    assert proc.returncode == 130, out
    assert "stop requested by `rnnsweep stop` (pid " in out
    assert f"interrupted: continue with `rnnsweep resume t --state-dir {state_dir}`" in out
    assert "Traceback" not in out

    record = record_checks.record_of(state_dir, "t")
    holder_now = read_holder(sweep_store.study_url(record), "t")
    assert holder_now is not None and holder_now.token == ""  # released
    client = record_checks._client(record["tracking_uri"])
    assert client.get_run(record["mlflow_parent_run_id"]).info.status == "KILLED"
    study = sweep_store.load_study(record)
    running = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert len(running) == 2  # both stopped mid-way
    for trial in running:  # its checkpoint kept, its child run KILLED
        path = sweep_store.checkpoint_path(state_dir, "t", trial.number)
        with open(path, "rb") as handle:
            step = checkpoint_file.read_header(handle.read(), path).step
        assert STEPS > step >= trial.user_attrs["checkpoint_step"] > 0
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"

    # no driver now: nothing to stop, exit 0, and the sweep's state is untouched
    assert main(["stop", "t", "--state-dir", state_dir]) == 0
    assert "no driver holds sweep 't': nothing to stop" in capsys.readouterr().out

    # an old request does not stop the next driver (it was addressed to the first one)
    assert main(["resume", "t", "--state-dir", state_dir]) == 0
    study = sweep_store.load_study(record)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    expected = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    rows = record_checks.metric_rows(record, ("loss",))
    assert rows == {0: expected, 1: expected}  # every step once across the stop


def test_a_request_reaches_its_holder_only(storage_url):
    """The heartbeat reads a request addressed to its token; a released lease's request is
    gone, and a free lease gets none (SQLite and PostgreSQL)."""
    from rnnsweep.orchestrator.sweep_lease import SweepLease, request_stop

    url = storage_url
    assert request_stop(url, "s", 4.0, "me") is None  # no lease table yet: nothing to stop
    lease = SweepLease(url, "s", 4.0)  # heartbeat every 1 s
    lease.acquire()
    try:
        holder = request_stop(url, "s", 4.0, "`rnnsweep stop` (test)")
        assert holder is not None and holder.token == lease.token
        deadline = time.monotonic() + 60
        while not lease.stop_requested and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lease.stop_requested == "`rnnsweep stop` (test)"
    finally:
        lease.release()
    assert request_stop(url, "s", 4.0, "me") is None  # released: nothing to stop
    second = SweepLease(url, "s", 4.0)
    second.acquire()
    try:
        time.sleep(2.5)  # two beats
        assert second.stop_requested == ""
    finally:
        second.release()


def test_extend_steps_of_a_stopped_sweep(ray_session, tmp_path, capsys):
    """Stopped mid-way, then ``extend --steps``: the stopped trials continue from their
    checkpoints to the new budget, a trial that had ended continues as a new trial."""
    state_dir = str(tmp_path / "state")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    proc = rnnsweep_process(["launch", str(spec_path), "--state-dir", state_dir], temp_root)
    try:
        workers = freeze_with_checkpointed_trials(proc, state_dir, temp_root)
        assert main(["stop", "t", "--state-dir", state_dir]) == 0  # waits for the release
        send(workers, signal.SIGCONT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill(ray_processes(temp_root))
    assert proc.returncode == 130, out
    record = record_checks.record_of(state_dir, "t")
    states = {t.number: t.state.name for t in sweep_store.load_study(record).get_trials()}
    assert states == {0: "RUNNING", 1: "RUNNING"}  # both stopped mid-way
    capsys.readouterr()
    more = STEPS + 8000
    assert main(["extend", "t", "--state-dir", state_dir, "--steps", str(more)]) == 0
    assert f"steps {STEPS} -> {more}" in capsys.readouterr().err
    trials = sweep_store.load_study(record).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert [t.user_attrs["steps_done"] for t in trials] == [more, more]
    expected = list(range(LOG_EVERY, more + 1, LOG_EVERY))
    assert record_checks.metric_rows(record, ("loss",)) == {0: expected, 1: expected}
