"""cluster.yaml ships no password: the head generates PostgreSQL's at set-up, into ~/.pgpass
(mode 0600), and every storage URL of the cluster set-up leaves it to libpq."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import yaml

from rnnsweep.orchestrator.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
URL_PASSWORD = re.compile(r"://[^/@:\s'\"]+:[^@\s/'\"]+@")  # scheme://user:password@
SQL_PASSWORD = re.compile(r"PASSWORD\s+'[^'\\]", re.IGNORECASE)  # a literal, not sed's \1


def _config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _password_command() -> str:
    found = [c for c in _config()["head_setup_commands"] if ".pgpass" in c and "secrets" in c]
    assert len(found) == 1, found
    return found[0]


def _run(command: str, home: Path) -> str:
    """Run a set-up command in ``home``; the password line it left in ~/.pgpass."""
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""  # nothing for `ray up`'s log
    pgpass = home / ".pgpass"
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    lines = pgpass.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("127.0.0.1:5432:*:rnnsweep:"), lines
    return lines[0].rsplit(":", 1)[1]


def test_cluster_yaml_holds_no_password():
    text = (REPO / "cluster.yaml").read_text()
    config = _config()
    assert not URL_PASSWORD.search(text), URL_PASSWORD.search(text)
    assert not SQL_PASSWORD.search(text), SQL_PASSWORD.search(text)
    assert "rnnsweep:rnnsweep" not in text
    head_start = "\n".join(config["head_start_ray_commands"])
    backend = "--backend-store-uri 'postgresql+psycopg2://rnnsweep@127.0.0.1:5432/mlflow'"
    assert backend in head_start
    # the role's password is set from ~/.pgpass through a pipe, not a command-line argument
    setter = [c for c in config["head_setup_commands"] if "ALTER ROLE" in c]
    assert len(setter) == 1 and "~/.pgpass" in setter[0] and "| sudo -u postgres psql" in setter[0]
    example = load_spec(str(REPO / "examples" / "gpu_cluster.yaml"))
    assert example.storage.optuna == "postgresql://rnnsweep@127.0.0.1:5432/optuna"


def test_head_setup_generates_a_random_password_file_of_mode_0600(tmp_path):
    command = _password_command()
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    password = _run(command, first)
    assert len(password) >= 32 and re.fullmatch(r"[A-Za-z0-9_-]+", password)
    assert _run(command, first) == password  # `ray up` again keeps the cluster's password
    assert _run(command, second) != password  # another cluster gets another one
    # a ~/.pgpass left readable by others is closed again
    (first / ".pgpass").chmod(0o644)
    assert _run(command, first) == password
    # what the next command pipes into psql sets exactly that password
    setter = [c for c in _config()["head_setup_commands"] if "ALTER ROLE" in c][0]
    sql = subprocess.run(
        ["bash", "-c", setter.split("| sudo")[0]],
        env={"HOME": str(first), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert sql.stdout == f"ALTER ROLE rnnsweep PASSWORD '{password}';\n", sql
