"""Fault: the Optuna or MLflow store unavailable mid-sweep (real faults: another process holding
an exclusive lock on MLflow's SQLite file; a private PostgreSQL stopped with pg_ctl).

The driver waits and retries, saying so on its progress output; the reports MLflow cannot take
yet go to the run's journal (``DIR/journal/NAME``), so a checkpoint never runs ahead of its
metrics; past ``storage.outage_limit`` it stops as on Ctrl-C, and ``resume`` replays the
journal. Every metric step of every trial ends up in MLflow exactly once.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import record_checks
from conftest import _pg_bin, _PrivateCluster, _sqlalchemy_url, _unavailable
from log_chunks import ONE_LOG_CHUNK
from ray_processes import kill, ray_processes

from rnnsweep.orchestrator import metric_journal, sweep_store
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.driver import Driver
from rnnsweep.orchestrator.store_outage import Outage, StoreOutage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, LOG_EVERY = 6000, 100
ALL_STEPS = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
WAITING = "tracking store unavailable, retrying"

# Holds SQLite's exclusive lock on argv[1] until its stdin is closed.
LOCKER = (
    "import sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=120)\n"
    "db.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
    "db.execute('ROLLBACK')\n"
)


class SqliteLock:
    """Another process holding an exclusive lock on an SQLite file until ``release``."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.strip() == "locked", line
        self.taken = time.monotonic()

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _spec_dict(**overrides):
    spec = {
        "name": "t",
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": STEPS,
        "trials": 3,
        "estimators": ["uoro", "tbptt"],
        "fixed": {"log_every": LOG_EVERY},
        "search": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "truncation": {"type": "int", "low": 2, "high": 8, "estimators": ["tbptt"]},
        },
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 600,
        "workers": 2,
    }
    spec.update(overrides)
    return spec


def _new_table(path: str) -> None:
    """A table to write into, in a new SQLite file."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x INTEGER)")
    db.commit()
    db.close()


def _insert(path: str) -> None:
    db = sqlite3.connect(path, timeout=0.1)
    try:
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    finally:
        db.close()


def test_a_call_waits_out_a_real_lock_and_gives_up_past_the_limit(tmp_path):
    path = str(tmp_path / "store.db")
    _new_table(path)
    lock = SqliteLock(path)
    threading.Timer(2.0, lock.release).start()
    waits: list[str] = []
    outage = Outage("Optuna", limit=60.0)
    outage.on_wait = lambda o: waits.append(o.describe())
    outage.call(_insert, path)  # retried until the lock is released
    assert time.monotonic() - lock.taken >= 2.0
    assert waits and waits[0].startswith(WAITING + " (") and waits[0].endswith(
        "Optuna: database is locked"
    ), waits
    assert outage.seconds() == 0.0
    lock = SqliteLock(path)
    try:
        short = Outage("Optuna", limit=1.5)
        with pytest.raises(StoreOutage, match=r"storage.outage_limit 1.5 s\): database is locked"):
            short.call(_insert, path)
        with pytest.raises(StoreOutage):  # given up: later calls do not wait again
            short.call(lambda: None)
    finally:
        lock.release()
    missing = sqlite3.connect(path)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # not an outage
        Outage("Optuna", limit=60.0).call(missing.execute, "SELECT * FROM nope")
    assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_optuna_writes_wait_out_a_locked_sqlite_study(tmp_path):
    """Through Optuna's own wrapping (``StorageInternalError`` from SQLAlchemy's
    ``OperationalError``): a user attribute and a tell, each under a lock held longer than
    SQLite's 5 s busy timeout there."""
    import optuna

    path = str(tmp_path / "optuna.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{path}")
    trial = study.ask()
    waits: list[str] = []
    outage = Outage("Optuna", limit=60.0)
    outage.on_wait = lambda o: waits.append(o.describe())
    for write in (
        lambda: trial.set_user_attr("x", 1),
        lambda: study.tell(trial.number, 1.0, skip_if_finished=True),
    ):
        lock = SqliteLock(path)
        threading.Timer(7.0, lock.release).start()
        outage.call(write)
        assert time.monotonic() - lock.taken >= 7.0
    assert len(waits) >= 2 and all("Optuna: database is locked" in w for w in waits), waits
    (frozen,) = study.get_trials()
    assert frozen.user_attrs == {"x": 1} and frozen.state.name == "COMPLETE"
    assert frozen.value == 1.0


