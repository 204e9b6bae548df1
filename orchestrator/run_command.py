"""``rnnsweep run``: train one online learner end to end, with MLflow tracking and checkpoints.

Everything is validated before any work starts (unknown ``--set`` keys, bad values and output
paths that cannot be written exit 2). Checkpoints are written atomically every
``--checkpoint-every`` steps, at the end, and on Ctrl-C or SIGTERM (the path and the resume
command are printed, exit 130); ``--resume PATH`` continues a checkpointed run bit-for-bit, in
the same MLflow run, with no metric step written twice, and keeps writing its checkpoint to
PATH unless ``--checkpoint`` names another file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from typing import Any

import yaml

from rnnsweep.algorithms import checkpoint_file
from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.algorithms.learner import (
    Learner,
    LearnerSpec,
    learner_from,
    save_checkpoint,
    split_settings,
    unused_settings,
)
from rnnsweep.algorithms.settings import RESUME_SAFE_KEYS, SETTINGS, did_you_mean
from rnnsweep.orchestrator import output_path
from rnnsweep.orchestrator.environment_fault import EnvironmentFault
from rnnsweep.orchestrator.progress import ProgressLine
from rnnsweep.orchestrator.spec_file import read_yaml
from rnnsweep.orchestrator.state_dir import resolve as resolve_state_dir
from rnnsweep.orchestrator.sweep_settings import SWEEP_SETTINGS

EXPERIMENT = "rnnsweep-runs"
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``["lr=0.01", "truncation=8"]`` -> ``{"lr": 0.01, "truncation": 8}`` (YAML scalars)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, dict | list):
            raise ValueError(f"--set {key}: expected a single value, got {text!r}")
        settings[key.strip()] = value
    return settings


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def load_run_config(path: str, estimator: str | None) -> dict[str, Any]:
    """A run described in YAML: ``{task, estimator, cell, hidden, steps, seed, dtype,
    settings}``, or a ``rnnsweep best`` file (``best: [{run: {...}}, ...]``), from which
    ``estimator`` picks one (required when it holds several)."""
    try:
        data = read_yaml(path, "run file")  # the sweep file's limits: 1 MB, aliases
    except ValueError as error:
        raise ValueError(f"--config {error}") from None
    if isinstance(data, dict) and isinstance(data.get("best"), list):
        entries = [entry for entry in data["best"] if isinstance(entry, dict)]
        runs = [entry["run"] for entry in entries if isinstance(entry.get("run"), dict)]
        if estimator:
            runs = [r for r in runs if r.get("estimator") == estimator]
            if not runs:
                notes = [e.get("note") for e in entries if e.get("estimator") == estimator]
                why = f": {notes[0]}" if notes and notes[0] else ""
                raise ValueError(
                    f"--config {path} has no run for estimator {estimator!r}{why}"
                )
        if not runs:
            raise ValueError(f"--config {path}: its 'best' list holds no run")
        if len(runs) != 1:
            names = ", ".join(str(r.get("estimator", "?")) for r in runs)
            raise ValueError(
                f"--config {path} holds several runs ({names}): pick one with --estimator"
            )
        data = runs[0]
    if not isinstance(data, dict) or "task" not in data or "estimator" not in data:
        raise ValueError(f"--config {path}: expected a mapping with 'task' and 'estimator'")
    for key in data:
        if key not in RUN_FILE_KEYS:
            close = did_you_mean(str(key), RUN_FILE_KEYS)
            raise ValueError(
                f"--config {path}: unknown key {key!r}{close}; known: {', '.join(RUN_FILE_KEYS)}"
            )
    for key in ("task", "estimator"):
        if not isinstance(data[key], str):
            raise ValueError(f"--config {path}: {key} must be a name, got {data[key]!r}")
    for key in ("cell", "hidden", "seed", "dtype"):
        if key in data:
            data[key] = SETTINGS[key].check(data[key], f"--config {path}: ")
    if data.get("steps") is not None:  # a sweep's steps per trial, a run's steps
        data["steps"] = SWEEP_SETTINGS["steps"].check(data["steps"], f"--config {path}: ")
    settings = data.get("settings", {})
    if settings is None:
        data["settings"] = settings = {}
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ValueError(
            f"--config {path}: settings must be a mapping of setting names to values, "
            f"got {settings!r}"
        )
    return data


# the keys of a run file (``load_run_config``)
RUN_FILE_KEYS = ("task", "estimator", "cell", "hidden", "steps", "seed", "dtype", "settings")


def resume_changes(args, saved_spec: dict[str, Any]) -> dict[str, Any]:
    """The ``--set`` (and ``--probe-every``) values a resumed run takes from its next step:
    keys marked safe to change on resume in the settings table, checked against their bounds;
    ``ValueError`` naming any other key and the safe ones."""
    changes = parse_sets(args.set or [])
    if args.probe_every is not None:
        changes["probe_every"] = args.probe_every
    refused = [key for key in changes if key not in RESUME_SAFE_KEYS]
    if refused:
        raise ValueError(
            f"--resume {args.resume!r}: {', '.join(refused)} cannot change mid-run; safe to "
            f"change on resume: {', '.join(RESUME_SAFE_KEYS)} (start a new run for others)"
        )
    for key, value in changes.items():
        changes[key] = SETTINGS[key].check(value, "--set: ")
    if "probe_every" in changes and not saved_spec.get("settings", {}).get("probe_every"):
        if changes["probe_every"]:
            raise ValueError(
                f"--resume {args.resume!r}: the run has no probe; probe_every can change or "
                "turn it off on resume, not start one (its windows need the states before)"
            )
    return {k: v for k, v in changes.items() if saved_spec.get("settings", {}).get(k) != v}


def build_learner(args) -> tuple[Learner, dict[str, Any]]:
    """A new learner from the arguments, or the one in ``--resume`` (plus its saved extras)."""
    if args.resume:
        if args.config:
            raise ValueError(
                f"--config {args.config} and --resume {args.resume}: a checkpoint holds its "
                "run's settings; give one of them"
            )
        saved = checkpoint_file.read(args.resume)
        saved_spec = saved.snapshot["spec"]
        for key in ("task", "estimator", "cell", "hidden", "seed", "dtype"):
            given = getattr(args, key)
            if given is not None and given != saved_spec.get(key):
                raise ValueError(
                    f"--{key} {given} contradicts the checkpoint {args.resume!r} "
                    f"({key} = {saved_spec.get(key)})"
                )
        saved_spec["device"] = args.device  # a run may continue on another device
        changes = resume_changes(args, saved_spec)
        extra = dict(saved.extra)
        if changes:  # the checkpoint's spec is the run's: the new values go into both
            before = saved_spec.get("settings", {})
            extra["resume_changes"] = ", ".join(
                f"{k} {before.get(k, 'default')} -> {v}" for k, v in changes.items()
            )
            saved_spec["settings"] = {**before, **changes}
            spec = LearnerSpec(**{**saved_spec, "device": args.device})
            unused = unused_settings(spec, split_settings(spec)[4])
            if unused:
                raise ValueError("; ".join(unused))
        return learner_from(saved, checkpoint_file.describe(args.resume)), extra
    base: dict[str, Any] = {}
    if args.config:
        base = load_run_config(args.config, args.estimator)
        args.task = args.task or base["task"]
        args.estimator = args.estimator or base["estimator"]
        args.cell = args.cell or base.get("cell")
        if args.steps is None:
            args.steps = base.get("steps", 100_000)
    if not args.task or not args.estimator:
        raise ValueError("--task and --estimator are required (or --resume a checkpoint)")
    settings = {**base.get("settings", {}), **parse_sets(args.set or [])}
    if args.probe_every is not None:
        settings["probe_every"] = args.probe_every
    run = {key: getattr(args, key) for key in ("cell", "hidden", "seed", "dtype")}
    run = {k: base.get(k, SETTINGS[k].default) if v is None else v for k, v in run.items()}
    spec = LearnerSpec(
        task=args.task, estimator=args.estimator, device=args.device, settings=settings, **run
    )
    optimizer = split_settings(spec)[4]
    unused = unused_settings(spec, optimizer)
    if unused:
        raise ValueError("; ".join(unused))
    return Learner(spec), {}


def _check_resumed_run(uri: str, run_id: str, step: int, changed: bool, args) -> None:
    """``ValueError`` (creating nothing) if the checkpoint's MLflow run is not in the store
    ``uri``, or if it already goes past ``step`` while ``changed`` values would write a second
    trajectory into it (skipping the steps it holds)."""
    from rnnsweep.orchestrator.tracking import client
    from rnnsweep.orchestrator.url_secrets import redact

    missing = (
        f"--resume {args.resume}: its MLflow run {run_id} is not in {redact(uri)} (was it "
        "recorded under another --state-dir or --tracking-uri?): give that store, or add "
        "--no-mlflow"
    )
    if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
        raise ValueError(missing)  # (opening the file would create it)
    store = client(uri)
    try:
        store.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow says "not found" in several exception types
        raise ValueError(missing) from None
    if not changed:
        return
    last = max((m.step for m in store.get_metric_history(run_id, "loss")), default=-1)
    if last > step:
        raise ValueError(
            f"--resume {args.resume}: its MLflow run {run_id} already holds steps up to {last}, "
            f"past this checkpoint's step {step} (a later continuation of it); --set would "
            "mix two trajectories in that run: continue from the latest checkpoint, or add "
            "--no-mlflow"
        )


def run_command(args) -> int:
    from rnnsweep.orchestrator.device import resolve_device

    args.device = resolve_device(args.device)
    outputs = [(args.checkpoint, "--checkpoint"), (args.summary_json, "--summary-json")]
    if args.resume and not args.checkpoint:
        args.checkpoint = args.resume  # a continued run keeps its checkpoint up to date
        outputs[0] = (args.resume, "--resume")
    for path, flag in outputs:
        if path:
            try:
                output_path.file_target(path, flag)  # before any work
            except EnvironmentFault as error:
                if flag != "--resume":
                    raise
                raise EnvironmentFault(
                    f"{error} (a continued run keeps its checkpoint up to date: give "
                    "--checkpoint PATH where it can be written)"
                ) from None
    learner, extra = build_learner(args)
    changed = extra.pop("resume_changes", "")
    if changed:
        print(f"from step {learner.counters['t']}: {changed}", file=sys.stderr)
    steps = args.steps if not args.resume else (args.steps or learner.counters["planned"])
    planned = learner.counters["planned"]
    if planned and steps != planned:
        try:  # --steps above the checkpoint's plan extends the run
            learner.population.replan(steps)
        except ValueError as error:
            raise ValueError(f"--steps {steps} for checkpoint {args.resume!r}: {error}") from None
    tracker = None
    last_logged = -1
    if not args.no_mlflow:
        from rnnsweep.orchestrator.sweep_store import open_error
        from rnnsweep.orchestrator.tracking import Tracker, check_store, default_tracking_uri
        from rnnsweep.orchestrator.url_secrets import redact

        state_dir = resolve_state_dir(args.state_dir)
        if not args.tracking_uri:
            output_path.folder_target(state_dir, "--state-dir")
        uri = args.tracking_uri or default_tracking_uri(state_dir)
        check_store(uri)  # creates nothing: a file store, an unreachable server, ...
        spec = learner.spec
        run_id = extra.get("mlflow_run_id")
        if run_id:
            _check_resumed_run(uri, run_id, learner.counters["t"], bool(changed), args)
        try:
            tracker = Tracker(
                uri,
                EXPERIMENT,
                run_name=f"{spec.task}-{spec.estimator}-s{spec.seed}",
                run_id=run_id,
                tags={"task": spec.task, "estimator": spec.estimator, "cell": spec.cell},
            )
        except Exception as error:  # noqa: BLE001 - any failure makes the store unusable here
            raise ValueError(open_error(f"the MLflow store {redact(uri)}", error)) from None
        last_logged = tracker.resume_step()
        tracker.log_params(
            {
                "task": spec.task,
                "estimator": spec.estimator,
                "cell": spec.cell,
                "hidden": learner.cell.hidden,
                "seed": spec.seed,
                "dtype": spec.dtype,
                "steps": steps,
                **learner.config,
                **spec.settings,
            }
        )
        if planned and steps != planned:  # the run's `steps` param keeps its first value
            tracker.set_tags({"rnnsweep.steps_extended": f"{planned} -> {steps}"})
        if changed:  # so do the others: the tag names the step the new values start at
            tracker.set_tags({f"rnnsweep.resume_set.{learner.counters['t']}": changed})
        extra["mlflow_run_id"] = tracker.run_id
        print(f"MLflow run {tracker.run_id} at {redact(uri)}", file=sys.stderr)

    checkpoint_every = args.checkpoint_every
    progress = ProgressLine(steps, f"{learner.spec.estimator} on {learner.spec.task} ")
    next_checkpoint = [learner.counters["t"] + checkpoint_every]
    interrupted = [False]

    def on_report(report: dict[str, Any]) -> None:
        fields = {"loss": report["loss"], "steps/s": float(int(report["steps_per_sec"]))}
        if "bpc" in report:
            fields["bpc"] = report["bpc"]
        progress.update(report["step"], **fields)
        if tracker is not None and report["step"] > last_logged:
            tracker.log_metrics(report["step"], report)
            for window in report.get("probe", ()):  # each probe window at its own step
                tracker.log_metrics(window["step"], window["metrics"])
        if args.checkpoint and report["step"] >= next_checkpoint[0]:
            if tracker is not None:
                tracker.flush()
            save_checkpoint(learner, args.checkpoint, extra)
            next_checkpoint[0] = report["step"] + checkpoint_every

    def stop_requested() -> bool:
        return interrupted[0]

    stops = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers and `kill` send
    previous = {signum: signal.getsignal(signum) for signum in stops}

    def on_stop(signum, frame) -> None:  # finish the current report chunk, then stop
        if interrupted[0]:  # a second one: as if we were not here
            signal.signal(signum, previous[signum])
        interrupted[0] = True

    for signum in stops:
        signal.signal(signum, on_stop)
    try:
        summary = learner.run(steps, on_report, stop_requested)
        if args.checkpoint:
            if tracker is not None:
                tracker.flush()
            save_checkpoint(learner, args.checkpoint, extra)
    except BaseException:
        if tracker is not None:
            tracker.close("FAILED")
        raise
    finally:
        for signum in stops:
            signal.signal(signum, previous[signum])
        progress.close()
    summary.update(
        {
            "task": learner.spec.task,
            "estimator": learner.spec.estimator,
            "cell": learner.spec.cell,
            "hidden": learner.cell.hidden,
            "seed": learner.spec.seed,
            "interrupted": interrupted[0],
        }
    )
    if tracker is not None:
        summary["mlflow_run_id"] = tracker.run_id
        tracker.log_metrics(
            summary["steps"],
            {
                f"final_{k}" if not k.startswith("final") else k: v
                for k, v in summary.items()
                if k in ("final_loss", "final_bpc", "steps_per_sec")
            },
        )
        tracker.set_tags({"diverged": summary["diverged"], "reason": summary["reason"]})
        status = "KILLED" if interrupted[0] else "FAILED" if summary["diverged"] else "FINISHED"
        tracker.close(status)
    if args.summary_json:
        write_json_atomic(args.summary_json, summary)
    if interrupted[0] and not summary["diverged"]:
        where = (
            f"checkpoint {args.checkpoint}; continue with `rnnsweep run --resume "
            f"{args.checkpoint}`"
            if args.checkpoint
            else "no --checkpoint was given, so it cannot be continued"
        )
        print(f"interrupted at step {summary['steps']}: {where}", file=sys.stderr)
        return 130
    state = "diverged: " + summary["reason"] if summary["diverged"] else "done"
    unit = "bpc" if learner.task.bits_per_char else "nats"
    final = summary.get("final_bpc", summary["final_loss"])
    print(
        f"{state}; final loss {final:.4f} {unit} over the last 10% of {steps} steps; "
        f"{summary['steps_per_sec']:.0f} stream-steps/s",
        file=sys.stderr,
    )
    return 0
