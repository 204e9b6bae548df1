"""Cost of one online step of each estimator, as ratios measured in one process.

For the tanh RNN (float32, one CPU thread unless --threads), n in {32, 64, 128} and
B in {1, 64}, each estimator's step (forward + influence update + gradient) is divided by

- ``forward``: one plain forward step of the same batched RNN — cell, readout and loss, the
  work of an online predictor that does not learn; and
- ``pass``: one in-place pass ``S <- a S + u v^T`` over a tensor of the size of a rank-one
  influence state ``[B, n, n + 1 + m]`` (the memory-traffic floor of UORO / NoBackTrack).

Rows with ``path: "learner"`` time the whole online learner's step (``Learner.step``: the
task stream's next sample, the estimator's step, clipping and Adam, the loss bookkeeping) at
B=1 on the ``add`` task, against the same estimator's step alone on the same cell and sample,
with parameters drawn alike (``ratio_to_estimator``: the learner's own overhead; the bound is
judged on it), against the learner's own estimator stepped aside on the learner's packed state
and parameters (``ratio_to_own_estimator``: the overhead on the very state it steps), and a
plain forward step on them (``ratio_to_forward``), for every estimator in
``LEARNER_ESTIMATORS`` at n=64 (``--quick`` included: few calls, one repeat); each is checked
against ``LEARNER_FORWARD_BOUNDS`` and the overhead bound ``LEARNER_OVERHEAD_BOUND`` (and uoro
also against ``ENGINE_OVERHEAD_BOUND``, the one stepping engine's).
Each learner row also says where the overhead lives: the learner's update (the gradient into
its ring, where uoro and nobacktrack write it themselves; Adam; counters; the gradient norms,
taken every 64 steps) timed alone on one gradient (``update_us``) and right after its estimator's
step, as the learner runs it (``update_after_estimator_us``: the estimator then the update,
less the estimator alone, the median over repeats of that difference).
``--learner-only`` measures only these. ``--compiled`` adds rows ``path: "learner-compiled"``:
the same learners with ``compile: true`` after a warm-up whose wall time is reported, against
the forward step (the same bounds), the eager learner and the estimator compiled alone. The
JSON carries ``machine`` (CPU model, cores, threads).

Rows with ``path: "memory"`` (``MEMORY_ESTIMATORS`` at n=128, B=64: one learner of 64
streams) weigh the learner's peak memory against the bytes of its parameters, influence state
(the estimator state a checkpoint holds) and Adam's moments together (``ratio_to_state``,
bound ``MEMORY_BOUND``): the peak is every byte the learner holds (its tensors' storages, each
once: stream buffers and the drawn signs included) plus the largest rise of allocations over
``MEMORY_STEPS`` steps (``torch.profiler``'s memory events, a sign chunk's drawing included).

Memory traffic of UORO's and NoBackTrack's tanh step at B=64, n=128, where the influence
state ``w [B, n, n + 1 + m]`` (4 MiB) outgrows the caches: the math needs one pass over ``w``,
reading and writing it once (``w <- w / r0 + a z^T``, with ``||w||`` and the gradient
``sum_b c_b w_b`` taken in the same pass). Eager torch runs four separate kernels over it:
``||w||`` (read), ``w / r0`` (read and write), ``+ a z^T`` (``baddbmm_``, read and write) and
the gradient (``addmv``, read): six traversals' worth of traffic where the pass makes two.

All timings are interleaved (forward, pass, each estimator, repeated) and each ratio is the
median over repeats, so that a noisy neighbour slows numerator and denominator alike.
Run: ``python -m rnnsweep.benchmarks.step_cost [--json] [--quick] [--learner-only] [--compiled]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

from rnnsweep.algorithms import readout as readout_
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import start
from rnnsweep.algorithms.params import init_params
from rnnsweep.algorithms.trajectory import TanhTrajectory, unit_blocks
from rnnsweep.benchmarks.machine import machine as machine_of

INPUTS, OUTPUTS = 2, 2
HIDDEN = (32, 64, 128)
BATCHES = (1, 64)
CLOSED_FORM = ("uoro", "nobacktrack", "rtrl", "kf-rtrl", "snap1", "rflo", "tbptt")
GENERIC = ("uoro", "nobacktrack", "rtrl")
TRUNCATION = 16
# Skip configurations whose step would take far longer than the rest (flop count per step).
MAX_FLOPS = {"rtrl": 3e9, "kf-rtrl": 3e9}
MAX_GENERIC_FLOPS = 3e8

TARGETS = (
    # (estimator, path, hidden, batch, against, bound)
    ("uoro", "closed-form", 64, 1, "forward", 8.0),
    ("nobacktrack", "closed-form", 64, 1, "forward", 8.0),
    ("snap1", "closed-form", 64, 1, "forward", 6.0),
    ("rflo", "closed-form", 64, 1, "forward", 6.0),
    ("uoro", "closed-form", 128, 64, "pass", 3.5),  # issue 14 (3x with wider vector units)
    ("nobacktrack", "closed-form", 128, 64, "pass", 3.5),
    ("tbptt", "closed-form", 128, 64, "forward", 4.0),
)
MEMORY_ESTIMATORS = ("uoro", "nobacktrack")
MEMORY_HIDDEN, MEMORY_BATCH, MEMORY_STEPS, MEMORY_BOUND = 128, 64, 16, 1.3
LEARNER_ESTIMATORS = ("uoro", "nobacktrack", "snap1", "rflo", "kf-rtrl")
LEARNER_HIDDEN = 64
# The whole learner step at B=1 (issue 14): against a forward step, and its own overhead.
LEARNER_FORWARD_BOUNDS = {
    "uoro": 4.5,
    "nobacktrack": 4.5,
    "snap1": 3.0,
    "rflo": 3.0,
    "kf-rtrl": 4.0,
}
LEARNER_OVERHEAD_BOUND = 1.10
# ``--compiled``: the same learners with ``compile: true``, warmed up over this many steps
# (past the first sign chunk's refill, so that every graph a run takes is built).
COMPILED_WARMUP = 600
TARGETS += tuple(
    (name, "learner-compiled", LEARNER_HIDDEN, 1, "forward", LEARNER_FORWARD_BOUNDS[name])
    for name in LEARNER_ESTIMATORS
)
TARGETS += tuple(
    (name, "memory", MEMORY_HIDDEN, MEMORY_BATCH, "state", MEMORY_BOUND)
    for name in MEMORY_ESTIMATORS
)
TARGETS += tuple(
    (name, "learner", LEARNER_HIDDEN, 1, against, bound)
    for name in LEARNER_ESTIMATORS
    for against, bound in (
        ("forward", LEARNER_FORWARD_BOUNDS[name]),
        ("estimator", LEARNER_OVERHEAD_BOUND),
    )
)
# The redesign's bound (issue 10): one stepping engine for packs and lone learners must not
# cost a lone uoro stream more than this over its estimator step.
ENGINE_OVERHEAD_BOUND = 1.15
TARGETS += (("uoro", "learner", LEARNER_HIDDEN, 1, "estimator", ENGINE_OVERHEAD_BOUND),)


def _flops(name: str, n: int, batch: int, generic: bool) -> float:
    p = n * (n + 1 + INPUTS)
    if generic:
        return batch * n * p * (n if name == "rtrl" else 1)
    return batch * {"rtrl": n * n * p, "kf-rtrl": n**3}.get(name, p)


def _timer(step: Callable[[], object], calls: int) -> float:
    for _ in range(max(3, calls // 10)):
        step()
    start_time = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start_time) / calls


def _setup(n: int, batch: int, seed: int = 0):
    cell = make_cell("tanh", n, INPUTS)
    gen = torch.Generator().manual_seed(seed)
    params = init_params(cell, OUTPUTS, gen, torch.float32)
    x = torch.randn(batch, INPUTS, generator=gen)
    y = torch.randint(0, OUTPUTS, (batch,), generator=gen)
    return cell, params, x, y


def forward_step(n: int, batch: int) -> Callable[[], object]:
    return _forward(*_setup(n, batch))


def _forward(cell, params, x, y) -> Callable[[], object]:
    """Cell, readout and cross-entropy loss of one step of ``x.shape[0]`` streams."""
    traj = TanhTrajectory(cell, "ce", x.shape[0], torch.float32, "cpu")
    blocks = unit_blocks(cell, params.theta)

    def step() -> object:
        traj.advance(blocks, x)
        out = readout_.output(params.readout, traj.hb)
        return torch.nn.functional.cross_entropy(out, y, reduction="none")

    return step


def pass_step(n: int, batch: int) -> Callable[[], object]:
    s = torch.zeros(batch, n, n + 1 + INPUTS)
    u = torch.randn(batch, n, 1)
    v = torch.randn(batch, 1, n + 1 + INPUTS)
    return lambda: s.baddbmm_(u, v, beta=0.999)


def estimator_step(name: str, path: str, n: int, batch: int) -> Callable[[], object]:
    cell, params, x, y = _setup(n, batch)
    hyper: dict = {}
    if name in GENERIC or name in ("snap1", "tbptt"):
        hyper["path"] = path
    if name == "tbptt":
        hyper["truncation"] = TRUNCATION
    est, state = start(name, cell, params, "ce", batch, **hyper)
    return lambda: est.step(params, state, x, y)


def learner_steps(name: str, n: int) -> dict[str, Callable[[], object]]:
    """The whole learner step, its estimator's step (a fresh one, and the learner's own on its
    state) and a forward step, on one sample."""
    from rnnsweep.algorithms.learner import Learner, LearnerSpec

    learner = Learner(LearnerSpec("add", name, hidden=n, settings={"log_every": 10**9}))
    for _ in range(3):  # past the first step's input checks
        learner.step()
    cell, task = learner.cell, learner.task
    params = init_params(cell, task.outputs, torch.Generator().manual_seed(1), torch.float32)
    x, y = learner.stream.next()
    est, state = start(name, cell, params, task.loss_kind, 1)
    pop = learner.population
    own = functools.partial(pop._estimate, x, y)  # as the learner steps it: into its ring
    grad = pop.estimator.step(pop.est_params, pop.est_state, x, y).grad
    apply = pop._lone_apply  # the learner's update: the gradient in its ring, Adam, counters

    def update() -> None:  # on a gradient where the estimator leaves it (a slot, or its own)
        apply(pop._grad_slots[pop._grad_k] if pop._lends_grad else grad)

    def own_then_update() -> None:
        apply(own().grad)

    return {
        "learner": learner.step,
        "estimator": lambda: est.step(params, state, x, y),
        # the learner's own estimator on its own (packed) state and parameters: steps it aside
        # from the learner, which is harmless to a timing
        "own_estimator": own,
        "forward": _forward(cell, params, x, y),
        # where the overhead lives: the update alone (one gradient, again and again) and
        # right after the estimator's step, as in the learner
        "update": update,
        "own_estimator_then_update": own_then_update,
    }


def _ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over repeats of one timing over another, each pair from one repeat."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def measure_learner(names, n: int, repeats: int, calls: int, log) -> list[dict]:
    rows = []
    for name in names:
        steps = learner_steps(name, n)
        samples: dict[str, list[float]] = {key: [] for key in steps}
        for _ in range(repeats):
            for key, step in steps.items():
                samples[key].append(_timer(step, calls))
        whole, est, fwd = samples["learner"], samples["estimator"], samples["forward"]
        rows.append(
            {
                "estimator": name,
                "path": "learner",
                "hidden": n,
                "batch": 1,
                "ratio_to_estimator": _ratio(whole, est),
                "ratio_to_forward": _ratio(whole, fwd),
                "us_per_stream_step": statistics.median(whole) * 1e6,
                "estimator_us": statistics.median(est) * 1e6,
                "ratio_to_own_estimator": _ratio(whole, samples["own_estimator"]),
                "own_estimator_us": statistics.median(samples["own_estimator"]) * 1e6,
                "forward_us": statistics.median(fwd) * 1e6,
                "update_us": statistics.median(samples["update"]) * 1e6,
                "own_estimator_then_update_us": statistics.median(
                    samples["own_estimator_then_update"]
                )
                * 1e6,
                # the update's cost where the learner pays it: after the estimator's step
                "update_after_estimator_us": statistics.median(
                    a - b
                    for a, b in zip(
                        samples["own_estimator_then_update"], samples["own_estimator"], strict=True
                    )
                )
                * 1e6,
            }
        )
        log(
            f"learner {name} n={n} B=1: step {statistics.median(whole) * 1e6:.1f} us, "
            f"estimator {statistics.median(est) * 1e6:.1f} us"
        )
    return rows


def measure_compiled(names, n: int, repeats: int, calls: int, log) -> list[dict]:
    """Rows ``path: "learner-compiled"``: the whole learner step with ``compile: true``
    (``rnnsweep.algorithms.compiled_step``), after ``COMPILED_WARMUP`` steps whose wall time
    (``warmup_s``: Dynamo's traces and Inductor's C++ builds, or its on-disk cache) is
    reported, against a plain forward step, the eager learner and its own estimator's step
    compiled alone (the learner's overhead, like for like), interleaved."""
    from rnnsweep.algorithms import compiled_step
    from rnnsweep.algorithms.learner import Learner, LearnerSpec

    rows = []
    for name in names:
        eager = learner_steps(name, n)
        settings = {"log_every": 10**9, "compile": True}
        learner = Learner(LearnerSpec("add", name, hidden=n, settings=settings))
        start_s = time.perf_counter()
        for _ in range(COMPILED_WARMUP):
            learner.step()
        warmup = time.perf_counter() - start_s
        if learner.population._compiled is None:
            log(f"learner {name} n={n}: could not compile (see the warning); no row")
            continue
        # like for like: the learner's own estimator step alone, compiled the same way, on the
        # learner's state (stepped aside from it, which is harmless to a timing)
        pop = learner.population
        compiled = torch.compile(
            pop.estimator.step,
            fullgraph=True,
            options=compiled_step.OPTIONS,
            # every estimator's step shares the code of ``estimator_base.by_path``'s wrapper
            recompile_limit=compiled_step.RECOMPILE_LIMIT,
        )
        alone = functools.partial(
            compiled,
            pop.est_params,
            pop.est_state,
            *learner.stream.next(),
        )
        for _ in range(COMPILED_WARMUP):
            alone()
        steps = {
            "compiled": learner.step,
            "estimator": alone,
            "learner": eager["learner"],
            "forward": eager["forward"],
        }
        samples: dict[str, list[float]] = {key: [] for key in steps}
        for _ in range(repeats):
            for key, step in steps.items():
                samples[key].append(_timer(step, calls))
        whole, fwd = samples["compiled"], samples["forward"]
        rows.append(
            {
                "estimator": name,
                "path": "learner-compiled",
                "hidden": n,
                "batch": 1,
                "ratio_to_forward": _ratio(whole, fwd),
                "ratio_to_eager_learner": _ratio(whole, samples["learner"]),
                "ratio_to_compiled_estimator": _ratio(whole, samples["estimator"]),
                "compiled_estimator_us": statistics.median(samples["estimator"]) * 1e6,
                "us_per_stream_step": statistics.median(whole) * 1e6,
                "eager_learner_us": statistics.median(samples["learner"]) * 1e6,
                "forward_us": statistics.median(fwd) * 1e6,
                "warmup_s": warmup,
                "warmup_steps": COMPILED_WARMUP,
            }
        )
        log(
            f"compiled learner {name} n={n} B=1: step {statistics.median(whole) * 1e6:.1f} us, "
            f"warm-up {warmup:.1f} s"
        )
    return rows


def measure_memory(names, n: int, batch: int, steps: int, log) -> list[dict]:
    from rnnsweep.algorithms import checkpoint
    from rnnsweep.algorithms.learner import Learner, LearnerSpec
    from rnnsweep.benchmarks.memory import allocation_rise, storage_bytes

    rows = []
    for name in names:
        settings = {"batch": batch, "log_every": 10**9}
        learner = Learner(LearnerSpec("add", name, "tanh", n, settings=settings))
        for _ in range(3):
            learner.step()
        pop = learner.population
        transient = allocation_rise(learner.step, steps)
        held = storage_bytes(pop)
        own = {
            "parameters": pop.flat.untyped_storage().nbytes(),
            "influence": storage_bytes(checkpoint.snapshot(pop.est_state)),
            "optimizer": sum(t.untyped_storage().nbytes() for t in pop.flat_opt.m + pop.flat_opt.v),
        }
        state = sum(own.values())
        rows.append(
            {
                "estimator": name,
                "path": "memory",
                "hidden": n,
                "batch": batch,
                **{f"{k}_bytes": v for k, v in own.items()},
                "held_bytes": held,
                "transient_bytes": transient,
                "peak_bytes": held + transient,
                "ratio_to_state": (held + transient) / state,
            }
        )
        log(
            f"memory {name} n={n} B={batch}: state {state / 2**20:.2f} MiB, held "
            f"{held / 2**20:.2f} MiB, transient {transient / 2**20:.2f} MiB"
        )
    return rows


def measure(hidden, batches, repeats: int, calls: int, generic: bool, log) -> list[dict]:
    rows = []
    for n in hidden:
        for batch in batches:
            cases = [(name, "closed-form") for name in CLOSED_FORM]
            if generic:
                cases += [(name, "generic") for name in GENERIC]
            cases = [
                (name, path)
                for name, path in cases
                if _flops(name, n, batch, path == "generic")
                <= (MAX_GENERIC_FLOPS if path == "generic" else MAX_FLOPS.get(name, float("inf")))
            ]
            steps = {"forward": forward_step(n, batch), "pass": pass_step(n, batch)}
            for name, path in cases:
                steps[f"{name}/{path}"] = estimator_step(name, path, n, batch)
            samples: dict[str, list[float]] = {key: [] for key in steps}
            for _ in range(repeats):
                for key, step in steps.items():
                    heavy = key.endswith("generic") or key.startswith(("rtrl", "kf-rtrl"))
                    samples[key].append(_timer(step, max(5, calls // 10) if heavy else calls))
            fwd, floor = samples["forward"], samples["pass"]
            for name, path in cases:
                est = samples[f"{name}/{path}"]
                rows.append(
                    {
                        "estimator": name,
                        "path": path,
                        "hidden": n,
                        "batch": batch,
                        "ratio_to_forward": _ratio(est, fwd),
                        "ratio_to_pass": _ratio(est, floor),
                        "us_per_stream_step": statistics.median(est) / batch * 1e6,
                        "forward_us": statistics.median(fwd) * 1e6,
                        "pass_us": statistics.median(floor) * 1e6,
                    }
                )
            log(
                f"n={n} B={batch}: forward {statistics.median(fwd) * 1e6:.1f} us, "
                f"pass {statistics.median(floor) * 1e6:.1f} us"
            )
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    verdicts = []
    for name, path, n, batch, against, bound in TARGETS:
        match = [
            r
            for r in rows
            if (r["estimator"], r["path"], r["hidden"], r["batch"]) == (name, path, n, batch)
        ]
        if not match:
            continue
        ratio = match[0][f"ratio_to_{against}"]
        verdicts.append(
            {
                "estimator": name,
                "hidden": n,
                "batch": batch,
                "against": against,
                "ratio": ratio,
                "bound": bound,
                "compiled": path == "learner-compiled",
                "met": ratio <= bound,
            }
        )
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print {'rows': [...]} as JSON")
    parser.add_argument("--quick", action="store_true", help="few calls (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-generic", action="store_true", help="skip the torch.func path")
    parser.add_argument(
        "--learner-only", action="store_true", help="only the whole learner step rows (B=1)"
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also the learner rows with compile: true (a C++ compiler; seconds of warm-up each)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    calls = 20 if args.quick else 300
    repeats = 1 if args.quick else args.repeats
    hidden = (32,) if args.quick else HIDDEN
    batches = (1, 4) if args.quick else BATCHES
    rows = [] if args.learner_only else measure(
        hidden, batches, repeats, calls, not args.no_generic, log
    )
    rows += measure_learner(LEARNER_ESTIMATORS, LEARNER_HIDDEN, repeats, calls, log)
    if args.compiled:
        rows += measure_compiled(LEARNER_ESTIMATORS, LEARNER_HIDDEN, repeats, calls, log)
    if not args.learner_only:
        rows += measure_memory(
            MEMORY_ESTIMATORS, MEMORY_HIDDEN, MEMORY_BATCH, 4 if args.quick else MEMORY_STEPS, log
        )
    targets = check_targets(rows)
    machine = machine_of(args.threads)
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows, "targets": targets}, indent=2))
        return 0
    print(
        f"{machine['cpu']}, {machine['cores']} cores, {args.threads} thread(s), float32, "
        f"median of {repeats} interleaved repeats of {calls} calls"
    )
    if not args.learner_only:
        print(
            f"\n{'estimator':<12} {'path':<12} {'n':>4} {'B':>3} {'x forward':>10} "
            f"{'x pass':>8} {'us/stream-step':>15}"
        )
    for r in rows:
        if r["path"] in ("learner", "learner-compiled", "memory"):
            continue
        print(
            f"{r['estimator']:<12} {r['path']:<12} {r['hidden']:>4} {r['batch']:>3} "
            f"{r['ratio_to_forward']:>10.2f} {r['ratio_to_pass']:>8.2f} "
            f"{r['us_per_stream_step']:>15.2f}"
        )
    print(
        f"\n{'learner step':<12} {'n':>4} {'B':>3} {'us':>8} {'est us':>8} {'fwd us':>8} "
        f"{'x forward (bound)':>18} {'x estimator (bound)':>20} {'x own est':>10} "
        f"{'update us: alone':>16} {'after est':>10}"
    )
    for r in rows:
        if r["path"] == "learner":
            fwd_bound = LEARNER_FORWARD_BOUNDS.get(r["estimator"], float("nan"))
            print(
                f"{r['estimator']:<12} {r['hidden']:>4} {r['batch']:>3} "
                f"{r['us_per_stream_step']:>8.1f} {r['estimator_us']:>8.1f} "
                f"{r['forward_us']:>8.1f} "
                f"{r['ratio_to_forward']:>11.2f} ({fwd_bound:>3g}x)"
                f"{r['ratio_to_estimator']:>13.3f} ({LEARNER_OVERHEAD_BOUND:g}x)"
                f"{r['ratio_to_own_estimator']:>11.3f} "
                f"{r['update_us']:>16.1f} {r['update_after_estimator_us']:>10.1f}"
            )
    compiled = [r for r in rows if r["path"] == "learner-compiled"]
    if compiled:
        print(
            f"\n{'compiled':<12} {'n':>4} {'B':>3} {'us':>8} {'eager us':>9} {'fwd us':>8} "
            f"{'x forward (bound)':>18} {'x eager learner':>16} {'x compiled est':>15} "
            f"{'warm-up s':>10}"
        )
    for r in compiled:
        fwd_bound = LEARNER_FORWARD_BOUNDS.get(r["estimator"], float("nan"))
        print(
            f"{r['estimator']:<12} {r['hidden']:>4} {r['batch']:>3} "
            f"{r['us_per_stream_step']:>8.1f} {r['eager_learner_us']:>9.1f} "
            f"{r['forward_us']:>8.1f} {r['ratio_to_forward']:>11.2f} ({fwd_bound:>3g}x)"
            f"{r['ratio_to_eager_learner']:>17.3f} {r['ratio_to_compiled_estimator']:>15.3f} "
            f"{r['warmup_s']:>10.1f}"
        )
    memory = [r for r in rows if r["path"] == "memory"]
    if memory:
        print(
            f"\n{'memory':<12} {'n':>4} {'B':>3} {'state MiB':>10} {'held MiB':>9} "
            f"{'transient MiB':>14} {'peak / state (bound)':>21}"
        )
    for r in memory:
        state = r["parameters_bytes"] + r["influence_bytes"] + r["optimizer_bytes"]
        print(
            f"{r['estimator']:<12} {r['hidden']:>4} {r['batch']:>3} {state / 2**20:>10.2f} "
            f"{r['held_bytes'] / 2**20:>9.2f} {r['transient_bytes'] / 2**20:>14.2f} "
            f"{r['ratio_to_state']:>14.2f} ({MEMORY_BOUND:g}x)"
        )
    if targets:
        print(
            "\ntargets (pass = S <- a S + u v^T over [B, n, n+1+m]; forward = cell+readout+loss;"
            "\n estimator = the learner's estimator step alone; state = parameters + influence"
            "\n state + Adam's moments, against the learner's peak memory):"
        )
        for t in targets:
            print(
                f"  {t['estimator']:<12} n={t['hidden']:<4} B={t['batch']:<3} "
                f"{t['ratio']:.2f}x {t['against']}{' (compiled)' if t['compiled'] else ''} "
                f"(bound {t['bound']:g}x): "
                f"{'met' if t['met'] else 'MISSED'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
