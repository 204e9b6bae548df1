"""The sweep-level keys of the settings table: one ``Setting`` per key of a sweep spec that is
not a learner's (those are in ``rnnsweep.algorithms.settings``, the task's in its task).

Dotted names are nested keys of the spec (``objective.metric`` is ``objective: {metric: ...}``).
``per_member`` is ``None`` for all of them: a sweep has one value, shared by every trial.
"""

from __future__ import annotations

from rnnsweep.tasks.settings import Setting

SAMPLERS = ("tpe", "random", "cmaes", "gp")
PRUNERS = ("median", "none", "hyperband")
ESTIMATOR_CHOICES = ("split", "searched")
PRUNE_SCOPES = ("estimator", "global")


def _sweep(name: str, kind: type, default: object, doc: str, **bounds: object) -> Setting:
    return Setting(name, kind, default, doc, "sweep", per_member=None, **bounds)


SWEEP_TABLE: tuple[Setting, ...] = (
    _sweep("steps", int, None, "learner steps per trial", low=1, derived="required"),
    _sweep("trials", int, None, "trials Optuna asks for", low=1, derived="required"),
    _sweep(
        "checkpoint_every",
        int,
        None,
        "steps between a trial's checkpoints",
        low=1,
        derived="max(1000, steps // 10)",
        sweep_default="max(1000, steps // 10)",
        why=(
            "`rnnsweep run --checkpoint-every` defaults to 10000 (a run the user watches); a "
            "sweep checkpoints about 10 times per trial, so that a lost actor's trial repeats "
            "at most a tenth of its steps, whatever its length"
        ),
    ),
    _sweep("max_retries", int, 2, "restarts of a trial whose actor died", low=0),
    _sweep(
        "lease_timeout",
        float,
        60.0,
        "seconds without a driver's heartbeat after which another driver takes the sweep over",
        low=0.0,
        low_open=True,
    ),
    # At most 1024: each worker is a Ray actor process started at launch; more is a typo.
    _sweep("workers", int, 1, "concurrent actors (trials, or packs of trials)", low=1, high=1024),
    _sweep("pack", int, 1, "trials stepped together as one population per actor", low=1),
    _sweep("sampler", str, "tpe", "Optuna sampler", choices=SAMPLERS),
    _sweep("pruner", str, "median", "Optuna pruner (resources: learner steps)", choices=PRUNERS),
    _sweep(
        "estimator_choice",
        str,
        "split",
        "split: trials shared evenly by the estimators, each searched by its own sampler; "
        "searched: the estimator is one more categorical the sampler chooses",
        choices=ESTIMATOR_CHOICES,
    ),
    _sweep(
        "prune_within",
        str,
        "estimator",
        "estimator: a trial is pruned only against trials of its estimator, task and cell; "
        "global: against every trial",
        choices=PRUNE_SCOPES,
    ),
    _sweep(
        "min_complete_per_estimator",
        int,
        2,
        "completed trials of an estimator (and task and cell) before its trials may be pruned",
        low=0,
    ),
    _sweep(
        "objective.metric",
        str,
        "final_loss",
        "mean loss over the last 10% of steps (final_bpc: in bits per character)",
        choices=("final_loss", "final_bpc"),
    ),
    _sweep(
        "objective.direction",
        str,
        "minimize",
        "whether Optuna minimises or maximises the metric",
        choices=("minimize", "maximize"),
    ),
    _sweep("resources.cpus", float, 1.0, "CPUs per actor", low=0.0, low_open=True),
    _sweep("resources.gpus", float, 0.0, "GPUs per actor; fractions share a GPU", low=0.0),
    _sweep(
        "storage.state_dir",
        str,
        None,
        "state directory; null: $RNNSWEEP_STATE_DIR or ./.rnnsweep",
        nullable=True,
    ),
    _sweep(
        "storage.optuna",
        str,
        None,
        "Optuna database URL; null: SQLite in the state directory",
        nullable=True,
    ),
    _sweep(
        "storage.mlflow",
        str,
        None,
        "MLflow tracking URI; null: SQLite in the state directory",
        nullable=True,
    ),
    _sweep(
        "storage.outage_limit",
        float,
        600.0,
        "seconds an unavailable Optuna or MLflow store is waited for before the driver stops "
        "(resumable)",
        low=0.0,
        low_open=True,
    ),
)
SWEEP_SETTINGS: dict[str, Setting] = {entry.name: entry for entry in SWEEP_TABLE}
