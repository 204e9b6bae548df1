"""Driver throughput: how many near-instant trials per minute one sweep driver gets through.

Each sweep is the real ``Driver`` run in this process with its own private local Ray
(``num_cpus`` = workers x ``resources.cpus`` = ``--workers``), Optuna and MLflow on SQLite in
a temporary state directory, ``--workers`` (8) actors and trials of a few steps (``add``,
tanh n=4, ``uoro``, ``--steps`` 4, ``log_every`` = steps, one searched float), so that the
learners cost next to nothing and the rate is the driver's: ask, the MLflow child run, the
actor round trip, the reports, the tell. Swept: ``--samplers`` (random, tpe) x ``--trials``
(500 2000 5000; ``--quick``: 100 300).

Per row: ``trials_per_min`` over the loop (the first trial asked to the last one told: Ray's
start, the stores' creation and the shutdown are left out and shown apart as ``startup_s``);
``ask_s_per_trial``, the time inside ``SweepStores.ask`` (Optuna's ask and the sampler's
suggestions; measured by wrapping that method in this benchmark only); ``driver_s_per_trial``,
the loop's time per trial less the ask time (the driver's own cost). Targets: random at least
2,000 trials/min, and the rate at the largest count within 20% of the rate at the smallest;
TPE's ``driver_s_per_trial`` flat within 20% across the counts (its ask grows with the study).

Each row also measures the stores alone, in the same process, on fresh SQLite files beside
the sweep's, for as many trials: ``optuna_floor_s_per_trial`` (the Optuna calls a trial needs
at the least: ask, the estimator's and the rate's suggestions, one report, one user attr, the
tell) and ``mlflow_floor_s_per_trial`` (the MLflow calls of its child run: create with tags,
the params, the last metrics with a tag, terminate). Their sum is the least time one driver
can spend per trial with these stores, whatever it does about Ray and its own Python;
``ceiling_trials_per_min`` is its rate (the two stores' calls overlap in no thread here).

Run: ``python -m rnnsweep.benchmarks.driver_throughput [--trials 500 2000 5000]
[--samplers random tpe] [--quick] [--json] [--profile FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from rnnsweep.benchmarks.machine import cpu_model

RANDOM_TARGET = 2000.0  # trials per minute
FLAT = 0.20  # largest count's figure within 20% of the smallest count's


def spec_dict(sampler: str, trials: int, steps: int, workers: int) -> dict[str, Any]:
    return {
        "name": f"throughput-{sampler}-{trials}",
        "task": "add",
        "hidden": 4,
        "steps": steps,
        "trials": trials,
        "estimators": ["uoro"],
        "fixed": {"log_every": steps},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "sampler": sampler,
        "pruner": "none",
        "checkpoint_every": max(1000, steps),
        "workers": workers,
    }


def run_sweep(sampler: str, trials: int, steps: int, workers: int) -> dict[str, Any]:
    """One sweep through the real ``Driver``; its row (see the module's docstring)."""
    from rnnsweep.orchestrator import spec as spec_
    from rnnsweep.orchestrator.driver import Driver

    spec = spec_.load_spec_dict(spec_dict(sampler, trials, steps, workers))
    marks: dict[str, float] = {}
    ask_total = [0.0]
    with tempfile.TemporaryDirectory(prefix="rnnsweep-throughput-") as state, open(
        os.devnull, "w"
    ) as quiet:

        def on_event(event: Any) -> None:
            if event.kind == "asked":
                marks.setdefault("first_asked", time.perf_counter())

        driver = Driver(spec, state, workers=workers, out=quiet, on_event=on_event)
        stores = driver.stores
        ask, end = stores.ask, stores.end

        def timed_ask() -> Any:
            start = time.perf_counter()
            try:
                return ask()
            finally:
                ask_total[0] += time.perf_counter() - start

        def marked_end(*args: Any, **kwargs: Any) -> None:
            end(*args, **kwargs)
            marks["last_told"] = time.perf_counter()

        stores.ask, stores.end = timed_ask, marked_end  # instance attributes: this run only
        started = time.perf_counter()
        summary = driver.run()
        total = time.perf_counter() - started
    span = marks["last_told"] - marks["first_asked"]
    return {
        "sampler": sampler,
        "trials": trials,
        "completed": summary.get("states", {}).get("COMPLETE", 0),
        "trials_per_min": trials / span * 60.0,
        "driver_s_per_trial": (span - ask_total[0]) / trials,
        "ask_s_per_trial": ask_total[0] / trials,
        "loop_s": span,
        "startup_s": total - span,
    }


def store_floor(sampler: str, trials: int) -> dict[str, float]:
    """Seconds per trial of the least Optuna and MLflow work a trial needs (see the module's
    docstring), over ``trials`` trials on fresh SQLite files; the sweep's own sampler."""
    import optuna
    from mlflow.entities import Metric, Param, RunTag

    from rnnsweep.orchestrator import spec as spec_
    from rnnsweep.orchestrator.tracking import client

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = spec_.load_spec_dict(spec_dict(sampler, trials, 4, 1))
    with tempfile.TemporaryDirectory(prefix="rnnsweep-floor-") as state:
        study = optuna.create_study(
            storage=f"sqlite:///{state}/optuna.db", sampler=spec_.make_sampler(spec, spec.seed)
        )
        started = time.perf_counter()
        for _ in range(trials):
            trial = study.ask()
            trial.suggest_categorical("estimator", ["uoro"])
            trial.suggest_float("lr", 1e-4, 1e-2, log=True)
            trial.report(1.0, 4)
            trial.set_user_attr("mlflow_run_id", "0" * 32)
            study.tell(trial, 1.0)
        optuna_s = (time.perf_counter() - started) / trials
        mlflow = client(f"sqlite:///{state}/mlflow.db")
        experiment = mlflow.create_experiment("floor")
        parent = mlflow.create_run(experiment).info.run_id
        params = [Param(k, "1") for k in ("estimator", "task", "cell", "hidden", "steps", "lr")]
        started = time.perf_counter()
        for number in range(trials):
            tags = {"mlflow.parentRunId": parent, "optuna_trial_number": str(number)}
            run = mlflow.create_run(experiment, tags=tags, run_name=f"trial-{number}").info.run_id
            mlflow.log_batch(run, params=params)
            metrics = [Metric(k, 1.0, 0, 4) for k in ("loss", "final_loss")]
            mlflow.log_batch(run, metrics=metrics, tags=[RunTag("optuna_state", "COMPLETE")])
            mlflow.set_terminated(run, "FINISHED")
        mlflow_s = (time.perf_counter() - started) / trials
    return {
        "optuna_floor_s_per_trial": optuna_s,
        "mlflow_floor_s_per_trial": mlflow_s,
        "ceiling_trials_per_min": 60.0 / (optuna_s + mlflow_s),
    }


def flat(first: float, last: float) -> bool:
    return abs(last - first) <= FLAT * first


def table(rows: list[dict[str, Any]], workers: int, steps: int) -> str:
    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; {workers} workers, "
        f"uoro on add (tanh n=4), {steps} steps a trial; Optuna and MLflow on SQLite",
        "",
        "| sampler | trials | completed | trials/min | driver s/trial (less ask) "
        "| ask s/trial | loop s | startup s | stores alone: Optuna + MLflow s/trial "
        "| ceiling trials/min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['trials']:,} | {r['completed']:,} | "
            f"{r['trials_per_min']:,.0f} | {r['driver_s_per_trial'] * 1e3:.1f} ms | "
            f"{r['ask_s_per_trial'] * 1e3:.1f} ms | {r['loop_s']:.1f} | {r['startup_s']:.1f} | "
            f"{r['optuna_floor_s_per_trial'] * 1e3:.1f} + "
            f"{r['mlflow_floor_s_per_trial'] * 1e3:.1f} ms | "
            f"{r['ceiling_trials_per_min']:,.0f} |"
        )
    lines.append("")
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["trials"])
        first, last = mine[0], mine[-1]
        curve = " -> ".join(f"{r['trials_per_min']:,.0f}" for r in mine)
        counts = ", ".join(str(r["trials"]) for r in mine)
        lines.append(f"{sampler}: trials/min {curve} (at {counts} trials)")
        if sampler == "random":
            best = min(r["trials_per_min"] for r in mine)
            ceiling = min(r["ceiling_trials_per_min"] for r in mine)
            lines.append(
                f"  target >= {RANDOM_TARGET:,.0f} trials/min: "
                f"{'met' if best >= RANDOM_TARGET else 'MISSED'} (lowest {best:,.0f}; the "
                f"stores alone allow at most {ceiling:,.0f} here, "
                f"{best / ceiling:.0%} of it reached)"
            )
            if len(mine) > 1:
                met = flat(first["trials_per_min"], last["trials_per_min"])
                lines.append(
                    f"  target: rate at {last['trials']} within 20% of rate at "
                    f"{first['trials']}: {'met' if met else 'MISSED'} "
                    f"({last['trials_per_min'] / first['trials_per_min']:.2f}x)"
                )
        else:
            driver = " -> ".join(f"{r['driver_s_per_trial'] * 1e3:.1f}" for r in mine)
            ask = " -> ".join(f"{r['ask_s_per_trial'] * 1e3:.1f}" for r in mine)
            lines.append(f"  driver ms/trial less ask: {driver}; ask ms/trial: {ask}")
            ratio = last["driver_s_per_trial"] / first["driver_s_per_trial"]
            met = flat(first["driver_s_per_trial"], last["driver_s_per_trial"])
            if len(mine) > 1:
                lines.append(
                    f"  target: driver time per trial flat within 20%: "
                    f"{'met' if met else 'MISSED'} ({ratio:.2f}x)"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=None)
    parser.add_argument("--samplers", nargs="+", default=["random", "tpe"])
    parser.add_argument("--quick", action="store_true", help="--trials 100 300")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", help="cProfile the sweeps into this file (pstats)")
    args = parser.parse_args(argv)
    counts = args.trials or ([100, 300] if args.quick else [500, 2000, 5000])
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    rows = []
    for sampler in args.samplers:
        for trials in counts:
            row = run_sweep(sampler, trials, args.steps, args.workers)
            rows.append({**row, **store_floor(sampler, trials)})
            if not args.json:
                print(f"done: {sampler} x {trials}", file=sys.stderr, flush=True)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
    else:
        print(table(rows, args.workers, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
