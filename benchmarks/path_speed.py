"""Steps per second of one online learner on each estimator path, measured in one run.

The whole ``Learner.step`` (task stream, estimator, Adam, loss bookkeeping) of one estimator on
one cell, once with ``path: auto`` (the closed form where the estimator has one for the cell)
and once with ``path: generic`` (``torch.func``). Defaults: NoBackTrack on the ``anbn`` task's
network (GRU n=64, one stream), float32, one thread. Timings are interleaved (auto, generic,
repeated), each repeat times a fixed number of steps per path, sized from a warm-up so that a
repeat lasts about ``--seconds``; the speed-up is the median over repeats of the per-repeat
ratio, so that a noisy neighbour slows both alike.

Run: ``nice -n 10 python -m rnnsweep.benchmarks.path_speed [--cell lstm] [--json] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from rnnsweep.algorithms.learner import Learner, LearnerSpec
from rnnsweep.benchmarks.machine import machine as machine_of

PATHS = ("auto", "generic")


def _learner(args: argparse.Namespace, path: str) -> Learner:
    settings = {"path": path, "log_every": 10**9, "batch": args.batch}
    spec = LearnerSpec(args.task, args.estimator, args.cell, args.hidden, seed=0, settings=settings)
    learner = Learner(spec)
    for _ in range(3):  # past the first step's input checks
        learner.step()
    return learner


def _seconds_per_step(learner: Learner, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        learner.step()
    return (time.perf_counter() - start) / calls


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per path: ``steps_per_sec`` (median over repeats) and ``speedup`` (auto's
    steps/s over generic's, the median of the per-repeat ratios)."""
    learners = {path: _learner(args, path) for path in PATHS}
    budget = args.seconds / len(PATHS)
    calls = {
        path: max(2, int(budget / _seconds_per_step(learner, 2)))
        for path, learner in learners.items()
    }
    samples: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(args.repeats):
        for path, learner in learners.items():
            samples[path].append(_seconds_per_step(learner, calls[path]))
    speedup = statistics.median(
        g / a for a, g in zip(samples["auto"], samples["generic"], strict=True)
    )
    return [
        {
            "estimator": args.estimator,
            "cell": args.cell,
            "hidden": args.hidden,
            "batch": args.batch,
            "task": args.task,
            "path": path,
            "closed_form": bool(learners[path].population.est_state.closed_form),
            "steps_per_sec": 1.0 / statistics.median(samples[path]),
            "steps_timed": calls[path] * args.repeats,
            "speedup": speedup if path == "auto" else 1.0,
        }
        for path in PATHS
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--estimator", default="nobacktrack")
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--task", default="anbn")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="per repeat, both paths")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print {'machine', 'rows'} as JSON")
    parser.add_argument("--quick", action="store_true", help="hidden 8, one short repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.repeats, args.seconds = 8, 1, 0.2
    torch.set_num_threads(args.threads)
    machine = machine_of(args.threads)
    rows = measure(args)
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
        return 0
    print(
        f"{machine['cpu']}, {machine['cores']} cores, {args.threads} thread(s); "
        f"{args.task}, {args.cell} n={args.hidden}, B={args.batch}, float32, whole learner step"
    )
    for r in rows:
        print(
            f"{r['estimator']:<12} path {r['path']:<8} (closed form: {str(r['closed_form']):<5}) "
            f"{r['steps_per_sec']:>9.1f} steps/s  ({r['steps_timed']} steps timed)"
        )
    print(f"speed-up auto / generic: {rows[0]['speedup']:.1f}x (median of per-repeat ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
