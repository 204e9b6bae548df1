"""``rnnsweep launch | resume | status | best``: the sweep commands over the driver and the
sweep's stores."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any

import yaml

from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.orchestrator import output_path, sweep_store
from rnnsweep.orchestrator.state_dir import resolve as resolve_state_dir
from rnnsweep.orchestrator.url_secrets import redact


def launch_command(args) -> int:
    from rnnsweep.orchestrator.spec_file import read_spec_file

    data = read_spec_file(args.spec)  # limits first: a hostile file costs no heavy import
    from rnnsweep.orchestrator import spec as spec_

    sets = getattr(args, "set", None) or []
    if sets:
        from rnnsweep.orchestrator.spec_overrides import apply_overrides, blame

        data = apply_overrides(data, sets)
        try:
            spec = spec_.load_spec_dict(data, source=args.spec)
        except spec_.SpecError as error:
            raise blame(error, sets) from None
    else:
        spec = spec_.load_spec_dict(data, source=args.spec)
    if args.name:
        spec = spec_.load_spec_dict({**spec.to_dict(), "name": args.name}, source=args.spec)
    workers = _workers(args.workers, spec.workers)
    if args.dry_run:
        if sets:
            from rnnsweep.orchestrator.spec_overrides import overrides_text

            print(overrides_text(sets))
        storage = dataclasses.replace(
            spec.storage, state_dir=args.state_dir or spec.storage.state_dir
        )  # the state directory this launch would use: --state-dir, else the spec's
        print(spec_.dry_run_text(dataclasses.replace(spec, workers=workers, storage=storage)))
        return 0
    state_dir = resolve_state_dir(args.state_dir or spec.storage.state_dir)
    if os.path.exists(sweep_store.record_path(state_dir, spec.name)):
        _, record = sweep_store.read_record(state_dir, spec.name, creating=True)
        _refuse_if_driven(record)
        same = record["spec"] == sweep_store.recorded_spec(spec.to_dict())
        if record.get("state") != "creating" or not same:
            raise ValueError(
                (sweep_store.half_created(spec.name, state_dir) + " (with its own spec)")
                if record.get("state") == "creating"
                else f"sweep {spec.name!r} already exists in {state_dir}; continue it with "
                f"`rnnsweep resume {spec.name}` or launch with --name NEW_NAME"
            )
        print(f"sweep {spec.name!r} was left half-created: finishing it", file=sys.stderr)
        return _drive(spec, state_dir, workers, resume=True)
    from rnnsweep.orchestrator.tracking import check_store, default_tracking_uri

    check_store(spec.storage.mlflow or default_tracking_uri(state_dir))  # before making anything
    return _drive(spec, state_dir, workers, resume=False)


def _workers(given: int | None, default: int) -> int:
    """``--workers`` (else the spec's), within the settings table's bounds."""
    from rnnsweep.orchestrator.sweep_settings import SWEEP_SETTINGS

    entry = SWEEP_SETTINGS["workers"]
    if given is not None and entry.problem(given):
        raise ValueError(f"--workers must be an integer {entry.bounds_text()}, got {given}")
    return given or default


def resume_command(args) -> int:
    from rnnsweep.orchestrator.finished_sweep import nothing_to_resume

    state_dir, record = sweep_store.read_record(args.state_dir, args.name, creating=True)
    if args.workers is not None:
        _workers(args.workers, 1)  # checked even when nothing is left to run
    states = nothing_to_resume(state_dir, record)
    if states is not None:  # answered before Ray, MLflow or the spec's learners are imported
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items()))
        where = f" --state-dir {state_dir}"
        print(
            f"sweep {args.name!r} is finished ({counts}): nothing to resume; best trials: "
            f"`rnnsweep best {args.name}{where}`",
            file=sys.stderr,
        )
        return 0
    from rnnsweep.orchestrator import spec as spec_

    spec = spec_.load_spec_dict(
        record["spec"], source=sweep_store.record_path(state_dir, args.name)
    )
    workers = _workers(args.workers, spec.workers)
    return _drive(spec, state_dir, workers, resume=True, restart_broken=args.restart_broken)


def _drive(spec, state_dir: str, workers: int, resume: bool, restart_broken=False) -> int:
    from rnnsweep.orchestrator.driver import Driver
    from rnnsweep.orchestrator.store_outage import StoreOutage

    driver = Driver(spec, state_dir, workers, restart_broken=restart_broken)
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
    for estimator, entry in summary["estimators"].items():
        best = entry["best"]
        line = (
            f"{best['value']:.4f} (trial {best['trial']})"
            if best
            else no_complete_text(entry["states"])
        )
        print(f"  best {estimator}: {line}", file=sys.stderr)
    print(f"browse: rnnsweep ui {spec.name} --state-dir {state_dir}", file=sys.stderr)
    return 0


def trial_rows(record: dict[str, Any], study: Any = None) -> list[dict[str, Any]]:
    study = study or sweep_store.load_study(record)
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
                "timing": t.user_attrs.get("timing"),
                "ray_node_id": t.user_attrs.get("ray_node_id"),
                "ray_node_ip": t.user_attrs.get("ray_node_ip"),
                "continues": t.user_attrs.get("continues"),  # (extend --steps) or None
            }
        )
    return rows


def _refuse_if_driven(record: dict[str, Any]) -> None:
    """``LeaseHeld`` (exit 3) naming the driver that holds the sweep now, if one does."""
    from rnnsweep.orchestrator.sweep_lease import held, read_holder

    holder = read_holder(sweep_store.study_url(record), record["name"])
    timeout = _lease_timeout(record)
    if holder is not None and not holder.free_because(timeout):
        raise held(record["name"], holder, timeout)


def _lease_timeout(record: dict[str, Any]) -> float:
    from rnnsweep.orchestrator.sweep_settings import SWEEP_SETTINGS

    return record["spec"].get("lease_timeout", SWEEP_SETTINGS["lease_timeout"].default)


def driver_state(record: dict[str, Any]) -> dict[str, Any]:
    """Whether a driver drives the sweep now, read from its lease (never taken here):
    ``running``, and the last holder's ``host``, ``pid`` and ``heartbeat_age_s`` (``None``
    when no driver of this version ever ran it)."""
    from rnnsweep.orchestrator.sweep_lease import read_holder

    holder = read_holder(sweep_store.study_url(record), record["name"])
    timeout = _lease_timeout(record)
    if holder is None:
        return {"running": False, "host": None, "pid": None, "heartbeat_age_s": None}
    return {
        "running": not holder.free_because(timeout),
        "host": holder.host,
        "pid": holder.pid,
        "heartbeat_age_s": round(holder.age, 1),
    }


def _driver_line(driver: dict[str, Any], rows: list[dict[str, Any]], record, args) -> str:
    from rnnsweep.orchestrator.sweep_lease import duration_text

    if driver["running"]:
        return (
            f"driver running: pid {driver['pid']} on {driver['host']} (heartbeat "
            f"{duration_text(driver['heartbeat_age_s'])} ago)"
        )
    seen = driver["heartbeat_age_s"]
    line = "driver not running"
    if seen is not None:
        line += f" (last seen {duration_text(seen)} ago)"
    unfinished = sum(r["continues"] is None for r in rows) < record["spec"]["trials"] or any(
        r["state"] == "INTERRUPTED" for r in rows
    )
    if unfinished:
        where = f" --state-dir {args.state_dir}" if args.state_dir else ""
        line += f" — `rnnsweep resume {record['name']}{where}` continues it"
    return line


def status_command(args) -> int:
    """One row per trial, or with ``--watch`` the same redrawn every ``--interval`` seconds
    until the sweep is finished (or Ctrl-C: exit 0). Reads the stores only: no Ray, no lease."""
    state_dir, record = sweep_store.read_record(args.state_dir, args.name)
    study = sweep_store.load_study(record)
    if getattr(args, "watch", False):
        from rnnsweep.orchestrator.status_watch import watch

        render = functools.partial(_status, record, study, args, compact=True)
        return watch(render, args.interval, json_lines=args.json)
    print(_status(record, study, args)[0])
    return 0


def _status(record, study, args, compact: bool = False) -> tuple[str, bool]:
    """``status``'s text (or JSON: one line if ``compact``) now, and whether the sweep is
    finished (every trial asked and ended)."""
    import time

    from rnnsweep.orchestrator.sweep_eta import recorded_times

    rows = trial_rows(record, study)
    driver = driver_state(record)
    spec = record["spec"]
    now = time.time()
    live = driver["running"]
    for row in rows:
        state, done = row["state"], row["steps_done"]
        row.update(recorded_times(row["timing"], state, done, spec["steps"], live, now))
    if not driver["running"]:  # RUNNING in Optuna, but no driver runs them
        for row in rows:
            if row["state"] == "RUNNING":
                row["state"] = "INTERRUPTED"
    eta = _sweep_eta(rows, spec, driver["running"])
    ended = ("COMPLETE", "PRUNED", "FAIL")
    asked = sum(r["continues"] is None for r in rows)  # continuations are not new trials
    finished = asked >= spec["trials"] and all(r["state"] in ended for r in rows)
    if args.json:
        keys = ("number", "state", "estimator", "params", "value", "steps_done", "continues")
        keys += ("wall_s", "steps_per_sec", "eta_s", "mlflow_run_id", "ray_node_id", "ray_node_ip")
        document = {
            "name": record["name"],
            "storage": redact(record["optuna_storage"]),
            "tracking_uri": redact(record["tracking_uri"]),
            "driver": driver,
            "eta_s": eta,
            "trials": [{k: r[k] for k in keys} for r in rows],
        }
        return json.dumps(document, indent=None if compact else 2, default=str), finished
    from rnnsweep.orchestrator.param_display import format_params, key_order
    from rnnsweep.orchestrator.progress import format_duration

    def duration(seconds: float | None) -> str:
        return "-" if seconds is None else format_duration(seconds)

    objective = spec["objective"]
    lines = [
        f"sweep {record['name']}: {asked}/{spec['trials']} trials"
        + (f" (+{len(rows) - asked} continued)" if len(rows) > asked else "")
        + f", task {spec['task']}, "
        f"{spec['steps']} steps each, objective {objective['metric']} "
        f"({objective['direction']}); sweep ETA {duration(eta)}",
        f"storage {redact(record['optuna_storage'])}",
        f"tracking {redact(record['tracking_uri'])}",
        _driver_line(driver, rows, record, args),
        f"{'trial':>5} {'state':<11} {'estimator':<18} {objective['metric'][:10]:>10} "
        f"{'steps':>9} {'wall':>8} {'steps/s':>8} {'ETA':>8}  {'mlflow run':<32}  params",
    ]
    order = key_order(r["params"] for r in rows)
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else "-"
        rate = f"{r['steps_per_sec']:.1f}" if r["steps_per_sec"] else "-"
        reason = f"  ({r['reason']})" if r["reason"] else ""
        lines.append(
            f"{r['number']:>5} {r['state']:<11} {r['estimator'] or '-':<18} {value:>10} "
            f"{r['steps_done']:>9} {duration(r['wall_s']):>8} {rate:>8} "
            f"{duration(r['eta_s']):>8}  {r['mlflow_run_id'] or '-':<32}  "
            f"{format_params(r['params'], order)}{reason}"
        )
    return "\n".join(lines), finished


def _sweep_eta(rows: list[dict[str, Any]], spec: dict[str, Any], live: bool) -> float | None:
    """The sweep's ETA (``sweep_eta``) in seconds: its running driver's slots are its RUNNING
    trials (it asks one per free slot); with no driver, a resume's (the spec's workers × pack)."""
    from rnnsweep.orchestrator.sweep_eta import Remaining, sweep_eta

    running = sum(r["state"] == "RUNNING" for r in rows)
    slots = running if live and running else spec["workers"] * spec.get("pack", 1)
    left = [  # the ended ones with 0 steps left: their rates count
        Remaining(
            0 if r["state"] in ("COMPLETE", "PRUNED", "FAIL") else spec["steps"] - r["steps_done"],
            r["steps_per_sec"],
            r["estimator"],
            started=r["state"] in ("RUNNING", "INTERRUPTED"),
        )
        for r in rows
    ]
    asked = sum(r.get("continues") is None for r in rows)
    left += [Remaining(spec["steps"])] * max(0, spec["trials"] - asked)
    eta = sweep_eta(left, slots)
    return None if eta is None else round(eta, 1)


# How ``best`` and ``report`` name the states of an estimator's unfinished trials, in order.
STATE_WORDS = {
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "INTERRUPTED": "interrupted",
    "WAITING": "waiting",
}


def no_complete_text(states: dict[str, int]) -> str:
    """``"no completed trial (3 pruned, 1 failed)"`` from an estimator's count per state."""
    parts = [f"{states[k]} {word}" for k, word in STATE_WORDS.items() if states.get(k)]
    return f"no completed trial ({', '.join(parts) or 'none started'})"


