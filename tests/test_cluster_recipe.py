"""The README's cluster recipe, end to end on this machine: a sweep submitted with `ray job
submit --working-dir` to a real 2-node Ray cluster, its study in PostgreSQL and its runs on an
`mlflow server` backed by PostgreSQL.

- Ray: a ``ray.cluster_utils.Cluster`` (a head and a worker node, each a real raylet with 1
  CPU, the dashboard and job API on the head) held by a subprocess (``HOLDER``) with a private
  ``RAY_TMPDIR``, loopback only, ``RAY_AUTH_MODE`` unset for it, its nodes and the `ray job`
  CLI alike. That subprocess also polls the job (``JobSubmissionClient``) and reads where the
  learners ran from Ray's state API (``ray.util.state``, through the dashboard), so that no
  Ray client runs in the test process.
- MLflow: cluster.yaml's own ``mlflow server`` command (``head_start_ray_commands``), run with
  ``bash`` in a throwaway ``$HOME``, with only its port, backend database and ``mlflow``
  executable changed.
- The job: ``ray job submit --working-dir <folder holding the spec> ... -- rnnsweep launch
  spec.yaml --state-dir <absolute>`` (the job's cwd is a throwaway copy of that folder).

"Ran on both nodes" is read from Ray's GCS: the sweep's two ``LearnerHost`` actors (workers 2:
the driver creates both up front and hands each a trial before it waits for any result, and a
1-CPU actor fits one per 1-CPU node) sit on the two nodes, and ``LearnerHost.advance`` calls
(the learners' stepping) finished on each node. Task events are reported every 100 ms here
(``RAY_task_events_report_interval_ms``, default 1 s), so that a fast machine loses none.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
import record_checks  # noqa: E402
from ray_processes import kill, ray_processes, wait_until_gone  # noqa: E402

from rnnsweep.orchestrator import sweep_store  # noqa: E402
from rnnsweep.orchestrator.ui_command import _answers  # noqa: E402  (its server-up probe)

REPO = Path(__file__).resolve().parent.parent
NAME = "cluster-recipe"
STEPS, LOG_EVERY = 1200, 100

HOLDER = r"""
import json, os, sys, time, urllib.request
from ray.cluster_utils import Cluster

dashboard_port, agent_port = int(sys.argv[1]), int(sys.argv[2])
url = f"http://127.0.0.1:{dashboard_port}"
os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"), exist_ok=True)
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": True,
    "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
    "dashboard_agent_listen_port": agent_port})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
cluster.wait_for_nodes()
deadline = time.monotonic() + 120
while True:  # the job API answers once the dashboard is up
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=2) as answer:
            if answer.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("the dashboard never answered at " + url)
    time.sleep(0.5)
print(json.dumps({"address": cluster.address, "url": url}), flush=True)

for line in sys.stdin:
    command = line.split()
    if not command or command[0] != "wait":
        break
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors, list_nodes, list_tasks

    client = JobSubmissionClient(url)
    deadline = time.monotonic() + float(command[2])
    while True:
        status = client.get_job_status(command[1])
        if status.is_terminal() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    nodes = [n.node_id for n in list_nodes(address=url) if n.state == "ALIVE"]
    actors = list_actors(address=url, filters=[("class_name", "=", "LearnerHost")],
                         raise_on_missing_output=False)
    tasks = list_tasks(address=url, filters=[("name", "=", "LearnerHost.advance")],
                       limit=10000, raise_on_missing_output=False)
    print(json.dumps({
        "status": str(status.value), "logs": client.get_job_logs(command[1]), "nodes": nodes,
        "actors": [a.node_id for a in actors],
        "advanced_on": sorted({t.node_id for t in tasks if t.state == "FINISHED"}),
    }), flush=True)
