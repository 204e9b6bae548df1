"""A PostgreSQL password in a sweep's storage URLs is never written or printed, and the sweep
still works from its redacted record when the password comes from PGPASSWORD or ~/.pgpass.

The server is a private PostgreSQL cluster that trusts local (Unix socket) connections, for
the superuser that creates the role, and requires a password (scram-sha-256) on 127.0.0.1, where
the sweep connects: a wrong or missing password really fails.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

import pytest
import record_checks
import yaml
from conftest import _pg_bin, _PrivateCluster, _unavailable
from ray_processes import kill, ray_processes
from served_process import ServedProcess

from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.url_secrets import connectable

ROLE = "rs_secret"


class _PasswordCluster(_PrivateCluster):
    """``_PrivateCluster`` with password authentication on TCP, trust on its Unix socket."""

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        if args[0] == "initdb":
            i = args.index("-A")
            args = (*args[:i], "--auth-local=trust", "--auth-host=scram-sha-256", *args[i + 2 :])
        return super()._run(*args)

    def admin(self):
        import psycopg2

        port = urlsplit(self.url).port
        connection = psycopg2.connect(host=self.root, port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        return connection


@pytest.fixture(scope="module")
def password_server():
    """``(host:port, password)`` of a role that owns databases ``optuna`` and ``mlflow`` on a
    private cluster that requires its password."""
    bindir = _pg_bin()
    if bindir is None:  # a skip here, an error under CI (which installs PostgreSQL)
        _unavailable("no PostgreSQL binaries (/usr/lib/postgresql/*/bin) for a password cluster")
    try:
        cluster = _PasswordCluster(bindir)
    except KeyError:
        _unavailable("running as root and there is no 'postgres' user to run initdb as")
    try:
        cluster.url = cluster.start()
        password = f"S3cr3t-{secrets.token_hex(12)}"
        admin = cluster.admin()
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD %s", (password,))
            for db in ("optuna", "mlflow"):
                cursor.execute(f"CREATE DATABASE {db} OWNER {ROLE}")
        admin.close()
        parts = urlsplit(cluster.url)
        yield f"{parts.hostname}:{parts.port}", password
    finally:
        cluster.stop()


def _env(home: str, password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "RAY_ADDRESS"))}
    env.update(HOME=home, RAY_USAGE_STATS_ENABLED="0")
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _cli(args: list[str], env: dict[str, str], cwd: str, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "rnnsweep.orchestrator.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def test_password_never_written_and_taken_from_the_environment(
    password_server, ray_session, tmp_path, monkeypatch, capsys
):
    import psycopg2

    hostport, password = password_server
    host, port = hostport.split(":")
    home, work, state = (tmp_path / d for d in ("home", "work", "state"))
    for folder in (home, work):
        folder.mkdir()
    # The cluster really asks for the password: none (and no ~/.pgpass) or a wrong one fails.
    monkeypatch.setenv("HOME", str(home))
    for k in [k for k in os.environ if k.startswith("PG")]:
        monkeypatch.delenv(k)
    for wrong in (None, "wrong"):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host=host, port=port, user=ROLE, dbname="optuna", password=wrong)

    def url(db: str, secret: str) -> str:
        return f"postgresql+psycopg2://{ROLE}:{secret}@{hostport}/{db}"

    spec = {
        "name": "sec",
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": 600,
        "trials": 2,
        "workers": 1,
        "estimators": ["uoro"],
        "fixed": {"log_every": 100},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 300,
        "storage": {"optuna": url("optuna", password), "mlflow": url("mlflow", password)},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    outputs: list[str] = []

    # launch (its own process and Ray): the password only in the spec's URLs
    temp_root = tempfile.mkdtemp(prefix="rsec", dir="/tmp")
    try:
        launched = _cli(
            ["launch", str(spec_path), "--state-dir", str(state)],
            {**_env(str(home)), "RAY_TMPDIR": temp_root},
            str(work),
            timeout=400,
        )
    finally:
        kill(ray_processes(temp_root))
    outputs += [launched.stdout, launched.stderr]
    assert launched.returncode == 0, launched.stderr

    record = sweep_store.read_record(str(state), "sec")[1]
    redacted = f"{ROLE}:***@{hostport}"
    assert redacted in record["optuna_storage"] and redacted in record["tracking_uri"]
    assert redacted in record["spec"]["storage"]["optuna"]

    # status, status --json, best, report: the password from PGPASSWORD only
    with_env = _env(str(home), password)
    for args in (["status"], ["status", "--json"], ["best"], ["report"]):
        done = _cli([*args, "sec", "--state-dir", str(state)], with_env, str(work))
        outputs += [done.stdout, done.stderr]
        assert done.returncode == 0, (args, done.stderr)
        if args == ["status", "--json"]:
            status = json.loads(done.stdout)
            assert redacted in status["storage"] and redacted in status["tracking_uri"]
            assert [t["state"] for t in status["trials"]] == ["COMPLETE", "COMPLETE"]

    # ui: the MLflow server it starts opens the store with PGPASSWORD (its command line has no
    # password; it prints the runs table's address once it answers)
    ui = ServedProcess(
        [sys.executable, "-m", "rnnsweep.orchestrator.cli", "ui", "sec"]
        + ["--state-dir", str(state), "--timeout", "240"],
        env=with_env,
        cwd=str(work),
    )
    try:
        address = ui.next_line(300, "address")
        server_lines = [_cmdline(pid) for pid in _children(ui.pid)]
        code = ui.stop(signal.SIGTERM, 120)  # the ui stops its server and exits 0
    finally:
        ui.close()
    out, err = "".join(ui.lines), ui.stderr()
    outputs += [out, err, *server_lines]
    assert address.startswith("http://127.0.0.1:") and "/rnnsweep/open/" in address, err
    assert any("--backend-store-uri" in line for line in server_lines), server_lines
    assert code == 0, err

    # ~/.pgpass (mode 0600, as libpq requires) instead of PGPASSWORD
    pgpass = home / ".pgpass"
    pgpass.write_text(f"{host}:{port}:*:{ROLE}:{password}\n")
    pgpass.chmod(0o600)
    done = _cli(["status", "sec", "--state-dir", str(state)], _env(str(home)), str(work))
    outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("COMPLETE") == 2
    pgpass.unlink()

    # no password anywhere: one line naming the store, exit 2, no traceback
    done = _cli(["status", "sec", "--state-dir", str(state)], _env(str(home)), str(work))
    outputs += [done.stdout, done.stderr]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert f"cannot open the Optuna study at postgresql+psycopg2://{redacted}" in done.stderr
    assert "password" in done.stderr

    # resume (in this process, on the shared Ray, which never had the password in memory):
    # the password from PGPASSWORD only
    monkeypatch.setenv("PGPASSWORD", password)
    assert main(["resume", "sec", "--state-dir", str(state)]) == 0
    # a launch with a wrong password fails with one line and neither password in it
    wrong = f"Wr0ng-{secrets.token_hex(8)}"
    monkeypatch.delenv("PGPASSWORD")
    bad = {**spec, "name": "sec2", "storage": {"optuna": url("optuna", wrong)}}
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    assert main(["launch", str(bad_path), "--state-dir", str(state)]) == 2
    captured = capsys.readouterr()
    outputs += [captured.out, captured.err]
    assert "password authentication failed" in captured.err, captured.err
    assert wrong not in captured.err
    assert not os.path.exists(sweep_store.record_path(str(state), "sec2"))

    monkeypatch.setenv("PGPASSWORD", password)
    # record_checks' MLflow client takes the URI as it is: the password-less form
    readable = {**record, "tracking_uri": connectable(record["tracking_uri"])}
    searched = record_checks.secret_free(password, [state, work], readable, outputs)
    assert searched > 20  # files, MLflow tags and params of parent and children, outputs
    record_checks.metric_rows(readable)
    record_checks.distinct_parameter_sets(sweep_store.load_study(record))
