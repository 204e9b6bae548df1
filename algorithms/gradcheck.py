"""Gradient check: does each estimator compute what it claims, for frozen parameters?

A random cell and a random stream of T steps are drawn; the truth ``g`` is the BPTT gradient
of ``sum_t l_t``. Each estimator runs online over the same T steps on K streams that see the
same inputs with independent noise (per-stream parameters, so that each stream's estimate is
kept), summing its per-step estimates into ``g_k``. Reported, relative to ``||g||``:

- ``rel_error``   ``||mean_k g_k - g|| / ||g||``,
- ``std_error``   ``sqrt(sum_p Var_k(g_kp) / K) / ||g||``: what ``rel_error`` would be from noise
  alone for an unbiased estimator (in high dimension the norm concentrates there),
- ``rel_variance`` ``mean_k ||g_k - mean g||^2 / ||g||^2``,
- ``cosine``      ``mean_k cos(g_k, g)``.

Claims judged: exact estimators within ``tol`` (1e-9 in float64); unbiased ones with
``rel_error <= 4 std_error``; biased ones are reported, not judged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rnnsweep.algorithms.bptt import bptt_gradient
from rnnsweep.algorithms.cell import Cell, make_cell
from rnnsweep.algorithms.estimator import estimator_names, get_estimator, start
from rnnsweep.algorithms.params import Params, init_params

OUTPUTS = 3
INPUTS = 3
SIGMAS = 4.0


@dataclass
class CheckResult:
    rel_error: float
    std_error: float
    rel_variance: float
    cosine: float
    exact: bool
    unbiased: bool
    judged: bool
    passed: bool
    samples: int
    note: str = ""


def default_estimators() -> list[str]:
    return [name for name in estimator_names() if name != "bptt"]


def draw_problem(
    cell_name: str, hidden: int, steps: int, seed: int, scale: float = 1.0
) -> tuple[Cell, Params, torch.Tensor, torch.Tensor]:
    """The checked problem, in float64 on the CPU: a random cell (weights' std ``scale`` times
    the default), readout, inputs ``xs [T, 1, m]`` and classes ``ys [T, 1]``, from ``seed``."""
    cell = make_cell(cell_name, hidden, INPUTS)
    gen = torch.Generator().manual_seed(seed)
    params = init_params(cell, OUTPUTS, gen, torch.float64, scale=scale)
    xs = torch.randn(steps, 1, INPUTS, generator=gen, dtype=torch.float64)
    ys = torch.randint(0, OUTPUTS, (steps, 1), generator=gen)
    return cell, params, xs, ys


def exact_tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-4


def gradcheck(
    cell_name: str = "tanh",
    hidden: int = 16,
    steps: int = 30,
    samples: int = 4096,
    dtype: torch.dtype = torch.float64,
    estimators: Sequence[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    truncation: int | None = None,
    progress: Callable[[str], None] | None = None,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Run the check; returns ``{"cell": ..., "estimators": {name: CheckResult as dict}}``.
    ``scale`` multiplies the recurrent weights' standard deviation (``draw_problem``)."""
    if steps < 1 or hidden < 1:
        raise ValueError(f"steps and hidden must be >= 1, got steps={steps}, hidden={hidden}")
    if samples < 2:
        raise ValueError(f"samples must be >= 2 to estimate a standard error, got {samples}")
    names = list(estimators) if estimators else default_estimators()
    cells = {name: get_estimator(name).cells for name in names}
    if all(c is not None and cell_name not in c for c in cells.values()):
        raise ValueError(
            f"none of {', '.join(names)} supports the {cell_name} cell: nothing to check"
        )
    cell, params, xs, ys = draw_problem(cell_name, hidden, steps, seed, scale)
    params = type(params)(params.theta.to(device, dtype), params.readout.to(device, dtype))
    xs, ys = xs.to(device, dtype), ys.to(device)
    _, truth = bptt_gradient(cell, params, "ce", xs, ys)
    truth_flat = truth.flat().to(torch.float64)
    truth_norm = truth_flat.norm()
    tol = exact_tolerance(dtype)
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name in names:
        estimator = get_estimator(name)
        hyper: dict[str, Any] = {}
        note = ""
        exact, unbiased = estimator.exact, estimator.unbiased
        if name == "tbptt":
            hyper["truncation"] = truncation or steps
            exact = unbiased = hyper["truncation"] >= steps
            note = f"truncation={hyper['truncation']}"
        if estimator.cells is not None and cell.name not in estimator.cells:
            skipped[name] = f"supports the {', '.join(estimator.cells)} cell only"
            if progress:
                progress(f"{name}: skipped ({skipped[name]})")
            continue
        stochastic = unbiased and not exact
        k = samples if stochastic else 1
        if progress:
            progress(f"{name}: {k} stream(s) x {steps} steps")
        per_stream = params.expand(k)
        est, state = start(name, cell, per_stream, "ce", k, seed=seed, **hyper)
        total = torch.zeros(k, truth_flat.numel(), dtype=dtype, device=device)
        for t in range(steps):
            grad = est.step(per_stream, state, xs[t].expand(k, -1), ys[t].expand(k)).grad
            if grad is not None:
                total += grad.flat()
        tail = est.flush(per_stream, state)
        if tail is not None:
            total += tail.flat()
        total = total.to(torch.float64)
        mean = total.mean(0)
        rel_error = float((mean - truth_flat).norm() / truth_norm)
        if k > 1:
            std_error = float((total.var(0).sum() / k).sqrt() / truth_norm)
            rel_variance = float((total - mean).square().sum(1).mean() / truth_norm**2)
        else:
            std_error = rel_variance = 0.0
        cosine = float(torch.nn.functional.cosine_similarity(total, truth_flat[None], dim=1).mean())
        if exact:
            passed, judged = rel_error <= tol, True
        elif unbiased:
            passed, judged = rel_error <= SIGMAS * std_error, True
        else:
            passed, judged = True, False
        results[name] = asdict(
            CheckResult(
                rel_error, std_error, rel_variance, cosine, exact, unbiased, judged, passed, k, note
            )
        )
    return {
        "cell": cell_name,
        "hidden": hidden,
        "steps": steps,
        "samples": samples,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "seed": seed,
        "exact_tolerance": tol,
        "estimators": results,
        "skipped": skipped,
        "passed": all(r["passed"] for r in results.values()),
    }
