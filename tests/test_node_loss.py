"""A Ray node lost mid-sweep (issue 13 item 5): on a real 2-node cluster (``ray.cluster_utils``
Cluster: head and worker, 1 CPU each, real raylets), a 4-trial sweep runs on both nodes; the
worker is killed (``remove_node(allow_graceful=False)``) while one of its trials holds a
checkpoint. The sweep must end with every trial COMPLETE: the pool shrinks to the head
("pool 2→1: node … lost"), the lost trial continues there from its checkpoint (its
``ray_node_id`` tag updated to the head's), and no metric step is lost or logged twice.

The cluster lives in its own process (the test process never imports Ray's node code nor
connects to a cluster, so the session's ``ray_session`` instance is never in the way) and the
driver in another (``RAY_ADDRESS`` = the cluster's GCS). The driver pauses at the moment to kill
(an ``on_event`` hook waits for a file) so that no machine speed can finish the trial first.
Every Ray process of the cluster is killed by its temp dir at the end, pass or fail.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ray_processes import kill, ray_processes, wait_until_gone

from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.cli import main

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults"))
import record_checks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, LOG_EVERY, CHECKPOINT_EVERY = 3000, 50, 100

# The cluster's process: starts head + worker, prints their ids, then obeys stdin lines
# ("remove": SIGKILL the worker node; "stop": shut the cluster down).
CLUSTER = r"""
import json, socket, sys
from ray.cluster_utils import Cluster

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

cluster = Cluster(initialize_head=True, head_node_args=dict(
    num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False,
    dashboard_agent_listen_port=free_port()))
worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                  "worker": worker.node_id}), flush=True)
for line in sys.stdin:
    if line.strip() == "remove":
        cluster.remove_node(worker, allow_graceful=False)
        print("removed", flush=True)
    elif line.strip() == "stop":
        break
cluster.shutdown()
"""

# The driver's process: a Driver whose hook pauses, once a trial on the worker node has a
# checkpoint, at an early checkpoint of a trial on the head (so that the head's actor is still
# busy when the worker's trial needs a new one; with a trial yet to ask, it stays busy) until
# the test has removed the worker; it writes the worker's trial number to PAUSED first. The
# lost trial then waits on an actor no node can place until the GCS marks the node dead and
# the pool shrinks, whatever the machine's speed: so the "pool" line always comes.
DRIVER = r"""
import json, os, sys, time
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.driver import Driver

spec = spec_.load_spec_dict(json.load(open(sys.argv[1])))
worker, paused_file, go_file = os.environ["WORKER_NODE"], sys.argv[3], sys.argv[4]
paused, checkpointed = [], set()

def node(run):
    return run.group.node["node_id"] if run.group is not None and run.group.node else None

def hook(event):
    if event.kind != "checkpoint":
        return
    checkpointed.add(event.number)
    run = driver.running.get(event.number)
    if paused or event.step > spec.steps // 3 or run is None or node(run) in (None, worker):
        return
    if driver.stores.asked() >= spec.trials:
        return  # a trial still to ask keeps the head busy: the lost trial must wait for a node
    there = [n for n, r in driver.running.items() if node(r) == worker and n in checkpointed]
    if not there:
        return  # no checkpointed trial on the worker yet: wait for a later checkpoint
    paused.append(there[0])
    with open(paused_file, "w") as handle:
        handle.write(str(there[0]))
    while not os.path.exists(go_file):
        time.sleep(0.05)

# chunk_seconds 1e-9: one log chunk an advance, so checkpoints fall before the end on any machine
driver = Driver(spec, sys.argv[2], workers=2, out=sys.stdout, chunk_seconds=1e-9, on_event=hook)
driver.run()
print("paused trials:", paused, flush=True)
"""


def _spec() -> dict:
    return {
        "name": "t",
        "task": "add",
        "hidden": 8,
        "dtype": "float64",
        "steps": STEPS,
        "trials": 4,
        "estimators": ["tbptt"],
        "fixed": {"log_every": LOG_EVERY, "truncation": 4},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "pruner": "none",
        "sampler": "random",
        "checkpoint_every": CHECKPOINT_EVERY,
        "max_retries": 3,
        "workers": 2,
    }


def _wait_for(condition, seconds: float, what: str, procs=()):
    """Poll ``condition`` until it returns something true; fail naming ``what`` after
    ``seconds`` or as soon as one of ``procs`` has ended."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: a process ended first:\n{_output(proc)}")
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


