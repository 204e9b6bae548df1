"""``rnnsweep launch | resume | status | best``: the sweep commands over the driver and the
sweep's stores."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import yaml

from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.state_dir import resolve as resolve_state_dir


def launch_command(args) -> int:
    from rnnsweep.orchestrator.spec_file import read_spec_file

    data = read_spec_file(args.spec)  # limits first: a hostile file costs no heavy import
    from rnnsweep.orchestrator import spec as spec_

    spec = spec_.load_spec_dict(data, source=args.spec)
    if args.name:
        spec = spec_.load_spec_dict({**spec.to_dict(), "name": args.name}, source=args.spec)
    workers = args.workers or spec.workers
    if args.dry_run:
        print(spec_.dry_run_text(dataclasses.replace(spec, workers=workers)))
        return 0
    state_dir = resolve_state_dir(args.state_dir or spec.storage.state_dir)
    if os.path.exists(sweep_store.record_path(state_dir, spec.name)):
        raise ValueError(
            f"sweep {spec.name!r} already exists in {state_dir}; continue it with "
            f"`rnnsweep resume {spec.name}` or launch with --name NEW_NAME"
        )
    return _drive(spec, state_dir, workers, resume=False)


def resume_command(args) -> int:
    from rnnsweep.orchestrator import spec as spec_

    state_dir, record = sweep_store.read_record(args.state_dir, args.name)
    spec = spec_.load_spec_dict(
        record["spec"], source=sweep_store.record_path(state_dir, args.name)
    )
    workers = args.workers or spec.workers
    return _drive(spec, state_dir, workers, resume=True)


def _drive(spec, state_dir: str, workers: int, resume: bool) -> int:
    from rnnsweep.orchestrator.driver import Driver
    from rnnsweep.orchestrator.store_outage import StoreOutage

    os.makedirs(state_dir, exist_ok=True)
    driver = Driver(spec, state_dir, workers)
    verb = "resuming" if resume else "launching"
    print(
        f"{verb} sweep {spec.name!r}: {spec.trials} trials, {workers} worker(s); state in "
        f"{state_dir}",
        file=sys.stderr,
    )
    try:
        summary = driver.run(resume=resume)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: continue with `rnnsweep resume {spec.name} --state-dir {state_dir}`",
            file=sys.stderr,
        )
        return 130
    except StoreOutage as outage:
        print(
            f"\nstopped: {outage}; trials and checkpoints are kept: continue with "
            f"`rnnsweep resume {spec.name} --state-dir {state_dir}`",
            file=sys.stderr,
        )
        return 130
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary["states"].items()))
    print(f"sweep {spec.name!r} done: {states}", file=sys.stderr)
    for estimator, best in sorted(summary["best"].items()):
        print(f"  best {estimator}: {best['value']:.4f} (trial {best['trial']})", file=sys.stderr)
    print(f"browse: rnnsweep ui {spec.name} --state-dir {state_dir}", file=sys.stderr)
    return 0


def trial_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    study = sweep_store.load_study(record)
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps_done = t.user_attrs.get("steps_done")
        if steps_done is None and t.intermediate_values:
            steps_done = max(t.intermediate_values)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "estimator": t.user_attrs.get("estimator", t.params.get("estimator")),
                "params": t.user_attrs.get("settings", dict(t.params)),
                "value": t.value,
                "steps_done": steps_done or 0,
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("reason", ""),
            }
        )
    return rows


def status_command(args) -> int:
    state_dir, record = sweep_store.read_record(args.state_dir, args.name)
    rows = trial_rows(record)
    if args.json:
        print(
            json.dumps(
                {
                    "name": record["name"],
                    "storage": record["optuna_storage"],
                    "tracking_uri": record["tracking_uri"],
                    "trials": [
                        {
                            k: r[k]
                            for k in (
                                "number",
                                "state",
                                "estimator",
                                "params",
                                "value",
                                "steps_done",
                                "mlflow_run_id",
                            )
                        }
                        for r in rows
                    ],
                },
                indent=2,
                default=str,
            )
        )
        return 0
    spec = record["spec"]
    print(
        f"sweep {record['name']}: {len(rows)}/{spec['trials']} trials, task {spec['task']}, "
        f"{spec['steps']} steps each\nstorage {record['optuna_storage']}\n"
        f"tracking {record['tracking_uri']}"
    )
    print(
        f"{'trial':>5} {'state':<9} {'estimator':<18} {'value':>9} {'steps':>9}  "
        f"{'mlflow run':<32}  params"
    )
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else "-"
        params = " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()
        )
        reason = f"  ({r['reason']})" if r["reason"] else ""
        print(
            f"{r['number']:>5} {r['state']:<9} {r['estimator'] or '-':<18} {value:>9} "
            f"{r['steps_done']:>9}  {r['mlflow_run_id'] or '-':<32}  {params}{reason}"
        )
    return 0


def best_command(args) -> int:
    from rnnsweep.orchestrator.stores import sweep_summary

    state_dir, record = sweep_store.read_record(args.state_dir, args.name)
    spec = record["spec"]
    summary = sweep_summary(sweep_store.load_study(record), spec["objective"]["direction"])
    if not summary["best"]:
        raise ValueError(f"sweep {args.name!r} has no complete trial yet")
    runs = []
    for estimator, best in sorted(summary["best"].items()):
        settings = dict(best["settings"])
        task_settings = spec.get("task_settings") or {}
        runs.append(
            {
                "estimator": estimator,
                "value": best["value"],
                "trial": best["trial"],
                "command": _run_command(
                    spec, estimator, {**task_settings, **settings}, best["seed"]
                ),
                "run": {
                    "task": spec["task"],
                    "estimator": estimator,
                    "cell": spec["cell"],
                    "hidden": spec["hidden"],
                    "steps": spec["steps"],
                    "seed": best["seed"],
                    "dtype": spec["dtype"],
                    "settings": {**task_settings, **settings},
                },
            }
        )
    text = yaml.safe_dump(
        {"sweep": args.name, "objective": spec["objective"], "best": runs}, sort_keys=False
    )
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _run_command(
    spec: dict[str, Any], estimator: str, settings: dict[str, Any], seed: int | None
) -> str:
    sets = " ".join(f"{k}={v}" for k, v in settings.items())
    return (
        f"rnnsweep run --task {spec['task']} --estimator {estimator} --cell {spec['cell']} "
        f"--hidden {spec['hidden']} --steps {spec['steps']} --dtype {spec['dtype']} "
        f"--seed {seed or 0}" + (f" --set {sets}" if sets else "")
    )
