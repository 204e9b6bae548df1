"""``benchmarks/driver_throughput.py --json``: its rows' shape, and every trial completed (a
shape check, not a timing one: the machine's load decides the rates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from ray_processes import kill, ray_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {
    "sampler",
    "trials",
    "trials_per_min",
    "driver_s_per_trial",
    "ask_s_per_trial",
    "optuna_floor_s_per_trial",
    "mlflow_floor_s_per_trial",
    "ceiling_trials_per_min",
}


def test_quick_json_rows_complete_every_trial():
    temp_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp_root}
    env.pop("RAY_ADDRESS", None)
    args = ["--quick", "--json", "--trials", "12", "20", "--samplers", "random", "--workers", "4"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rnnsweep.benchmarks.driver_throughput", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        kill(ray_processes(temp_root))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)["rows"]
    assert [(r["sampler"], r["trials"]) for r in rows] == [("random", 12), ("random", 20)]
    for row in rows:
        assert FIELDS <= set(row), row
        assert row["completed"] == row["trials"], row
        assert row["trials_per_min"] > 0 and row["ask_s_per_trial"] > 0, row
        assert row["driver_s_per_trial"] > 0, row
        floor = row["optuna_floor_s_per_trial"] + row["mlflow_floor_s_per_trial"]
        assert row["optuna_floor_s_per_trial"] > 0 and row["mlflow_floor_s_per_trial"] > 0, row
        assert abs(row["ceiling_trials_per_min"] - 60.0 / floor) <= 1e-9 * 60.0 / floor, row
