"""Faults of the machine around a sweep (issue 11): resources no node has, a full disk, a
read-only state directory, an Optuna database locked by another program, a trial out of memory
or recursing too deep, a node leaving mid-sweep.

Real faults: full and read-only file systems are size-limited ``tmpfs`` mounts (``mount -t
tmpfs -o size=...``, ``mount -o remount,ro``: root in a container; the tests skip where mount
is refused), the lock is a second process holding ``BEGIN EXCLUSIVE`` on the SQLite file, the
out-of-memory trial asks for more memory than the machine has (``probe_samples``), the node
that leaves is a real raylet of a ``ray.cluster_utils.Cluster``. One test hook: no input
makes a learner recurse without end, so that test makes the actor's live pack recurse through
Ray's ``__ray_call__`` (test code acting on the actor, nothing in the product).

Each test asserts the one-line message (naming the path or the cause), the exit code (2: bad
input, nothing created; 74: the machine, what was recorded is kept; see README), no traceback,
and the record (``record_checks``: metric rows == distinct steps; the trials' states).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import frozen_workers
import pytest
import record_checks
import yaml
from log_chunks import ONE_LOG_CHUNK
from served_process import ServedProcess

from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.driver import Driver
from rnnsweep.orchestrator.environment_fault import EXIT_ENVIRONMENT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG_EVERY = 100


def _spec_dict(name="t", trials=2, steps=1200, **overrides):
    spec = {
        "name": name,
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": steps,
        "trials": trials,
        "estimators": ["uoro"],
        "fixed": {"log_every": LOG_EVERY},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 300,
        "max_retries": 1,
        "workers": 1,
    }
    spec.update(overrides)
    return spec


def _write_spec(tmp_path, **overrides) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec_dict(**overrides)))
    return str(path)


def _one_error_line(err: str, command: str) -> str:
    """The one line a command printed for its error; no traceback around it."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"rnnsweep {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _record_states(state_dir: str, name: str = "t") -> tuple[dict, list[str], dict]:
    """The sweep's record, its trials' states, and each trial's sorted ``loss`` steps (metric
    rows == distinct steps asserted by ``record_checks``)."""
    record = record_checks.record_of(state_dir, name)
    study = sweep_store.load_study(record)
    record_checks.distinct_parameter_sets(study)
    states = [t.state.name for t in study.get_trials()]
    return record, states, record_checks.metric_rows(record)


def _complete_steps(steps: int) -> list[int]:
    return list(range(LOG_EVERY, steps + 1, LOG_EVERY))


# -- tmpfs mounts ------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path, size: str):
    """A size-limited tmpfs at ``path`` (created), unmounted at the end; skip where mount is
    not permitted (not root, or a container without CAP_SYS_ADMIN)."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount(path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def _fill(directory: str) -> str:
    """Fill the file system of ``directory`` to the last byte; returns the filler's path."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                continue
    return filler


class FillWhen:
    """Fills ``directory``'s file system once ``ready()`` holds (polled from a thread), as a
    disk that fills up while a sweep runs."""

    def __init__(self, directory: str, ready) -> None:
        self.directory, self.ready = directory, ready
        self.filler: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self.ready():
                self.filler = _fill(self.directory)
                return
            time.sleep(0.05)

    def free(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.filler is not None:
            os.unlink(self.filler)


def _checkpoint(state_dir: str, trial: int = 0) -> str:
    return sweep_store.checkpoint_path(state_dir, "t", trial)


# -- resources ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resources, named, has",
    [({"gpus": 1}, "resources.gpus", "2 CPU, 0 GPU"), ({"cpus": 3}, "resources.cpus", "2 CPU")],
)
def test_resources_no_node_has_exit_2_before_anything_is_created(
    ray_session, tmp_path, capsys, resources, named, has
):
    """The test session's Ray has one node with 2 CPUs and no GPU."""
    spec = _write_spec(tmp_path, resources=resources)
    state = tmp_path / "state"
    started = time.monotonic()
    assert main(["launch", spec, "--state-dir", str(state)]) == 2
    line = _one_error_line(capsys.readouterr().err, "launch")
    assert f"error: {named}: a trial needs " in line
    assert "on one node, but no node of the Ray cluster has that (nodes: " in line
    assert f": {has})" in line and f"lower {named} in the spec" in line
    assert not state.exists()  # no store, no record, no lease
    assert time.monotonic() - started < 60  # an error, not a silent wait


# -- environment faults at open time -----------------------------------------------------------


def _hold_exclusive(path: str) -> subprocess.Popen:
    """Another program holding ``BEGIN EXCLUSIVE`` on the SQLite file ``path`` until its stdin
    closes."""
    code = (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_optuna_database_locked_at_launch_names_it_and_creates_no_sweep(
    ray_session, tmp_path, capsys
):
    state = tmp_path / "state"
    state.mkdir()
    database = str(state / "optuna.db")
    holder = _hold_exclusive(database)
    try:
        spec = _write_spec(tmp_path, trials=1, steps=600)
        assert main(["launch", spec, "--state-dir", str(state)]) == EXIT_ENVIRONMENT
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    line = _one_error_line(capsys.readouterr().err, "launch")
    assert f"Optuna store {database} is locked by another program" in line
    assert "run the command again" in line
    assert not os.path.exists(sweep_store.record_path(str(state), "t"))
    assert not os.path.exists(state / "mlflow.db")
    # the lock gone, the same command launches the sweep
    assert main(["launch", spec, "--state-dir", str(state)]) == 0
    _, states, steps = _record_states(str(state))
    assert states == ["COMPLETE"] and steps == {0: _complete_steps(600)}


def test_read_only_state_directory_names_it_and_changes_nothing(tmp_path, capsys):
    """The first sweep runs in a subprocess, so that this process holds no file of the
    state directory open (a remount to read-only refuses a file open for writing)."""
    with _tmpfs(tmp_path / "state", "64m") as state:
        spec = _write_spec(tmp_path, trials=1, steps=600)
        env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rs", dir="/tmp")}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run(
            [sys.executable, "-m", "rnnsweep.orchestrator.cli", "launch", spec, "--state-dir",
             state],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
        )
        assert done.returncode == 0, done.stderr
        # a trial still to run (as `extend --trials 2` leaves it): resume has to write (a
        # finished sweep's resume answers from the record and writes nothing)
        _, record = sweep_store.read_record(state, "t")
        sweep_store.write_record(state, "t", {**record, "spec": {**record["spec"], "trials": 2}})
        _remount(state, "ro")
        try:
            assert main(["resume", "t", "--state-dir", state]) == EXIT_ENVIRONMENT
            line = _one_error_line(capsys.readouterr().err, "resume")
            # the lease is the first write: a row in the sweep's Optuna database
            optuna_db = os.path.join(state, "optuna.db")
            assert f"Optuna store {optuna_db} is read-only" in line, line
            other = _write_spec(tmp_path, name="u", trials=1, steps=600)
            assert main(["launch", other, "--state-dir", state]) == EXIT_ENVIRONMENT
            line = _one_error_line(capsys.readouterr().err, "launch")
            assert f"Optuna store {optuna_db} is read-only" in line, line
            _, states, steps = _record_states(state)
            assert states == ["COMPLETE"] and steps == {0: _complete_steps(600)}
            assert not os.path.exists(sweep_store.record_path(state, "u"))
        finally:
            _remount(state, "rw")


def test_mlflow_store_read_only_at_launch_leaves_no_half_made_sweep(ray_session, tmp_path, capsys):
    """The Optuna study is created first; the MLflow store then fails: the study goes again,
    so that the same command launches the sweep once the store is writable."""
    with _tmpfs(tmp_path / "ro", "4m") as mount:
        _remount(mount, "ro")
        database = os.path.join(mount, "mlflow.db")
        storage = {"mlflow": f"sqlite:///{database}"}
        spec = _write_spec(tmp_path, trials=1, steps=600, storage=storage)
        state = str(tmp_path / "state")
        try:
            assert main(["launch", spec, "--state-dir", state]) == EXIT_ENVIRONMENT
        finally:
            _remount(mount, "rw")
        line = _one_error_line(capsys.readouterr().err, "launch")
        assert f"cannot write {database}: it is on a read-only file system" in line, line
        assert not os.path.exists(sweep_store.record_path(state, "t"))
        # refused before the lease: no Optuna database, so no study without its record
        assert not os.path.exists(os.path.join(state, "optuna.db"))
        assert main(["launch", spec, "--state-dir", state]) == 0
        _, states, steps = _record_states(state)
        assert states == ["COMPLETE"] and steps == {0: _complete_steps(600)}


# -- a disk that fills up mid-sweep ------------------------------------------------------------


def _full_disk_then_resume(tmp_path, capsys, mount_at, size, spec_overrides, expected):
    """Launch (in this process, on the test session's Ray) with ``mount_at`` a tmpfs that is
    filled once trial 0 has a checkpoint; assert exit 74, the message (``expected``: what it
    names), the record kept; free the space, resume, assert every trial complete."""
    state = str(tmp_path / "state")
    with _tmpfs(mount_at, size) as mount:
        steps = 30000
        spec = _write_spec(tmp_path, trials=2, steps=steps, **spec_overrides)
        filler = FillWhen(mount, lambda: os.path.exists(_checkpoint(state)))
        try:
            assert main(["launch", spec, "--state-dir", state]) == EXIT_ENVIRONMENT
        finally:
            filler.free()
        line = _one_error_line(capsys.readouterr().err, "launch")
        assert expected(state) in line, line
        assert "what was recorded is kept" in line and "rnnsweep resume t" in line
        record, states, steps_before = _record_states(state)
        assert "RUNNING" in states and "FAIL" not in states
        for logged in steps_before.values():  # gap-free up to where each stopped
            assert not logged or logged == _complete_steps(logged[-1])
        assert main(["resume", "t", "--state-dir", state]) == 0
        _, states, steps_after = _record_states(state)
        assert states == ["COMPLETE", "COMPLETE"]
        assert steps_after == {0: _complete_steps(steps), 1: _complete_steps(steps)}


def test_disk_full_at_a_checkpoint_write_stops_cleanly_and_resumes(
    ray_session, tmp_path, capsys
):
    def names_a_checkpoint(state):
        return f"cannot write {os.path.join(state, 'checkpoints', 't', 'trial-')}"

    _full_disk_then_resume(
        tmp_path, capsys, tmp_path / "state" / "checkpoints", "1m", {}, names_a_checkpoint
    )


@pytest.mark.parametrize("store", ["optuna", "mlflow"])
def test_sqlite_store_full_stops_cleanly_and_resumes(ray_session, tmp_path, capsys, store):
    mount = tmp_path / "small"
    database = str(mount / f"{store}.db")
    label = {"optuna": "Optuna store", "mlflow": "MLflow store"}[store]
    _full_disk_then_resume(
        tmp_path,
        capsys,
        mount,
        "4m",
        {"storage": {store: f"sqlite:///{database}"}},
        lambda state: f"{label} {database} is on a full disk",
    )


# -- a trial that runs out of memory or recurses too deep ---------------------------------------


def test_out_of_memory_in_one_trial_fails_that_trial_only(ray_session, tmp_path):
    """A sweep comparing uoro to two learners no machine here can hold, at n=400: a
    full-covariance Kalman filter (Q = 161,602 coordinates: a Q x Q covariance of 209 GB),
    refused before it allocates (``memory_budget``), and tbptt with a window of 10^9 steps,
    refused by torch's allocator (3.2 TB). Each fails in its actor with its reason; the uoro
    trial goes on. The split asks the estimators in the spec's order."""
    spec = spec_.load_spec_dict(
        _spec_dict(
            trials=3,
            seed=0,
            hidden=400,
            steps=200,
            estimators=["nobacktrack-kalman", "tbptt", "uoro"],
            fixed={"log_every": LOG_EVERY, "covariance": "full", "truncation": 10**9},
        )
    )
    summary = Driver(spec, str(tmp_path), workers=1).run()
    record, states, steps = _record_states(str(tmp_path))
    assert states == ["FAIL", "FAIL", "COMPLETE"]
    assert summary["states"] == {"COMPLETE": 1, "FAIL": 2}
    trials = sweep_store.load_study(record).get_trials()
    assert [t.user_attrs["estimator"] for t in trials] == ["nobacktrack-kalman", "tbptt", "uoro"]
    runs = record_checks.child_runs(record)
    kalman, window = (trials[i].user_attrs["fail_reason"] for i in (0, 1))
    assert kalman.startswith(
        "out of memory in the learner: a learner with the full Kalman covariance "
        "[1, 161602, 161602] (torch.float64"
    ), kalman
    assert "GiB free on cpu" in kalman
    assert window.startswith("out of memory in the learner: can't allocate memory: "), window
    # 10^9 columns [h; 1; x] of 402 float64
    assert "you tried to allocate 3216000000000 bytes" in window
    for trial in trials[:2]:
        run = runs[trial.number]
        reason = trial.user_attrs["fail_reason"]
        assert run.info.status == "FAILED" and run.data.tags["reason"] == reason
    assert steps[2] == _complete_steps(spec.steps)


def _recursing_pack():
    """A function for the actor (``__ray_call__``): its pack's next step recurses without
    end. Built here, so that Ray sends it by value (the actor cannot import this module)."""

    def make_recurse(host) -> None:
        def recurse(depth: int = 0) -> int:
            return recurse(depth + 1) + 1

        host.population.step = recurse

    return make_recurse


class RecurseOnce:
    """A driver hook: at trial 0's first checkpoint, its actor's pack is made to recurse."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self, event) -> None:
        import ray

        if event.kind == "checkpoint" and event.number == 0 and not self.done:
            self.done = True
            ray.get(event.actor.__ray_call__.remote(_recursing_pack()))


def test_recursion_error_in_one_trial_fails_that_trial_only(ray_session, tmp_path):
    spec = spec_.load_spec_dict(_spec_dict(trials=3, steps=1200))
    hook = RecurseOnce()
    driver = Driver(spec, str(tmp_path), workers=1, chunk_seconds=ONE_LOG_CHUNK, on_event=hook)
    summary = driver.run()
    assert hook.done and summary["states"] == {"COMPLETE": 2, "FAIL": 1}
    record, states, steps = _record_states(str(tmp_path))
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    trial = sweep_store.load_study(record).trials[0]
    reason = trial.user_attrs["fail_reason"]
    assert reason.startswith("recursion too deep in the learner: maximum recursion depth"), reason
    run = record_checks.child_runs(record)[0]
    assert run.info.status == "FAILED" and run.data.tags["reason"] == reason
    assert steps[0] == _complete_steps(steps[0][-1])  # what it logged before, once each
    assert steps[1] == steps[2] == _complete_steps(spec.steps)


# -- a node that leaves mid-sweep --------------------------------------------------------------

CLUSTER = """\
import os
import sys
from ray.cluster_utils import Cluster

os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"), exist_ok=True)
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
for command in sys.stdin:
    if command.strip() == "remove":
        cluster.remove_node(worker)
    elif command.strip() == "add":
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    else:
        break
    print("done", flush=True)
cluster.shutdown()
"""


def _actors(temp_root: str) -> list[int]:
    """The processes of the trials' actors (``ray::LearnerHost...``) under ``temp_root``."""
    return frozen_workers.workers(temp_root, b"ray::LearnerHost")


def _trial_ended(state_dir: str, number: int) -> bool:
    study = sweep_store.load_study(record_checks.record_of(state_dir, "t"))
    return study.trials[number].state.is_finished()


def _command(cluster: ServedProcess, command: str) -> None:
    cluster.proc.stdin.write(f"{command}\n")
    cluster.proc.stdin.flush()
    assert cluster.next_line(180, f"'done' after {command!r}") == "done"


def test_a_node_leaving_mid_sweep_shows_waiting_for_resources(tmp_path):
    """A two-node ``cluster_utils.Cluster`` (a head without CPUs, one worker with one CPU) in
    a subprocess; the sweep's driver (``rnnsweep launch`` with ``RAY_ADDRESS``) in another.
    The worker node is removed while trial 0 runs: its actor dies, its replacement has no node
    to run on, and the progress output says so; a new node arrives and the sweep completes."""
    from ray_processes import kill, ray_processes

    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp_root}
    env.pop("RAY_ADDRESS", None)
    cluster = ServedProcess(
        [sys.executable, "-c", CLUSTER],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, start_new_session=True,
    )
    driver = None
    try:
        address = cluster.next_line(300, "address")
        steps = 60000
        spec = _write_spec(tmp_path, trials=2, steps=steps, max_retries=3)
        state = str(tmp_path / "state")
        driver = ServedProcess(
            [sys.executable, "-m", "rnnsweep.orchestrator.cli", "launch", spec, "--state-dir",
             state],
            cwd=ROOT, env={**env, "RAY_ADDRESS": address}, merge_stderr=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not os.path.exists(_checkpoint(state)):
            assert driver.proc.poll() is None, driver.output()
            assert time.monotonic() < deadline, "trial 0 never wrote a checkpoint"
            time.sleep(0.1)
        # trial 0's actor stands still (SIGSTOP) until its node is gone, then dies with it
        # (SIGKILL): however fast the machine, the node leaves while trial 0 runs
        actors = _actors(temp_root)
        frozen_workers.send(actors, signal.SIGSTOP)
        assert actors and not _trial_ended(state, 0), driver.output()
        _command(cluster, "remove")
        frozen_workers.send(actors, signal.SIGKILL)
        line = driver.wait_for("waiting for resources", 180)
        assert line.startswith("waiting for resources: trials 0: each needs 1 CPU on one node; ")
        assert "live nodes: " in line and ": 0 CPU" in line  # the head alone, without CPUs
        _command(cluster, "add")
        assert driver.wait(600) == 0, driver.output()
    finally:
        for process in (driver, cluster):
            if process is not None:
                process.close()
        kill(ray_processes(temp_root))
    record, states, logged = _record_states(state)
    assert states == ["COMPLETE", "COMPLETE"]
    assert logged == {0: _complete_steps(steps), 1: _complete_steps(steps)}
    trial = sweep_store.load_study(record).trials[0]
    assert trial.user_attrs["retries"] == 1  # the actor lost with its node, once
