"""Learning experiments quoted in the README, at the documented default settings.

``add`` (t1=5, t2=9): tanh n=32, one stream, 100,000 steps, seeds 0, 1, 2; ``final_loss`` is
the mean loss (nats) over the last 10,000 steps. Targets: below 0.46 for ``rtrl`` and
``tbptt`` (truncation 10), below 0.50 for ``uoro`` and ``nobacktrack`` (0.5192: only t1
learned; 0.4545: optimum).

``influence-balancing`` (UORO paper): 20,000 steps; ``tbptt`` with truncation 1 diverges or
stalls while ``uoro`` and ``rtrl`` drive the loss below 1% of its first reported value.

Run: ``python -m rnnsweep.benchmarks.learning [--json] [--quick] [--only add|influence]``;
runs go two at a time in separate processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

ADD_RUNS = [("rtrl", {}), ("tbptt", {"truncation": 10}), ("uoro", {}), ("nobacktrack", {})]
ADD_TARGET = {"rtrl": 0.46, "tbptt": 0.46, "uoro": 0.50, "nobacktrack": 0.50}
INFLUENCE_RUNS = [("tbptt", {"truncation": 1}), ("uoro", {}), ("rtrl", {})]


def one_run(task: str, estimator: str, settings: dict[str, Any], seed: int, steps: int) -> dict:
    import torch

    from rnnsweep.algorithms.learner import Learner, LearnerSpec

    torch.set_num_threads(1)
    curve: list[float] = []
    spec = LearnerSpec(
        task, estimator, "tanh", 32, seed, settings={"log_every": max(1, steps // 20), **settings}
    )
    summary = Learner(spec).run(steps, on_report=lambda r: curve.append(r["loss"]))
    return {
        "task": task,
        "estimator": estimator,
        "settings": settings,
        "seed": seed,
        "final_loss": summary["final_loss"],
        "first_loss": curve[0] if curve else None,
        "diverged": summary["diverged"],
        "reason": summary["reason"],
        "steps": summary["steps"],
        "steps_per_sec": summary["steps_per_sec"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="10x fewer steps, seed 0 only")
    parser.add_argument("--only", choices=["add", "influence"])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else [0, 1, 2]
    add_steps = 10_000 if args.quick else 100_000
    influence_steps = 2_000 if args.quick else 20_000
    jobs = []
    if args.only in (None, "add"):
        jobs += [("add", e, s, seed, add_steps) for e, s in ADD_RUNS for seed in seeds]
    if args.only in (None, "influence"):
        jobs += [("influence-balancing", e, s, 0, influence_steps) for e, s in INFLUENCE_RUNS]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(one_run, *zip(*jobs, strict=True)))
    ok = True
    lines = []
    for r in results:
        if r["task"] == "add":
            target = ADD_TARGET[r["estimator"]]
            met = not r["diverged"] and r["final_loss"] < target
            verdict = f"{'met' if met else 'MISSED'} (< {target})"
        else:
            learns = r["estimator"] != "tbptt"
            ratio = r["final_loss"] / r["first_loss"] if r["first_loss"] else float("nan")
            if learns:
                met = not r["diverged"] and ratio < 0.01
                verdict = f"final/first {ratio:.2e} {'met' if met else 'MISSED'} (< 1e-2)"
            else:
                met = r["diverged"] or not ratio < 0.01
                verdict = f"{'diverged' if r['diverged'] else f'final/first {ratio:.2e}'}: " + (
                    "met" if met else "MISSED"
                )
        ok &= met
        lines.append(
            f"{r['task']:<20} {r['estimator']:<12} seed {r['seed']}  final_loss "
            f"{r['final_loss']:.4g}  {r['steps_per_sec']:8.0f} steps/s  {verdict}"
        )
        r["met"] = met
    if args.json:
        print(json.dumps({"runs": results, "all_met": ok}, indent=2))
    else:
        print("\n".join(lines))
        print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
