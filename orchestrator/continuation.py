"""Continuing COMPLETE trials to a raised step budget (``rnnsweep extend NAME --steps S``).

Optuna's COMPLETE is final (a finished trial never goes back to RUNNING, nor changes its
value), so a COMPLETE trial N that ran fewer than S steps continues as a *continuation trial*
M: a new Optuna trial with N's parameters and distributions, created RUNNING with N's
estimator, settings and seed, the user attr ``continues = N``, N's MLflow run id and a copy of
N's final checkpoint (``trial-M.pt``). N stays as it was, with its value at the old budget
(Optuna refuses any write to a finished trial, attributes included): the link is M's
``continues``. ``resume`` then takes M up like any trial a stopped driver left RUNNING: it
restores the checkpoint, ``Population.replan`` moves the final-loss tail to the new end, and
the metrics continue in N's MLflow run after its last logged step, so that the run shows one
curve with every step once (tags ``rnnsweep.continues_trial`` and ``rnnsweep.steps_extended``).

Counting: continuations are not new samples, so they count neither towards the spec's
``trials`` nor in the estimator split or a finite space's tries (``originals``); a superseded
trial (one some trial ``continues``) is left out of the best per estimator (``superseded``).

Order of the writes, so that a command killed half-way leaves a resumable record: the trial
(without ``checkpoint_step``), then the checkpoint copy, then ``checkpoint_step`` (killed before
it, M starts again from step 0 with N's seed and settings, in N's run, logging only steps past
those it holds); a trial that already continues N is never created twice."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.orchestrator import sweep_store

CONTINUES = "continues"
# the attributes a continuation takes over from its origin
INHERITED = ("estimator", "settings", "seed", "mlflow_run_id", "timing", "pack")


def originals(trials: Iterable[Any]) -> list[Any]:
    """The trials that are samples of their own (not continuations of another)."""
    return [t for t in trials if CONTINUES not in t.user_attrs]


def superseded(trials: Iterable[Any]) -> set[int]:
    """The numbers of the trials another continued to a longer budget (their values are the
    old budget's)."""
    return {t.user_attrs[CONTINUES] for t in trials if CONTINUES in t.user_attrs}


def to_continue(
    state_dir: str, record: dict[str, Any], trials: list[Any], steps: int
) -> list[Any]:
    """The COMPLETE trials that ran fewer than ``steps`` steps, not yet continued, whose final
    checkpoint is kept."""
    taken = superseded(trials)
    return [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.number not in taken
        and t.user_attrs.get("steps_done", steps) < steps
        and os.path.exists(sweep_store.checkpoint_path(state_dir, record["name"], t.number))
    ]


def start(
    state_dir: str, record: dict[str, Any], study: Any, origins: list[Any], old: int, new: int
) -> dict[int, int]:
    """Create a RUNNING continuation trial for each of ``origins`` (see the module's doc);
    returns ``{origin number: continuation number}``."""
    import optuna

    from rnnsweep.orchestrator.tracking import client

    name = record["name"]
    made = {}
    for origin in origins:
        attrs = {k: origin.user_attrs[k] for k in INHERITED if k in origin.user_attrs}
        template = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=origin.params,
            distributions=origin.distributions,
            user_attrs={**attrs, CONTINUES: origin.number},
        )
        study.add_trial(template)
        (frozen,) = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(CONTINUES) == origin.number
        ]
        number, trial = frozen.number, optuna.trial.Trial(study, frozen._trial_id)
        source = sweep_store.checkpoint_path(state_dir, name, origin.number)
        with open(source, "rb") as handle:
            data = handle.read()
        write_atomic(sweep_store.checkpoint_path(state_dir, name, number), data)
        trial.set_user_attr("checkpoint_step", origin.user_attrs.get("steps_done", 0))
        trial.set_user_attr("steps_done", origin.user_attrs.get("steps_done", 0))
        run_id = attrs.get("mlflow_run_id")
        if run_id:
            runs = client(record["tracking_uri"])
            runs.set_tag(run_id, "rnnsweep.continues_trial", str(origin.number))
            runs.set_tag(run_id, "rnnsweep.steps_extended", f"{old} -> {new}")
        made[origin.number] = number
    return made
