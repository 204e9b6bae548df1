"""The distribution installs as ``rnnsweep.*``: nothing in a user's working directory shadows it.

Three ways in, each in fresh processes: every CLI command from a directory that holds its own
``tasks.py``, ``algorithms.py`` and ``orchestrator/``; a built wheel installed into a fresh
virtual environment (its dependencies shared from this environment through a path file, the
package itself only from the wheel), which runs ``gradcheck`` and a small sweep; and a sweep
submitted as a ``ray job`` whose working directory is that shadowing directory, so that Ray's
workers import the package with the user's files first on their path.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from ray_processes import kill, ray_processes

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHADOW = "shadowed: rnnsweep imported the user's own {}"
COMMANDS = ("gradcheck", "run", "launch", "resume", "status", "best", "ui", "report")


def _shadowing_dir(path: Path) -> Path:
    """A working directory whose own ``tasks``, ``algorithms``, ``orchestrator`` and
    ``benchmarks`` fail loudly when imported."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("tasks.py", "algorithms.py", "benchmarks.py"):
        (path / name).write_text(f"raise ImportError({SHADOW.format(name)!r})\n")
    (path / "orchestrator").mkdir(exist_ok=True)
    (path / "orchestrator" / "__init__.py").write_text(
        f"raise ImportError({SHADOW.format('orchestrator/')!r})\n"
    )
    return path


def _spec(path: Path, name: str) -> Path:
    spec = {
        "name": name,
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": 400,
        "trials": 2,
        "estimators": ["uoro"],
        "fixed": {"log_every": 100},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 200,
        "workers": 1,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> tuple[int, str]:
    environ = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env}
    environ.pop("RAY_ADDRESS", None)
    environ.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


def _trial_states(rnnsweep: Path, name: str, state_dir: Path, cwd: Path) -> list[str]:
    code, out = _run([rnnsweep, "status", name, "--state-dir", state_dir, "--json"], cwd)
    assert code == 0, out
    return [trial["state"] for trial in json.loads(out)["trials"]]


def test_every_command_works_beside_a_users_own_tasks_and_algorithms(tmp_path):
    work = _shadowing_dir(tmp_path / "work")
    rnnsweep = BIN / "rnnsweep"
    code, out = _run(
        [sys.executable, "-c", "import rnnsweep.algorithms, rnnsweep.tasks, rnnsweep.orchestrator"],
        work,
    )
    assert code == 0 and "shadowed" not in out, out
    # The user's own module stays importable under its own name, next to ours.
    code, out = _run([sys.executable, "-c", "import tasks"], work)
    assert code == 1 and SHADOW.format("tasks.py") in out
    for command in COMMANDS:
        code, out = _run([rnnsweep, command, "--help"], work)
        assert code == 0 and "examples" in out and "shadowed" not in out, (command, out)
    code, out = _run([sys.executable, "-m", "rnnsweep.orchestrator.cli", "--help"], work)
    assert code == 0 and "shadowed" not in out, out

    code, out = _run(
        [rnnsweep, "gradcheck", "--steps", "5", "--samples", "8", "--hidden", "4"]
        + ["--estimators", "rtrl,uoro"],
        work,
    )
    assert code == 0 and "all claims hold" in out, out
    summary = work / "summary.json"
    code, out = _run(
        [rnnsweep, "run", "--task", "add", "--estimator", "uoro", "--hidden", "4"]
        + ["--steps", "200", "--set", "log_every=100", "--no-mlflow", "--summary-json", summary],
        work,
    )
    assert code == 0, out
    assert json.loads(summary.read_text())["steps"] == 200
    spec = _spec(work / "spec.yaml", "shadow")
    code, out = _run([rnnsweep, "launch", spec, "--dry-run"], work)
    assert code == 0 and "shadowed" not in out, out
    code, out = _run([rnnsweep, "status", "nosuch", "--state-dir", work / "state"], work)
    assert code == 2 and "nosuch" in out and "Traceback" not in out, out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _site_dirs() -> list[str]:
    """This environment's package directories (the dependencies a fresh venv borrows)."""
    dirs = [p for p in sys.path if "site-packages" in p and os.path.isdir(p)]
    purelib = sysconfig.get_paths()["purelib"]
    return list(dict.fromkeys([purelib, *dirs]))


