"""``rnnsweep extend NAME --trials +N --steps S``: raise a finished or stopped sweep's trial
count or step budget in its record, then continue it as ``resume`` does.

``--trials +N`` adds N trials (``--trials N``: N in all, not fewer than the spec has);
``--steps S`` (not below the spec's) is the budget of every trial: a stopped trial continues
from its checkpoint up to S, a new trial runs S steps, and a COMPLETE trial continues from its
final checkpoint as a continuation trial (``continuation``: Optuna's COMPLETE is final, so a new
trial that names its origin, in the origin's MLflow run). PRUNED and FAILED trials stay as they
ended. The new spec is validated as a whole (bounds of the settings table) before the record
changes; a driver holding the sweep refuses it (exit 3), and the continuations are created
under the sweep's lease."""

from __future__ import annotations

import sys
from typing import Any

from rnnsweep.orchestrator import continuation, sweep_store


def _trials(text: str, current: int) -> int:
    """``"+4"`` -> current + 4; ``"10"`` -> 10; ``ValueError`` naming the option otherwise."""
    try:
        amount = int(text)
    except ValueError:
        raise ValueError(f"--trials expects +N (more) or N (in all), got {text!r}") from None
    total = current + amount if text.strip().startswith("+") else amount
    if total < current:
        raise ValueError(f"--trials {text}: the sweep has {current} trials; it cannot shrink")
    return total


def extended_spec(spec: dict[str, Any], trials: str | None, steps: int | None) -> dict[str, Any]:
    """The record's ``spec`` with the new ``trials`` (``+N`` or ``N``) and ``steps``;
    ``ValueError`` (exit 2) for a decrease or a value the spec refuses."""
    from rnnsweep.orchestrator import spec as spec_

    new = dict(spec)
    if trials is not None:
        new["trials"] = _trials(trials, spec["trials"])
    if steps is not None:
        if steps < spec["steps"]:
            raise ValueError(
                f"--steps {steps}: below the sweep's {spec['steps']}; it cannot shrink"
            )
        new["steps"] = steps
    spec_.load_spec_dict(new)  # bounds (trials, steps) as a launch checks them
    return new


def extend_command(args) -> int:
    from rnnsweep.orchestrator import spec as spec_
    from rnnsweep.orchestrator.sweep_commands import _drive, _refuse_if_driven, _workers

    if args.trials is None and args.steps is None:
        raise ValueError("give --trials +N and/or --steps S")
    state_dir, record = sweep_store.read_record(args.state_dir, args.name)
    _refuse_if_driven(record)
    old = record["spec"]
    new = extended_spec(old, args.trials, args.steps)
    origins: list[Any] = []
    if new["steps"] != old["steps"]:
        trials = sweep_store.load_study(record).get_trials(deepcopy=False)
        origins = continuation.to_continue(state_dir, record, trials, new["steps"])
        _check_unfinished(trials, origins, new["steps"])
    changes = [f"{k} {old[k]} -> {new[k]}" for k in ("trials", "steps") if old[k] != new[k]]
    if changes:
        sweep_store.write_record(state_dir, record["name"], {**record, "spec": new})
    print(f"sweep {record['name']!r}: {', '.join(changes) or 'unchanged'}", file=sys.stderr)
    if origins:
        made = _continue(state_dir, record, origins, old["steps"], new["steps"])
        pairs = ", ".join(f"{n} as {m}" for n, m in made.items())
        print(
            f"  complete trials continue from their final checkpoints to {new['steps']} steps, "
            f"as new trials: {pairs}",
            file=sys.stderr,
        )
    spec = spec_.load_spec_dict(new, source=sweep_store.record_path(state_dir, record["name"]))
    return _drive(spec, state_dir, _workers(args.workers, spec.workers), resume=True)


def _continue(
    state_dir: str, record: dict[str, Any], origins: list[Any], old: int, new: int
) -> dict[int, int]:
    """``continuation.start`` under the sweep's lease (``LeaseHeld``, exit 3, if a driver took
    it since ``_refuse_if_driven``)."""
    from rnnsweep.orchestrator.sweep_commands import _lease_timeout
    from rnnsweep.orchestrator.sweep_lease import SweepLease

    lease = SweepLease(sweep_store.study_url(record), record["name"], _lease_timeout(record))
    lease.acquire()
    try:
        study = sweep_store.load_study(record)
        return continuation.start(state_dir, record, study, origins, old, new)
    finally:
        lease.release()


def _check_unfinished(trials: list[Any], origins: list[Any], steps: int) -> None:
    """``ValueError`` when a stopped trial, or a complete one to continue, has passed the start
    of the new budget's tail (the last 10%, which its final loss averages):
    ``Population.replan`` would refuse it."""
    for trial in [*trials, *origins]:
        running = trial.state.name == "RUNNING"
        if not running and trial not in origins:
            continue
        done = trial.user_attrs.get("checkpoint_step" if running else "steps_done", 0)
        if steps - max(1, steps // 10) < done:
            what = "stopped" if running else "ended"
            raise ValueError(
                f"--steps {steps}: trial {trial.number} {what} at step {done}, inside the new "
                f"budget's last 10%; give at least {done + max(1, done // 9) + 1} steps"
            )