def _line(proc, seconds: float) -> str:
    """The next line ``proc`` prints, within ``seconds`` (an assertion error if not)."""
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, f"no line from the cluster's process in {seconds} s"
    return proc.stdout.readline()


def _output(proc) -> str:
    try:
        return proc.communicate(timeout=5)[0][-4000:]
    except Exception:  # noqa: BLE001 - still running
        return "(still running)"


def _tags(record) -> dict[int, dict[str, str]]:
    return {n: r.data.tags for n, r in record_checks.child_runs(record).items()}


def test_lost_node_trials_continue_on_the_head(tmp_path, capsys):
    temp_root = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    env = {
        **os.environ,
        "RAY_TMPDIR": temp_root,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    spec_path, state_dir = tmp_path / "spec.json", tmp_path / "state"
    spec_path.write_text(json.dumps(_spec()))
    paused_file, go_file = tmp_path / "paused", tmp_path / "go"
    procs: list[subprocess.Popen] = []

    def start(args, extra_env, stdin=None):
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**env, **extra_env},
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    try:
        cluster = start(["-c", CLUSTER], {}, stdin=subprocess.PIPE)
        line = _line(cluster, 180)  # once the nodes are up (or it failed)
        assert line.startswith("{"), line + _output(cluster)
        ids = json.loads(line)
        head, worker = ids["head"], ids["worker"]
        driver = start(
            ["-c", DRIVER, str(spec_path), str(state_dir), str(paused_file), str(go_file)],
            {"RAY_ADDRESS": ids["address"], "WORKER_NODE": worker},
        )
        _wait_for(paused_file.exists, 300, "a trial on the worker checkpointed", [driver])
        moved = int(paused_file.read_text())
        record = record_checks.created_record(str(state_dir), "t")
        tags = _tags(record)
        # trials ran on both nodes: each records its node as it starts
        assert tags[moved]["ray_node_id"] == worker
        assert {t.get("ray_node_id") for t in tags.values()} - {None} == {head, worker}
        assert tags[moved]["ray_node_ip"] == "127.0.0.1"
        study = sweep_store.load_study(record)
        assert study.trials[moved].user_attrs["checkpoint_step"] > 0

        cluster.stdin.write("remove\n")
        cluster.stdin.flush()
        assert _line(cluster, 120).strip() == "removed"
        go_file.write_text("go")
        out, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, out
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        kill(ray_processes(temp_root))
        left = wait_until_gone(temp_root, 10.0)
        kill(left)
        shutil.rmtree(temp_root, ignore_errors=True)

    assert f"pool 2→1: node {worker[:8]} lost" in out, out
    assert f"paused trials: [{moved}]" in out, out
    record = record_checks.record_of(str(state_dir), "t")
    study = sweep_store.load_study(record)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4, out
    tags = _tags(record)
    assert tags[moved]["ray_node_id"] == head  # updated as it restarted on the head
    assert study.trials[moved].user_attrs["ray_node_id"] == head
    steps = record_checks.metric_rows(record)  # asserts each step at most once
    every = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert steps[moved] == every, steps[moved]  # none lost across the move
    assert all(s == every for s in steps.values())

    capsys.readouterr()
    assert main(["status", "t", "--state-dir", str(state_dir), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    rows = {row["number"]: row for row in document["trials"]}
    assert rows[moved]["ray_node_id"] == head
    assert {row["ray_node_ip"] for row in rows.values()} == {"127.0.0.1"}