def test_the_journal_survives_a_torn_line(tmp_path):
    file = metric_journal.path(str(tmp_path / "journal" / "t"), "run1")
    metric_journal.append(file, [(100, 1, {"loss": 0.5}), (200, 2, {"loss": 0.25})])
    with open(file, "a") as handle:
        handle.write('{"step": 300, "sta')  # a crash mid-append
    metric_journal.append(file, [(300, 3, {"loss": 0.125})])
    assert metric_journal.read(file) == [
        (100, 1, {"loss": 0.5}),
        (200, 2, {"loss": 0.25}),
        (300, 3, {"loss": 0.125}),
    ]
    assert metric_journal.runs(os.path.dirname(file)) == ["run1"]


def _check_record(state_dir: str, trials: int) -> None:
    """Every trial COMPLETE, every loss step (and the final loss) in MLflow exactly once, no
    journal left to replay."""
    record = record_checks.record_of(state_dir, "t")
    study = sweep_store.load_study(record)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * trials
    steps = record_checks.metric_rows(record, ("loss", "final_loss"))
    assert steps == {n: ALL_STEPS for n in range(trials)}
    record_checks.distinct_parameter_sets(study)
    assert metric_journal.runs(metric_journal.directory(state_dir, "t")) == []


class LockAtFirstCheckpoint:
    """A driver hook: at the first checkpoint, another process locks MLflow's SQLite file
    for ``seconds`` (released by a timer thread; the sweep goes on meanwhile; ``None``: until
    the test releases it)."""

    def __init__(self, path: str, seconds: float | None) -> None:
        self.path, self.seconds = path, seconds
        self.lock: SqliteLock | None = None

    def __call__(self, event) -> None:
        if event.kind == "checkpoint" and self.lock is None and event.step < STEPS:
            self.lock = SqliteLock(self.path)
            if self.seconds is not None:
                threading.Timer(self.seconds, self.lock.release).start()


def test_mlflow_sqlite_locked_for_a_minute_mid_sweep(ray_session, tmp_path):
    state_dir = str(tmp_path)
    spec = spec_.load_spec_dict(_spec_dict())
    hook = LockAtFirstCheckpoint(os.path.join(state_dir, "mlflow.db"), 60.0)
    out = io.StringIO()
    try:
        driver = Driver(
            spec, state_dir, workers=2, out=out, on_event=hook, chunk_seconds=ONE_LOG_CHUNK
        )
        summary = driver.run()
    finally:
        if hook.lock is not None:
            hook.lock.release()
    print(out.getvalue())
    assert hook.lock is not None and time.monotonic() - hook.lock.taken >= 60.0
    assert summary["states"] == {"COMPLETE": 3}
    text = out.getvalue()
    assert WAITING in text and "MLflow: database is locked" in text, text
    assert "tracking store available again" in text
    # reports were journaled while the file was locked, and replayed
    assert os.path.isdir(metric_journal.directory(state_dir, "t"))
    _check_record(state_dir, 3)


def _resume_subprocess(state_dir: str, temp_root: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TMPDIR": temp_root}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "rnnsweep.orchestrator.cli", "resume", "t"]
        + ["--state-dir", state_dir],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        start_new_session=True,
    )