cluster.shutdown()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_env(temp_root: str) -> dict[str, str]:
    """The environment of the cluster, its job and the `ray job` CLI: a private temp dir,
    loopback only, one auth mode for all (unset: the cluster runs without token auth)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS"))}
    env.update(
        RAY_TMPDIR=temp_root,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_task_events_report_interval_ms="100",
    )
    return env


@pytest.fixture
def mlflow_database(postgres_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a new, empty database for the MLflow server, dropped after."""
    import psycopg2

    name = f"rnnsweep_mlflow_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(postgres_url)
        yield urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def _mlflow_command(port: int, backend: str) -> str:
    """cluster.yaml's command that starts the head's MLflow server, on ``port`` and
    ``backend``, run by this Python's ``mlflow``."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    found = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(found) == 1, found
    command = found[0]
    for old, new in (
        ("--port 5000", f"--port {port}"),
        ("'postgresql+psycopg2://rnnsweep@127.0.0.1:5432/mlflow'", shlex.quote(backend)),
        ("nohup mlflow server", f"nohup {shlex.quote(sys.executable)} -m mlflow server"),
    ):
        assert old in command, (old, command)
        command = command.replace(old, new)
    return command


def _lines(stream) -> queue.Queue:
    """The lines of ``stream``, read in a thread: ``get(timeout=...)`` never hangs the test."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def _next_json(lines: queue.Queue, seconds: float, log: Path) -> dict:
    try:
        line = lines.get(timeout=seconds)
    except queue.Empty:
        line = ""
    assert line, f"no answer from the cluster's holder; its log:\n{log.read_text()[-3000:]}"
    return json.loads(line)


def _stop_group(pid: int) -> None:
    """SIGTERM, then SIGKILL after 10 s, to the process group that ``pid`` leads."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _spec(optuna_url: str, tracking_uri: str) -> dict:
    return {
        "name": NAME,
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": STEPS,
        "trials": 4,
        "estimators": ["uoro"],
        "fixed": {"log_every": LOG_EVERY},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": 400,
        "max_retries": 1,
        "workers": 2,
        "resources": {"cpus": 1},
        "storage": {"state_dir": None, "optuna": optuna_url, "mlflow": tracking_uri},
    }


@pytest.mark.timeout(900)  # above the sum of its own deadlines: cleanup runs
def test_sweep_submitted_as_a_ray_job_to_a_two_node_cluster(
    tmp_path, fresh_postgres_database, mlflow_database
):
    temp_root = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's socket paths
    env = _ray_env(temp_root)
    home = tmp_path / "home"
    (home / "rnnsweep-state").mkdir(parents=True)  # made by cluster.yaml's setup_commands
    t0 = time.monotonic()

    def phase(what: str) -> None:  # in the captured output of a failure: where time went
        print(f"{time.monotonic() - t0:6.1f} s  {what}", flush=True)

    mlflow_port = _free_port()
    holder_log = tmp_path / "cluster.log"
    holder = None
    try:
        with open(holder_log, "w") as log:
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(_free_port()), str(_free_port())],
                cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True, start_new_session=True,
            )
        answers = _lines(holder.stdout)
        # the tracking server starts meanwhile, as the head's start commands start it
        started = subprocess.run(
            ["bash", "-c", _mlflow_command(mlflow_port, mlflow_database)],
            env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=60,
        )
        assert started.returncode == 0, started.stderr
        mlflow_pid = int((home / "mlflow.pid").read_text())
        mlflow_log = home / "rnnsweep-state" / "mlflow.log"

        ready = _next_json(answers, 240, holder_log)
        phase(f"cluster up: {ready}")
        tracking_uri = f"http://127.0.0.1:{mlflow_port}"
        deadline = time.monotonic() + 180
        while not _answers(f"{tracking_uri}/health"):
            assert os.path.exists(f"/proc/{mlflow_pid}"), mlflow_log.read_text()[-3000:]
            assert time.monotonic() < deadline, mlflow_log.read_text()[-3000:]
            time.sleep(0.5)
        phase(f"tracking server answers at {tracking_uri}")

        # the folder shipped as the job's working directory: the spec alone
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        optuna_url = fresh_postgres_database.replace("postgresql+psycopg2://", "postgresql://")
        (job_dir / "spec.yaml").write_text(yaml.safe_dump(_spec(optuna_url, tracking_uri)))
        state = tmp_path / "state"  # absolute: the job's cwd is a throwaway copy of job_dir
        rnnsweep = os.path.join(os.path.dirname(sys.executable), "rnnsweep")
        deadline = time.monotonic() + 120
        while True:
            submission = f"recipe-{uuid.uuid4().hex[:8]}"
            submitted = subprocess.run(
                [sys.executable, "-m", "ray.scripts.scripts", "job", "submit",
                 "--address", ready["url"], "--working-dir", str(job_dir),
                 "--submission-id", submission, "--no-wait", "--",
                 rnnsweep, "launch", "spec.yaml", "--state-dir", str(state)],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
            )
            said = submitted.stdout + submitted.stderr
            # the dashboard may answer before the head's job agent has registered with it
            if "No available agent" not in said or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        assert submitted.returncode == 0, said
        phase(f"job {submission} submitted")

        holder.stdin.write(f"wait {submission} 240\n")
        holder.stdin.flush()
        job = _next_json(answers, 300, holder_log)
        phase(f"job {job['status']}")
        assert job["status"] == "SUCCEEDED", f"job {job['status']}:\n{job['logs'][-6000:]}"

        # Optuna (PostgreSQL): every trial COMPLETE
        record = record_checks.record_of(str(state), NAME)
        assert record["tracking_uri"] == tracking_uri
        study = sweep_store.load_study(record)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
        record_checks.distinct_parameter_sets(study)
        # MLflow, asked through the tracking server: each trial's child run FINISHED, with
        # each metric step once
        runs = record_checks.child_runs(record)
        assert {n: r.info.status for n, r in runs.items()} == {n: "FINISHED" for n in range(4)}
        logged = record_checks.metric_rows(record)
        assert logged == {n: list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)) for n in range(4)}
        # checkpoints reached the absolute state directory on the head, through the driver
        for n in range(4):
            assert os.path.getsize(sweep_store.checkpoint_path(str(state), NAME, n)) > 0
        # Ray: two live nodes, one learner actor on each, learner steps finished on both
        assert len(job["nodes"]) == 2, job["nodes"]
        assert sorted(job["actors"]) == sorted(job["nodes"]), job
        assert job["advanced_on"] == sorted(job["nodes"]), job
        phase("record checked")
    finally:
        if holder is not None:
            try:
                holder.stdin.close()  # the holder shuts the cluster down
                holder.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(holder.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill(ray_processes(temp_root))
        left = wait_until_gone(temp_root, 20)
        if (home / "mlflow.pid").exists():
            _stop_group(int((home / "mlflow.pid").read_text()))
        shutil.rmtree(temp_root, ignore_errors=True)
        phase("cleaned up")
    assert not left, f"Ray processes left: {left}"


def _words(command: str) -> list[str]:
    """A shell command's words (continuation lines joined, quotes removed, ``$HOME`` kept)."""
    return shlex.split(command.replace("\\\n", " "), comments=True)