def test_a_built_wheel_in_a_fresh_venv_runs_gradcheck_and_a_sweep(tmp_path):
    # Built from a copy of the tracked files: no build/ left in the checkout, none reused.
    source = tmp_path / "source"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    code, out = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source], tmp_path
    )
    assert code == 0, out
    (wheel,) = dist.glob("rnnsweep-*.whl")
    venv = tmp_path / "venv"
    code, out = _run([sys.executable, "-m", "venv", venv], tmp_path)
    assert code == 0, out
    python = venv / "bin" / "python"
    code, purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
    )
    # A path file adds directories to sys.path without running their own path files: the
    # dependencies come from here, the editable install of this checkout does not.
    Path(purelib.strip(), "_rnnsweep_test_deps.pth").write_text("\n".join(_site_dirs()) + "\n")
    code, out = _run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", wheel], tmp_path
    )
    assert code == 0, out

    work = _shadowing_dir(tmp_path / "work")
    code, out = _run(
        [
            python,
            "-c",
            "import rnnsweep.algorithms as a, rnnsweep.orchestrator as o; "
            "print(a.__path__[0]); print(o.__path__[0])",
        ],
        work,
    )
    assert code == 0, out
    for line in out.split():
        assert line.startswith(str(venv)), out  # from the wheel, not from this checkout
    rnnsweep = venv / "bin" / "rnnsweep"
    code, out = _run(
        [rnnsweep, "gradcheck", "--steps", "5", "--samples", "8", "--hidden", "4"]
        + ["--estimators", "rtrl,uoro"],
        work,
    )
    assert code == 0 and "all claims hold" in out, out
    temp_root = tempfile.mkdtemp(prefix="rw", dir="/tmp")
    try:
        state = tmp_path / "state"
        code, out = _run(
            [rnnsweep, "launch", _spec(work / "spec.yaml", "wheel"), "--state-dir", state],
            work,
            RAY_TMPDIR=temp_root,
        )
        assert code == 0, out
        assert _trial_states(rnnsweep, "wheel", state, work) == ["COMPLETE", "COMPLETE"]
    finally:
        kill(ray_processes(temp_root))


def _wait_for_dashboard(
    port: int, token: str, head: subprocess.Popen, seconds: float = 180
) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{head.stdout.read()}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(1.0)
    pytest.fail("the Ray dashboard (job API) never answered")


def test_a_sweep_submitted_as_a_ray_job_with_a_working_dir(tmp_path):
    work = _shadowing_dir(tmp_path / "work")
    spec = _spec(work / "spec.yaml", "job")
    state = tmp_path / "state"
    temp_root = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    dashboard = _free_port()
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    # Ray's token authentication stays on, as on a real cluster, with a token of this test's.
    token = secrets.token_hex(32)
    token_path = tmp_path / "auth_token"
    token_path.write_text(token)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **auth}
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)
    head = subprocess.Popen(
        ray_cli
        + ["start", "--head", "--block", "--port", str(_free_port()), "--num-cpus", "2"]
        + ["--num-gpus", "0", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
        + ["--dashboard-port", str(dashboard), "--temp-dir", temp_root, "--disable-usage-stats"]
        # Not the agent's fixed default port, which another Ray on this machine may hold.
        + ["--dashboard-agent-listen-port", str(_free_port())],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_dashboard(dashboard, token, head)
        # The entrypoint runs in the unpacked working dir, with the user's files first on the
        # path of the job's driver and of every worker it starts.
        submit = (
            ray_cli
            + ["job", "submit", "--address", f"http://127.0.0.1:{dashboard}"]
            + ["--working-dir", str(work), "--"]
            + [str(BIN / "rnnsweep"), "launch", "spec.yaml", "--state-dir", str(state)]
        )
        deadline = time.monotonic() + 120
        while True:
            code, out = _run(submit, tmp_path, timeout=400, **auth)
            # The dashboard answers before the node's job agent has registered with it.
            if "No available agent" not in out or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        assert code == 0 and "succeeded" in out, out
        assert _trial_states(BIN / "rnnsweep", "job", state, work) == ["COMPLETE", "COMPLETE"]
        assert spec.exists()
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        kill(ray_processes(temp_root))
