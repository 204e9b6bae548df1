"""``rnnsweep extend NAME --trials +N --steps S``: raise a finished or stopped sweep's trial
count or step budget in its record, then continue it as ``resume`` does.

``--trials +N`` adds N trials (``--trials N``: N in all, not fewer than the spec has);
``--steps S`` (not below the spec's) is the budget of every trial not yet finished: a stopped
trial continues from its checkpoint up to S, a new trial runs S steps. A COMPLETE trial stays
as it is (Optuna's COMPLETE is final): its objective was measured at the old budget. The new
spec is validated as a whole (bounds of the settings table) before the record changes; a
driver holding the sweep refuses it (exit 3)."""

from __future__ import annotations

import sys
from typing import Any

from rnnsweep.orchestrator import sweep_store


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
    if new["steps"] != old["steps"]:
        _check_unfinished(record, new["steps"])
    changes = [f"{k} {old[k]} -> {new[k]}" for k in ("trials", "steps") if old[k] != new[k]]
    if changes:
        sweep_store.write_record(state_dir, record["name"], {**record, "spec": new})
    print(f"sweep {record['name']!r}: {', '.join(changes) or 'unchanged'}", file=sys.stderr)
    if new["steps"] != old["steps"]:
        print(
            f"  completed trials keep their {old['steps']} steps; unfinished and new ones run "
            f"{new['steps']}",
            file=sys.stderr,
        )
    spec = spec_.load_spec_dict(new, source=sweep_store.record_path(state_dir, record["name"]))
    return _drive(spec, state_dir, _workers(args.workers, spec.workers), resume=True)


def _check_unfinished(record: dict[str, Any], steps: int) -> None:
    """``ValueError`` when a stopped trial has passed the start of the new budget's tail (the
    last 10%, which its final loss averages): ``Population.replan`` would refuse it."""
    for trial in sweep_store.load_study(record).get_trials(deepcopy=False):
        done = trial.user_attrs.get("checkpoint_step", 0)
        if trial.state.name == "RUNNING" and steps - max(1, steps // 10) < done:
            raise ValueError(
                f"--steps {steps}: trial {trial.number} stopped at step {done}, inside the new "
                f"budget's last 10%; give at least {done + max(1, done // 9) + 1} steps"
            )
