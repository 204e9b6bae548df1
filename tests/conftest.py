"""Shared fixtures: one thread for torch, a lazy local Ray instance, PostgreSQL and Optuna storages.

* ``ray_session`` (session): a private local Ray instance with ``num_cpus=2`` and no dashboard,
  started the first time a test asks for it and shut down at the end of the session.
* ``postgres_url`` (session): ``$RNNSWEEP_TEST_POSTGRES_URL`` when set (``.ci/run`` sets it);
  otherwise a throwaway cluster started here from the PostgreSQL binaries on this machine
  (``/usr/lib/postgresql/*/bin``) and stopped at the end; otherwise the test is skipped, except
  under CI (``CI=true``), where a missing PostgreSQL is an error, not a skip.
* ``storage_url``: an empty Optuna storage URL, once on SQLite (a file in ``tmp_path``) and once
  on PostgreSQL (``postgresql+psycopg2://``, a database of its own on the ``postgres_url``
  server, dropped afterwards).

Ctrl-C reaches the commands the tests start: a test run started in the background by a shell
(``pytest &``, ``nohup``) inherits SIGINT ignored, and so would every process it starts, which
then never sees the SIGINT a test sends it (``ui``, ``status --watch``, a driver).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

POSTGRES_URL_ENV = "RNNSWEEP_TEST_POSTGRES_URL"

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # handled, so children get the default
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def torch_one_thread() -> Iterator[None]:
    """Small tensors on a 2-core machine: extra intra-op threads only oversubscribe."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """A private local Ray instance (2 CPUs, no dashboard) for the whole session.

    Started by the first test that asks for it; tests must not call ``ray.init`` or
    ``ray.shutdown`` themselves. ``ray.shutdown()`` at the end stops every process it started.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": always start a new instance, never attach to one found on the machine.
    context = ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield context
    finally:
        ray.shutdown()


def _unavailable(reason: str) -> None:
    """Skip on a developer machine; fail under CI, where a skip would hide a broken set-up."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin() -> str | None:
    def version(path: str) -> float:
        try:
            return float(path.split(os.sep)[-3])
        except ValueError:
            return 0.0

    found = [
        os.path.dirname(p)
        for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
        if os.path.exists(os.path.join(os.path.dirname(p), "pg_ctl"))
    ]
    return max(found, key=version) if found else None


class _PrivateCluster:
    """initdb + pg_ctl in a temporary directory; as the ``postgres`` user when run as root."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="rnnsweep-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")  # KeyError: no postgres user, handled by the caller
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.prefix, os.path.join(self.bindir, args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self) -> str:
        init = self._run(
            "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
        error = ""
        for _ in range(5):
            port = _free_port()
            options = (
                f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
                " -c fsync=off"
            )
            started = self._run(
                "pg_ctl", "start", "-w", "-D", self.data, "-l", self.log, "-o", options
            )
            if started.returncode == 0:
                self.started = True
                return f"postgresql://postgres@127.0.0.1:{port}/postgres"
            error = started.stdout + started.stderr
            if os.path.exists(self.log):
                with open(self.log) as log:
                    error += log.read()
        raise RuntimeError(f"pg_ctl start failed:\n{error}")

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server whose superuser ``postgres`` may create databases."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        _unavailable(
            f"no PostgreSQL: set {POSTGRES_URL_ENV} or install PostgreSQL "
            "(/usr/lib/postgresql/*/bin/initdb not found)"
        )
    try:
        cluster = _PrivateCluster(bindir)
    except KeyError:
        _unavailable("running as root and there is no 'postgres' user to run initdb as")
    try:
        url = cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        cluster.stop()
        _unavailable(f"could not start a private PostgreSQL cluster: {error}")
    try:
        yield url
    finally:
        cluster.stop()


def _sqlalchemy_url(url: str, database: str) -> str:
    """``url`` (a libpq URL) for ``database``, with the driver named for SQLAlchemy.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed; the
    project ships psycopg2, so the driver is spelled out.
    """
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{database}"))


@pytest.fixture
def fresh_postgres_database(postgres_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a new, empty database on the ``postgres_url`` server, dropped after."""
    import psycopg2

    name = f"rnnsweep_{uuid.uuid4().hex[:16]}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield _sqlalchemy_url(postgres_url, name)
        with admin.cursor() as cursor:
            # FORCE: connections still pooled by Optuna's SQLAlchemy engine must not block it.
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty Optuna storage URL; tests that take it run on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("fresh_postgres_database")