def test_outage_past_the_limit_stops_cleanly_and_resume_replays_the_journal(
    ray_session, tmp_path
):
    """Locked at the first checkpoint, held past a 10 s limit: the driver stops (as on
    Ctrl-C), the reports it took meanwhile in the journal; ``rnnsweep resume`` while the lock
    is still held stops the same way (exit 130, the resume command, no traceback); released,
    ``resume`` replays the journal and completes the sweep."""
    state_dir = str(tmp_path)
    spec = spec_.load_spec_dict(_spec_dict(storage={"outage_limit": 10}))
    hook = LockAtFirstCheckpoint(os.path.join(state_dir, "mlflow.db"), seconds=None)
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    out = io.StringIO()
    try:
        with pytest.raises(StoreOutage, match=r"MLflow store was unavailable for \d+ s"):
            Driver(
                spec, state_dir, workers=2, out=out, on_event=hook, chunk_seconds=ONE_LOG_CHUNK
            ).run()
        assert WAITING in out.getvalue(), out.getvalue()
        record = record_checks.record_of(state_dir, "t")
        study = sweep_store.load_study(record)  # Optuna's own file is not locked
        left = {t.number: t for t in study.get_trials() if t.state.name == "RUNNING"}
        assert left, [t.state.name for t in study.get_trials()]
        journal_dir = metric_journal.directory(state_dir, "t")
        journaled = {
            run_id: {s for s, _, _ in metric_journal.read(metric_journal.path(journal_dir, run_id))}
            for run_id in metric_journal.runs(journal_dir)
        }
        # the reports taken while the file was locked, of trials left RUNNING (resumable)
        assert journaled and all(journaled.values()), journaled
        assert set(journaled) <= {t.user_attrs["mlflow_run_id"] for t in left.values()}
        resumed = _resume_subprocess(state_dir, temp_root)  # the lock still held
        assert resumed.returncode == 130, resumed.stdout
        assert WAITING in resumed.stdout, resumed.stdout
        assert f"rnnsweep resume t --state-dir {state_dir}" in resumed.stdout, resumed.stdout
        assert "Traceback" not in resumed.stdout, resumed.stdout
        hook.lock.release()
        # no checkpoint ran ahead of its metrics: MLflow and the journal hold every step
        # up to it
        client = record_checks._client(record["tracking_uri"])
        for number, trial in left.items():
            run_id = trial.user_attrs["mlflow_run_id"]
            logged = {m.step for m in client.get_metric_history(run_id, "loss")}
            recorded = logged | journaled.get(run_id, set())
            checkpoint = trial.user_attrs.get("checkpoint_step", 0)
            missing = [s for s in range(LOG_EVERY, checkpoint + 1, LOG_EVERY) if s not in recorded]
            assert not missing, (number, checkpoint, missing)
    finally:
        if hook.lock is not None:
            hook.lock.release()
        kill(ray_processes(temp_root))
    assert main(["resume", "t", "--state-dir", state_dir]) == 0
    _check_record(state_dir, 3)


def _restart(cluster: _PrivateCluster, port: int) -> None:
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={cluster.root}"
        " -c fsync=off"
    )
    started = cluster._run(
        "pg_ctl", "start", "-w", "-D", cluster.data, "-l", cluster.log, "-o", options
    )
    assert started.returncode == 0, started.stdout + started.stderr


class StopPostgresAtFirstCheckpoint:
    """A driver hook: at the first checkpoint, stop the PostgreSQL server (``pg_ctl stop -m
    fast``: sessions terminated) and start it again ``seconds`` later from a timer thread."""

    def __init__(self, cluster: _PrivateCluster, port: int, seconds: float) -> None:
        self.cluster, self.port, self.seconds = cluster, port, seconds
        self.timer: threading.Timer | None = None
        self.stopped_at = 0.0

    def __call__(self, event) -> None:
        if event.kind == "checkpoint" and self.timer is None and event.step < STEPS:
            stopped = self.cluster._run("pg_ctl", "stop", "-D", self.cluster.data, "-m", "fast")
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            self.stopped_at = time.monotonic()
            self.timer = threading.Timer(self.seconds, _restart, (self.cluster, self.port))
            self.timer.start()


def test_postgresql_stopped_and_restarted_under_optuna_and_mlflow(ray_session, tmp_path):
    import psycopg2

    bindir = _pg_bin()
    if bindir is None:
        _unavailable("no PostgreSQL binaries (/usr/lib/postgresql/*/bin) for a private cluster")
    cluster = _PrivateCluster(bindir)
    try:
        url = cluster.start()
        admin = psycopg2.connect(url)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute('CREATE DATABASE "optuna"')
            cursor.execute('CREATE DATABASE "mlflow"')
        admin.close()
        storage = {name: _sqlalchemy_url(url, name) for name in ("optuna", "mlflow")}
        spec = spec_.load_spec_dict(_spec_dict(storage=storage))
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        hook = StopPostgresAtFirstCheckpoint(cluster, port, 15)
        out = io.StringIO()
        driver = Driver(
            spec, str(tmp_path), workers=2, out=out, on_event=hook, chunk_seconds=ONE_LOG_CHUNK
        )
        summary = driver.run()
        print(out.getvalue())
        assert hook.timer is not None
        hook.timer.join()
        assert summary["states"] == {"COMPLETE": 3}
        text = out.getvalue()
        assert WAITING in text, text
        _check_record(str(tmp_path), 3)
    finally:
        cluster.started = True  # stop whatever state the fault left it in
        cluster.stop()