def _submit_commands(text: str) -> list[list[str]]:
    """The words of every ``ray job submit`` command in ``text`` (shell lines, maybe behind
    ``# `` of a YAML comment)."""
    lines = [re.sub(r"^#\s?", "", line).strip() for line in text.splitlines()]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [_words(line) for line in joined.splitlines() if line.startswith("ray job submit")]


def test_readme_and_example_commands_match_cluster_yaml():
    """The README's cluster commands are cluster.yaml's: the same `mlflow server` arguments,
    a job entrypoint and state directory that cluster.yaml makes on the head, given as the
    head's absolute paths; the example spec's stores are the head's services."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Sweeps on a cluster") :]
    section = section[: section.index("\n## ")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)

    started = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(started) == 1, started
    words = _words(started[0])
    server = words[words.index("mlflow") : words.index(">")]
    shown = [_words(b) for b in blocks if "mlflow server" in b]
    assert len(shown) == 1, shown
    assert shown[0] == ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", *server]
    assert server[server.index("--host") + 1] == "127.0.0.1"

    home = f"/home/{config['auth']['ssh_user']}"
    setup = "\n".join(config["setup_commands"])
    assert "python3 -m venv ~/venv" in setup and "mkdir -p ~/rnnsweep-state" in setup
    example_text = (REPO / "examples" / "gpu_cluster.yaml").read_text()
    submits = [
        *_submit_commands(section),
        *_submit_commands(example_text),
        *_submit_commands((REPO / "cluster.yaml").read_text()),
    ]
    # launch and resume in the README, launch in the example and in cluster.yaml's header
    assert len(submits) == 4, submits
    for command in submits:
        assert command[command.index("--address") + 1] == "http://127.0.0.1:8265", command
        assert command[command.index("--working-dir") + 1] == ".", command
        entry = command[command.index("--") + 1 :]
        assert entry[0] == f"{home}/venv/bin/rnnsweep", command
        assert entry[entry.index("--state-dir") + 1] == f"{home}/rnnsweep-state", command
        assert not any(word.startswith("~") for word in entry), command

    example = yaml.safe_load(example_text)
    port = server[server.index("--port") + 1]
    assert example["storage"]["mlflow"] == f"http://127.0.0.1:{port}"
    database = example["storage"]["optuna"].rsplit("/", 1)[1]
    assert f"for db in {database} mlflow;" in "\n".join(config["head_setup_commands"])
    assert server[server.index("--backend-store-uri") + 1].endswith("@127.0.0.1:5432/mlflow")