def estimator_summaries(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``sweep_summary``'s entry per estimator of the sweep's spec (and any other a trial
    names), its RUNNING trials counted as INTERRUPTED when no driver runs the sweep."""
    from rnnsweep.orchestrator.stores import sweep_summary

    spec = record["spec"]
    summary = sweep_summary(
        sweep_store.load_study(record), spec["objective"]["direction"], spec["estimators"]
    )
    per = summary["estimators"]
    if any("RUNNING" in e["states"] for e in per.values()) and not driver_state(record)["running"]:
        for entry in per.values():
            if "RUNNING" in entry["states"]:
                entry["states"]["INTERRUPTED"] = entry["states"].pop("RUNNING")
    return per


def best_command(args) -> int:
    if args.output:
        output_path.file_target(args.output, "-o")
    state_dir, record = sweep_store.read_record(args.state_dir, args.name)
    spec = record["spec"]
    runs = []
    for estimator, entry in estimator_summaries(record).items():
        trials = {k.lower(): v for k, v in sorted(entry["states"].items())}
        best = entry["best"]
        if best is None:
            runs.append(
                {
                    "estimator": estimator,
                    "value": None,
                    "note": no_complete_text(entry["states"]),
                    "trials": trials,
                }
            )
            continue
        settings = dict(best["settings"])
        task_settings = spec.get("task_settings") or {}
        runs.append(
            {
                "estimator": estimator,
                "value": best["value"],
                "trial": best["trial"],
                "trials": trials,
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
        write_atomic(args.output, text.encode())
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
