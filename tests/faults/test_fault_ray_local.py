"""The private Ray a driver starts (no RAY_ADDRESS): it listens on the loopback address only,
keeps token authentication on, and does not outlive a driver killed with SIGKILL (10 s)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import record_checks
import yaml
from ray_processes import kill, listening, ray_processes, wait_until_gone

from rnnsweep.orchestrator import sweep_store

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = handle.read().decode(errors="replace").split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def _spec(name: str, steps: int, **more) -> dict:
    """Two uoro trials on add, one worker, reports every 100 steps."""
    return {
        "name": name,
        "task": "add",
        "hidden": 8,
        "steps": steps,
        "trials": 2,
        "workers": 1,
        "estimators": ["uoro"],
        "fixed": {"log_every": 100},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "pruner": "none",
        "sampler": "random",
        **more,
    }


@pytest.fixture(scope="module")
def running_sweep(tmp_path_factory):
    """A driver subprocess (its own RAY_TMPDIR) in the middle of a sweep: ``(process, temp
    root, state dir)`` once a trial has recorded a checkpoint."""
    tmp = tmp_path_factory.mktemp("ray_local")
    # never reached: the driver is killed; a fast machine (30000 steps/s) runs 60 s
    spec = _spec("rl", 2_000_000, dtype="float64", checkpoint_every=500)
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    state = tmp / "state"
    temp_root = tempfile.mkdtemp(prefix="rloc", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp_root, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnsweep.orchestrator.cli", "launch", str(tmp / "spec.yaml")]
        + ["--state-dir", str(state)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the driver ended early:\n{proc.stderr.read()}")
            record = record_checks.created_record(str(state), "rl")
            if record is not None:
                study = sweep_store.load_study(record)
                if any(t.user_attrs.get("checkpoint_step", 0) > 0 for t in study.get_trials()):
                    break
            time.sleep(0.5)
        else:
            pytest.fail("no trial recorded a checkpoint in 300 s")
        yield proc, temp_root, str(state)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill(ray_processes(temp_root))


def test_local_ray_listens_on_loopback_only_with_token_auth(running_sweep):
    proc, temp_root, _ = running_sweep
    pids = sorted(set(ray_processes(temp_root)) | {proc.pid})
    sockets = listening(pids)
    names = {_name(pid) for pid, _, _ in sockets}
    # the GCS, the raylet and the driver's core worker at least; the actor's worker too
    assert {"gcs_server", "raylet"} <= names and len(sockets) >= 5, sockets
    outside = [(pid, _name(pid), address, port) for pid, address, port in sockets]
    outside = [s for s in outside if s[2] not in LOOPBACK]
    assert outside == [], f"Ray listens beyond the loopback address: {outside}"
    gcs = [pid for pid in pids if _name(pid) == "gcs_server"]
    assert gcs and all(_environ(pid).get("RAY_AUTH_MODE") == "token" for pid in gcs)


def _thread_nice(pid: int) -> dict[int, int]:
    """``{thread id: nice}`` of every thread of ``pid`` (Linux: a thread id names its own
    priority)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = os.getpriority(os.PRIO_PROCESS, int(tid))
        except OSError:  # the thread ended
            continue
    return out


def test_local_ray_workers_run_at_the_ordinary_priority(running_sweep):
    """Every thread of the instance's Python workers, the actor's included, runs at nice 0
    from the start (Ray's default is 15: an actor then imports torch below every other job)."""
    _, temp_root, _ = running_sweep
    workers = [pid for pid in ray_processes(temp_root) if _name(pid).startswith("ray::")]
    assert any(_name(pid).startswith("ray::LearnerHos") for pid in workers), workers
    nice = {(pid, _name(pid)): _thread_nice(pid) for pid in workers}
    assert all(nice.values()), nice
    assert {n for threads in nice.values() for n in threads.values()} == {0}, nice


def test_local_ray_dies_with_a_killed_driver(running_sweep):
    proc, temp_root, state = running_sweep
    before = ray_processes(temp_root)
    assert len(before) >= 4, before  # GCS, raylet, agents, the actor's worker, ...
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = wait_until_gone(temp_root, 10)
    assert left == [], f"alive 10 s after the driver's SIGKILL: {[(p, _name(p)) for p in left]}"

    record = record_checks.record_of(state, "rl")
    study = sweep_store.load_study(record)
    assert {t.state.name for t in study.get_trials()} <= {"RUNNING", "COMPLETE"}
    steps = record_checks.metric_rows(record)
    assert steps and all(s == sorted(set(s)) for s in steps.values())
    record_checks.distinct_parameter_sets(study)


def test_a_finished_launch_ends_at_once_and_its_ray_goes_with_it(tmp_path):
    """Run from the console, a launch that finishes leaves its Ray instance to the reaper
    (SIGKILL, not waited for) instead of Ray's graceful shutdown: its record is complete, it
    exits 0 with nothing from Ray on stderr, and no process of the instance outlives it."""
    spec = _spec("ends", 400)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    state = tmp_path / "state"
    temp_root = tempfile.mkdtemp(prefix="rend", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp_root, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rnnsweep.orchestrator.cli", "launch"]
            + [str(tmp_path / "spec.yaml"), "--state-dir", str(state)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        left = wait_until_gone(temp_root, 10)
        assert left == [], f"alive 10 s after the driver's end: {[(p, _name(p)) for p in left]}"
    finally:
        kill(ray_processes(temp_root))
    lines = done.stderr.splitlines()
    assert "sweep 'ends' done: 2 complete" in lines, done.stderr
    assert not [line for line in lines if "raylet" in line.lower() or "(gcs" in line], lines

    record = record_checks.record_of(str(state), "ends")
    study = sweep_store.load_study(record)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    assert record_checks.metric_rows(record) == {0: [100, 200, 300, 400], 1: [100, 200, 300, 400]}
    parent = record_checks._client(record["tracking_uri"]).get_run(record["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
