"""Sweep overhead: the same trials through ``rnnsweep launch`` against a plain loop.

Four trials of about ``--trial-seconds`` (10) each — ``uoro`` on ``add``, tanh n=32, one
stream, fixed settings — are run (a) back to back in this process, with nothing but the
learner; (b) through ``rnnsweep launch`` with 1 worker; (c) with 2 workers, (b) and (c) as
fresh processes timed from start to exit (imports, Ray's start, Optuna and MLflow stores, the
trials, the shutdown). Printed: the seconds of each and the ratios ``launch(1) / plain``
(target <= 1.10) and ``launch(1) / launch(2)`` (target >= 1.8 on 2 cores), and each launch's
phases, read from its progress lines as they arrive: ``start`` (process start to the
"launching" line: imports), ``to first trial`` (to the first trial's RUNNING line: stores,
Ray, the first actor; target <= 3 s from the process start), ``trials`` (to the last trial's
final line) and ``exit`` (from that line to the process exit; target <= 1 s).

Run: ``python -m rnnsweep.benchmarks.sweep_overhead [--trial-seconds 10] [--json]``.
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


TRIAL_ENDS = (" COMPLETE ", " PRUNED ", " FAIL ")


def launch(steps: int, workers: int) -> dict[str, float]:
    """Seconds of one ``rnnsweep launch`` from start to exit, and its phases."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "spec.yaml")
        with open(path, "w") as handle:
            yaml.safe_dump(spec_dict(steps), handle)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("RAY_ADDRESS", None)
        start = time.perf_counter()
        process = subprocess.Popen(
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
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        lines: list[tuple[float, str]] = [
            (time.perf_counter() - start, line) for line in process.stdout
        ]
        process.wait()
        elapsed = time.perf_counter() - start
        if process.returncode != 0:
            tail = "".join(line for _, line in lines)[-3000:]
            raise RuntimeError(f"launch failed (exit {process.returncode}):\n{tail}")
        return {"total_s": elapsed, **phases(lines, elapsed)}


def phases(lines: list[tuple[float, str]], elapsed: float) -> dict[str, float]:
    """``launching_s``, ``first_trial_s`` (both from the process start), ``last_trial_end_s``
    and ``exit_after_last_trial_s`` from a launch's timestamped output lines."""

    def first(test) -> float:
        return next((t for t, line in lines if test(line)), float("nan"))

    launching = first(lambda line: line.startswith("launching sweep"))
    first_trial = first(lambda line: " RUNNING " in line)
    ends = [
        t for t, line in lines if line.startswith("trial ") and any(e in line for e in TRIAL_ENDS)
    ]
    last_end = ends[-1] if ends else float("nan")
    return {
        "launching_s": launching,
        "first_trial_s": first_trial,
        "last_trial_end_s": last_end,
        "exit_after_last_trial_s": elapsed - last_end,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trial-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    steps = calibrate(args.trial_seconds)
    results = {"steps_per_trial": steps, "trials": 4}
    results["plain_s"] = plain(steps)
    one, two = launch(steps, 1), launch(steps, 2)
    results["launch_1_worker_s"] = one["total_s"]
    results["launch_2_workers_s"] = two["total_s"]
    results["phases"] = {"1_worker": one, "2_workers": two}
    results["ratio_launch1_to_plain"] = results["launch_1_worker_s"] / results["plain_s"]
    results["speedup_2_workers"] = results["launch_1_worker_s"] / results["launch_2_workers_s"]
    slowest_start = max(one["first_trial_s"], two["first_trial_s"])
    slowest_exit = max(one["exit_after_last_trial_s"], two["exit_after_last_trial_s"])
    results["targets"] = {
        "launch1_to_plain <= 1.10": results["ratio_launch1_to_plain"] <= 1.10,
        "speedup_2_workers >= 1.8": results["speedup_2_workers"] >= 1.8,
        "first_trial <= 3 s": slowest_start <= 3.0,
        "exit_after_last_trial <= 1 s": slowest_exit <= 1.0,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"4 trials x {steps} steps of uoro (add, tanh n=32)")
        print(f"  plain loop            {results['plain_s']:8.1f} s")
        print(
            f"  launch, 1 worker      {results['launch_1_worker_s']:8.1f} s   "
            f"{results['ratio_launch1_to_plain']:.3f}x plain (target <= 1.10)"
        )
        print(
            f"  launch, 2 workers     {results['launch_2_workers_s']:8.1f} s   "
            f"{results['speedup_2_workers']:.2f}x faster than 1 worker (target >= 1.8)"
        )
        print("  phases (s)            start   first trial   trials   exit after last trial")
        for label, p in (("1 worker", one), ("2 workers", two)):
            print(
                f"    {label:<18} {p['launching_s']:7.1f} {p['first_trial_s']:13.1f} "
                f"{p['last_trial_end_s'] - p['first_trial_s']:8.1f} "
                f"{p['exit_after_last_trial_s']:23.1f}"
            )
        print("  targets: first trial <= 3 s after the start, exit <= 1 s after the last trial")
        for name, met in results["targets"].items():
            print(f"    {name}: {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
