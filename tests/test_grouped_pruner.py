"""GroupedPruner on real Optuna studies (SQLite files): a trial is pruned only against the
trials of its own estimator, after min_complete of them, composing with the median,
percentile and hyperband pruners; ``within="global"`` compares against every trial."""

from __future__ import annotations

import optuna
import pytest

from rnnsweep.orchestrator.grouped_pruner import GroupedPruner

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(tmp_path, pruner) -> optuna.Study:
    return optuna.create_study(
        study_name="g", storage=f"sqlite:///{tmp_path}/optuna.db", pruner=pruner
    )


def _trial(study, estimator: str, values: list[float], complete: bool = True):
    """A trial of ``estimator`` reporting ``values`` at steps 1, 2, ... (asking the pruner at
    each, as the driver does); told COMPLETE with its last value, or left running."""
    trial = study.ask()
    trial.set_user_attr("estimator", estimator)
    pruned = False
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
        pruned = trial.should_prune()
    if complete:
        study.tell(trial, values[-1])
    return trial, pruned


def _fast_and_slow(study, uoro: int = 2) -> None:
    """tbptt learns fast (0.1), uoro slowly (1.0): two complete tbptt, ``uoro`` complete uoro."""
    for _ in range(2):
        _trial(study, "tbptt", [0.1, 0.1, 0.1])
    for _ in range(uoro):
        _trial(study, "uoro", [1.0, 1.0, 1.0])


MEDIAN = lambda: optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0)  # noqa: E731
PERCENTILE = lambda: optuna.pruners.PercentilePruner(  # noqa: E731
    25.0, n_startup_trials=0, n_warmup_steps=0
)


@pytest.mark.parametrize("inner", [MEDIAN, PERCENTILE], ids=["median", "percentile"])
def test_a_trial_is_pruned_only_against_its_own_estimator(tmp_path, inner):
    study = _study(tmp_path, GroupedPruner(inner(), min_complete=2))
    _fast_and_slow(study)
    # 0.9: worse than every tbptt trial, better than every uoro trial
    _, pruned = _trial(study, "uoro", [0.9, 0.9, 0.9], complete=False)
    assert pruned is False
    _, pruned = _trial(study, "uoro", [1.5, 1.5, 1.5], complete=False)
    assert pruned is True  # worse than its own estimator's trials
    _, pruned = _trial(study, "tbptt", [0.5, 0.5, 0.5], complete=False)
    assert pruned is True


@pytest.mark.parametrize("inner", [MEDIAN, PERCENTILE], ids=["median", "percentile"])
def test_global_scope_compares_across_estimators(tmp_path, inner):
    study = _study(tmp_path, GroupedPruner(inner(), within="global", min_complete=2))
    _fast_and_slow(study)
    _, pruned = _trial(study, "uoro", [0.9, 0.9, 0.9], complete=False)
    assert pruned is True  # against tbptt's 0.1 as well: today's behaviour


def test_min_complete_is_counted_per_estimator(tmp_path):
    study = _study(tmp_path, GroupedPruner(MEDIAN(), min_complete=2))
    _fast_and_slow(study, uoro=1)  # two tbptt complete, one uoro
    _, pruned = _trial(study, "uoro", [5.0, 5.0, 5.0], complete=False)
    assert pruned is False  # uoro has 1 < 2 complete trials: no pruning for uoro yet
    _, pruned = _trial(study, "tbptt", [5.0, 5.0, 5.0], complete=False)
    assert pruned is True  # tbptt has its 2
    # the same study with min_complete 1 prunes the uoro trial
    study.pruner = GroupedPruner(MEDIAN(), min_complete=1)
    _, pruned = _trial(study, "uoro", [5.0, 5.0, 5.0], complete=False)
    assert pruned is True
    # even the global scope waits for the estimator's own completed trials
    study.pruner = GroupedPruner(MEDIAN(), within="global", min_complete=3)
    _, pruned = _trial(study, "uoro", [5.0, 5.0, 5.0], complete=False)
    assert pruned is False


def _hyperband() -> optuna.pruners.HyperbandPruner:
    # max/min resource < reduction factor: one bracket, its first rung at step 1
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=2, reduction_factor=3)


@pytest.mark.parametrize(("within", "expected"), [("estimator", False), ("global", True)])
def test_composes_with_hyperband(tmp_path, within, expected):
    study = _study(tmp_path, GroupedPruner(_hyperband(), within=within, min_complete=2))
    _fast_and_slow(study)
    trials = study.get_trials()
    # the group's first trials reached rung 0 although min_complete held pruning back
    assert all("completed_rung_0" in t.system_attrs for t in trials)
    # rung 0 of uoro: 1.0, 1.0 and 0.9 -> 0.9 is the best: promoted; globally 0.1 beats it
    _, pruned = _trial(study, "uoro", [0.9], complete=False)
    assert pruned is expected


def test_group_reads_task_and_cell_from_the_trial_or_the_defaults(tmp_path):
    pruner = GroupedPruner(MEDIAN(), defaults={"task": "add", "cell": "tanh"})
    study = _study(tmp_path, pruner)
    trial = study.ask()
    trial.set_user_attr("estimator", "uoro")
    trial.set_user_attr("settings", {"cell": "gru"})
    frozen = study.get_trials()[0]
    assert pruner.group(frozen) == ("uoro", "add", "gru")
    with pytest.raises(ValueError, match="within must be one of estimator, global"):
        GroupedPruner(MEDIAN(), within="task")
