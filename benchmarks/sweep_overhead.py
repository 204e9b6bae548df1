"""Sweep overhead: the same trials through ``rnnsweep launch`` against a plain loop.

Four trials of about ``--trial-seconds`` (20) each — ``uoro`` on ``add``, tanh n=32, one
stream, fixed settings — are run (a) back to back in this process, with nothing but the
learner; (b) through ``rnnsweep launch`` with 1 worker; (c) with 2 workers, (b) and (c) as
fresh processes timed from start to exit (imports, Ray's start, Optuna and MLflow stores, the
trials, the shutdown). Printed: the seconds of each and the ratios ``launch(1) / plain``
(target <= 1.15) and ``launch(1) / launch(2)`` (target >= 1.7 on 2 cores).

Run: ``python -m rnnsweep.benchmarks.sweep_overhead [--trial-seconds 20] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import yaml


def spec_dict(steps: int) -> dict:
    return {
        "name": "overhead",
        "task": "add",
        "hidden": 32,
        "steps": steps,
        "trials": 4,
        "estimators": ["uoro"],
        "fixed": {"log_every": 1000},
        # a float key, so that the 4 trials are 4 parameter sets (a sweep never repeats one)
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1.0001e-4}},
        "sampler": "random",
        "pruner": "none",
        "checkpoint_every": max(1000, steps // 10),
    }


def calibrate(seconds: float) -> int:
    """Steps that take about ``seconds`` for one learner here."""
    import torch

    from rnnsweep.algorithms.learner import Learner, LearnerSpec

    torch.set_num_threads(1)
    learner = Learner(LearnerSpec("add", "uoro", "tanh", 32, 0, settings={"log_every": 1000}))
    start = time.perf_counter()
    learner.run(3000)
    rate = 3000 / (time.perf_counter() - start)
    return max(1000, int(rate * seconds) // 1000 * 1000)


def plain(steps: int) -> float:
    import torch

    from rnnsweep.algorithms.learner import Learner
    from rnnsweep.orchestrator import spec as spec_

    torch.set_num_threads(1)
    spec = spec_.load_spec_dict(spec_dict(steps))
    start = time.perf_counter()
    for number in range(spec.trials):
        settings = {**spec.fixed, "lr": 1e-4}
        Learner(spec_.learner_spec(spec, "uoro", settings, spec.seed + number)).run(steps)
    return time.perf_counter() - start


def launch(steps: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "spec.yaml")
        with open(path, "w") as handle:
            yaml.safe_dump(spec_dict(steps), handle)
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "rnnsweep.orchestrator.cli",
                "launch",
                path,
                "--workers",
                str(workers),
                "--state-dir",
                os.path.join(tmp, "state"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"launch failed:\n{done.stderr[-3000:]}")
        return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trial-seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    steps = calibrate(args.trial_seconds)
    results = {"steps_per_trial": steps, "trials": 4}
    results["plain_s"] = plain(steps)
    results["launch_1_worker_s"] = launch(steps, 1)
    results["launch_2_workers_s"] = launch(steps, 2)
    results["ratio_launch1_to_plain"] = results["launch_1_worker_s"] / results["plain_s"]
    results["speedup_2_workers"] = results["launch_1_worker_s"] / results["launch_2_workers_s"]
    results["targets"] = {
        "launch1_to_plain <= 1.15": results["ratio_launch1_to_plain"] <= 1.15,
        "speedup_2_workers >= 1.7": results["speedup_2_workers"] >= 1.7,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"4 trials x {steps} steps of uoro (add, tanh n=32)")
        print(f"  plain loop            {results['plain_s']:8.1f} s")
        print(
            f"  launch, 1 worker      {results['launch_1_worker_s']:8.1f} s   "
            f"{results['ratio_launch1_to_plain']:.3f}x plain (target <= 1.15)"
        )
        print(
            f"  launch, 2 workers     {results['launch_2_workers_s']:8.1f} s   "
            f"{results['speedup_2_workers']:.2f}x faster than 1 worker (target >= 1.7)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
