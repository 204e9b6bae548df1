"""NoBackTrack against UORO: the relative variance of their gradient estimates, measured.

Both keep the influence ``ds/dtheta`` as one rank-one product and draw a sign per unit each
step; they differ only in how they scale the S unit terms ``(e_k, b_k)``, ``b_k = dF_k/dtheta``:
UORO shares one ``rho`` between them, NoBackTrack gives each unit its own
``rho_k = sqrt(||b_k||)``. Per step, with ``a_k = ||b_k||``, the variance the unit-unit pairs add
to ``v' w'^T`` is ``(S - 1) sum a^2`` with one ``rho`` and ``(sum a)^2 - sum a^2`` with one per
unit: their ratio is ``(S H - 1) / (S - 1)``, where ``H = (sum a)^2 / (S sum a^2)`` in
``[1/S, 1]`` is 1 when every unit's row is alike and about the active fraction when some units
are saturated (``d_k = 1 - tanh^2 ~ 0``). So the per-unit advantage is large when the units'
derivative norms are spread out, and vanishes when they are equal.

For each configuration (cell, n, weight scale) this runs ``gradcheck`` (same problem draw, T
steps, K noise draws, float64) for ``uoro`` and ``nobacktrack`` and prints ``rel_variance``
(``mean_k ||g_k - mean g||^2 / ||g||^2``, readout included in ``||g||`` as gradcheck has it),
their ratio, the mean cosine to the truth, and ``H`` (mean over the T steps of the stream, from
the cell's rows along the true trajectory) with the per-step ratio it predicts.

Run: ``nice -n 10 python -m rnnsweep.benchmarks.variance [--json] [--quick]`` (one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from rnnsweep.algorithms.forward_mode import param_rows
from rnnsweep.algorithms.gradcheck import draw_problem, gradcheck
from rnnsweep.benchmarks.machine import machine as machine_of

# (cell, hidden, weight scale): the README's table. Scale 1 is gradcheck's draw; scale 3
# saturates many tanh units, which spreads the units' derivative norms.
CONFIGS = [
    ("tanh", 8, 1.0),
    ("tanh", 32, 1.0),
    ("tanh", 64, 1.0),
    ("tanh", 32, 3.0),
    ("gru", 32, 1.0),
    ("lstm", 32, 1.0),
]
QUICK_CONFIGS = [("tanh", 8, 1.0), ("gru", 4, 1.0)]
ESTIMATORS = ("uoro", "nobacktrack")


def spread(cell_name: str, hidden: int, steps: int, seed: int, scale: float) -> float:
    """``H = (sum_k a_k)^2 / (S sum_k a_k^2)``, ``a_k = ||dF_k/dtheta||``, averaged over the
    steps of gradcheck's stream (state from zero, as the estimators start)."""
    cell, params, xs, _ = draw_problem(cell_name, hidden, steps, seed, scale)
    theta = params.theta
    s = torch.zeros(1, cell.state_size, dtype=theta.dtype)
    values = []
    for t in range(steps):
        norms, _ = param_rows(cell, theta, s, xs[t])  # [1, S]
        a = norms[0]
        values.append(float(a.sum() ** 2 / (a.numel() * a.square().sum())))
        s = cell.step(theta, s, xs[t])
    return sum(values) / len(values)


def measure(
    cell: str, hidden: int, scale: float, steps: int, samples: int, seed: int
) -> dict[str, Any]:
    """One row: each estimator's gradcheck statistics, their variance ratio, and ``H``."""
    report = gradcheck(
        cell, hidden, steps, samples, torch.float64, list(ESTIMATORS), seed, scale=scale
    )
    r = report["estimators"]
    states = 2 * hidden if cell == "lstm" else hidden
    h = spread(cell, hidden, steps, seed, scale)
    return {
        "cell": cell,
        "hidden": hidden,
        "scale": scale,
        "steps": steps,
        "samples": samples,
        "seed": seed,
        **{
            f"{name}_{key}": r[name][key]
            for name in ESTIMATORS
            for key in ("rel_variance", "cosine", "rel_error", "std_error", "passed")
        },
        "ratio": r["nobacktrack"]["rel_variance"] / r["uoro"]["rel_variance"],
        "spread_H": h,
        "predicted_step_ratio": (states * h - 1) / (states - 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'cell':<5} {'n':>3} {'scale':>5} {'uoro rel_var':>12} {'nbt rel_var':>12} "
        f"{'nbt/uoro':>8} {'cos uoro':>8} {'cos nbt':>8} {'H':>6} {'(SH-1)/(S-1)':>12}"
    ]
    for r in rows:
        lines.append(
            f"{r['cell']:<5} {r['hidden']:>3} {r['scale']:>5g} {r['uoro_rel_variance']:>12.4g} "
            f"{r['nobacktrack_rel_variance']:>12.4g} {r['ratio']:>8.3f} "
            f"{r['uoro_cosine']:>8.3f} {r['nobacktrack_cosine']:>8.3f} {r['spread_H']:>6.3f} "
            f"{r['predicted_step_ratio']:>12.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="two tiny cells, K=64 (a smoke run)")
    parser.add_argument("--steps", type=int, default=30, help="stream length T (30)")
    parser.add_argument("--samples", type=int, default=1024, help="noise draws K (1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    samples = 64 if args.quick else args.samples
    steps = 10 if args.quick else args.steps
    rows = []
    for cell, hidden, scale in configs:
        started = time.monotonic()
        rows.append(measure(cell, hidden, scale, steps, samples, args.seed))
        rows[-1]["seconds"] = round(time.monotonic() - started, 1)
        print(f"  .. {cell} n={hidden} scale {scale:g}: {rows[-1]['seconds']} s", file=sys.stderr)
    machine = machine_of(args.threads)
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
    else:
        print(
            f"{machine['cpu']}, {machine['cores']} cores, {args.threads} thread(s); T={steps}, "
            f"K={samples}, float64, seed {args.seed}"
        )
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
