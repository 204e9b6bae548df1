"""``rnnsweep ui``: the MLflow UI on a sweep's runs table, bound to 127.0.0.1 only.

A local store (SQLite, PostgreSQL) gets an ``mlflow server`` started as a subprocess in its own
process group, as ``mlflow server --app-name rnnsweep`` (``mlflow_ui_app``); the command tags
the sweep's experiment as model training with its view (``ui_view.mark``), waits until the
server answers HTTP, prints the address of the opener page (which sets the columns and expands
the parent run in the browser, then goes to the classic runs table) and keeps it running until
Ctrl-C, then stops the whole process group. A remote ``http(s)://`` tracking server is not
started: the address of its classic runs table is printed (``workflowType=machine_learning``:
MLflow 3 otherwise opens its GenAI pages).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rnnsweep.orchestrator import sweep_store, tracking, ui_view
from rnnsweep.orchestrator.state_dir import resolve as resolve_state_dir
from rnnsweep.orchestrator.url_secrets import connectable, redact, without_password

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
PORT_TRIES = 50
EXIT_FAILED, EXIT_USAGE = 1, 2


class ServerError(Exception):
    """The MLflow server did not come up; the message says why."""


def ui_command(args) -> int:
    if args.name:
        state_dir, record = sweep_store.read_record(args.state_dir, args.name)
        uri = record["tracking_uri"]
        experiment = record.get("mlflow_experiment_id") or _experiment_id(uri, args.name)
        page = ui_view.runs_page(experiment)
    else:
        state_dir = resolve_state_dir(args.state_dir)
        uri = tracking.default_tracking_uri(state_dir)
        page = "#/experiments"
    if uri.startswith(("http://", "https://")):
        print(f"{redact(uri).rstrip('/')}/{page}")
        print(f"(tracking server {redact(uri)}; nothing started here)", file=sys.stderr)
        return 0
    _check_store(uri)
    opener = _opener_installed()
    if args.name:
        ui_view.mark(tracking.client(uri), experiment, record)
        if opener:
            page = f"{ui_view.OPENER.lstrip('/')}{experiment}"
    port = choose_port(args.port)
    log_path = os.path.join(state_dir, "logs", f"mlflow-ui-{port}.log")
    base = f"http://{HOST}:{port}"
    print(
        f"starting the MLflow UI at {base} on {redact(uri)} (log {log_path}); waiting for it to "
        "answer, usually 15-30 s ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        proc = start_server(
            uri, port, log_path, os.path.join(state_dir, "mlartifacts"), app=opener
        )
    except OSError as error:
        raise ValueError(f"could not start `mlflow server`: {error}") from None
    try:
        with _stop_signals():
            try:
                wait_ready(proc, base, args.timeout, log_path)
            except ServerError as error:
                print(f"rnnsweep ui: error: {error}", file=sys.stderr)
                return EXIT_USAGE
            print(f"{base}/{page}", flush=True)
            if args.name and opener:
                print(
                    f"(it opens {base}/{ui_view.runs_page(experiment)} with the sweep's columns "
                    "and its trials shown under the parent run)",
                    file=sys.stderr,
                )
            print(f"MLflow UI ready (server pid {proc.pid}); Ctrl-C to stop", file=sys.stderr)
            while proc.poll() is None:
                time.sleep(0.5)
            print(
                f"rnnsweep ui: the MLflow server exited ({proc.returncode}):\n{log_tail(log_path)}",
                file=sys.stderr,
            )
            return EXIT_FAILED
    except KeyboardInterrupt:
        print("\nstopping the MLflow UI", file=sys.stderr)
        return 0
    finally:
        stop_server(proc)


def server_command(uri: str, port: int, artifacts: str, app: bool = False) -> list[str]:
    """``mlflow server`` on ``uri``, reachable from this machine only; ``app``: with rnnsweep's
    opener page (``mlflow_ui_app``)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--artifacts-destination",
        artifacts,
        *(["--app-name", "rnnsweep"] if app else []),
    ]


def start_server(
    uri: str, port: int, log_path: str, artifacts: str, app: bool = False
) -> subprocess.Popen:
    """Start the server in a new session (its own process group), output to ``log_path``."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    # Job execution (GenAI evaluation workers) is not needed to browse runs; it would start
    # several more processes and slow the start-up down.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # a password goes to the server's environment, not its command line (``ps`` shows that)
    uri, password = without_password(connectable(uri))
    if password is not None:
        env["PGPASSWORD"] = password
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            server_command(uri, port, artifacts, app),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def wait_ready(
    proc: subprocess.Popen, base: str, timeout: float, log_path: str, poll: float = 0.5
) -> None:
    """Return once ``base``/health answers 200; ``ServerError`` if the server dies or is late."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    tty = sys.stderr.isatty()
    while True:
        if proc.poll() is not None:
            raise ServerError(
                f"the MLflow server exited during start-up (status {proc.returncode}); "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if _answers(f"{base}/health"):
            if tty:
                print(file=sys.stderr)
            return
        if time.monotonic() > deadline:
            raise ServerError(
                f"the MLflow server did not answer at {base} within {timeout:g} s; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if tty:
            print(f"\r  waiting {time.monotonic() - started:4.0f} s", end="", file=sys.stderr)
        time.sleep(poll)


def stop_server(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the server's whole process group; kill what is left after ``grace`` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(proc):
        time.sleep(0.1)
    if _group_alive(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def choose_port(requested: int | None) -> int:
    """``requested`` if free (else ``ValueError``), or the first free one from 5000 on."""
    if requested is not None:
        if not port_free(requested):
            raise ValueError(
                f"port {requested} on {HOST} is in use (another `rnnsweep ui`?); "
                "choose another with --port"
            )
        return requested
    for port in range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES):
        if port_free(port):
            if port != DEFAULT_PORT:
                print(f"port {DEFAULT_PORT} is in use; using {port}", file=sys.stderr)
            return port
    raise ValueError(
        f"ports {DEFAULT_PORT}-{DEFAULT_PORT + PORT_TRIES - 1} on {HOST} are all in use; "
        "choose one with --port"
    )


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as handle:
            text = handle.read().splitlines()
    except OSError:
        return "  (no log)"
    return "\n".join(f"  {line}" for line in text[-lines:]) or "  (empty log)"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader if it exited, so that it does not linger as a zombie
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not os.path.exists(path):
            raise ValueError(
                f"no MLflow store at {path}: nothing recorded there yet (launch a sweep, or "
                "pass the --state-dir it used)"
            )


def _opener_installed() -> bool:
    """Whether ``mlflow server --app-name rnnsweep`` can find this package's app (an install
    made before the entry point existed cannot: then the runs table is opened directly)."""
    from mlflow.utils.plugins import get_entry_points

    return any(app.name == "rnnsweep" for app in get_entry_points("mlflow.app"))


def _experiment_id(uri: str, name: str) -> str:
    from rnnsweep.orchestrator.tracking import client

    experiment = client(uri).get_experiment_by_name(name)
    if experiment is None:
        raise ValueError(f"sweep {name!r} has no MLflow experiment in {uri}")
    return experiment.experiment_id


@contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt (main thread only), so the server stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous: dict[int, Callable | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
