"""Every estimator gets its share of a sweep's trials (``estimator_choice: split``), each
searched by its own sampler over its own trials; ``searched`` leaves the estimator to the
sampler. Real Optuna (SQLite) and MLflow stores, opened as the driver opens them; the real
sweep of ``tests/test_fair_sweep.py`` runs trials on Ray."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
from opened_stores import opened_stores

from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.cli import main
from rnnsweep.orchestrator.estimator_sampler import EstimatorSampler
from rnnsweep.orchestrator.estimator_split import next_estimator, shares
from rnnsweep.orchestrator.stores import SweepStores
from rnnsweep.orchestrator.study_view import trial_estimator

ESTIMATORS = ["uoro", "tbptt", "rtrl"]


def _spec(**overrides) -> spec_.SweepSpec:
    spec = {
        "name": "fair",
        "task": "add",
        "hidden": 8,
        "steps": 100,
        "trials": 12,
        "estimators": ESTIMATORS,
        "fixed": {"log_every": 50},
        "search": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "truncation": {"type": "int", "low": 2, "high": 64, "estimators": ["tbptt"]},
        },
    }
    spec.update(overrides)
    return spec_.load_spec_dict(spec)


def _ask(stores: SweepStores, count: int) -> list[str]:
    """Ask ``count`` trials as the driver does, each told COMPLETE (its lr as its value)."""
    out = []
    for _ in range(count):
        trial, estimator, settings = stores.ask()
        stores.record_settings(trial, estimator, settings)
        stores.study.tell(trial, settings["lr"])
        out.append(estimator)
    return out


def test_shares_and_order():
    assert shares(ESTIMATORS, 12) == {"uoro": 4, "tbptt": 4, "rtrl": 4}
    assert shares(ESTIMATORS, 13) == {"uoro": 5, "tbptt": 4, "rtrl": 4}
    assert shares(ESTIMATORS, 2) == {"uoro": 1, "tbptt": 1, "rtrl": 0}
    study = optuna.create_study()
    order = []
    for _ in range(14):
        assigned = next_estimator(ESTIMATORS, 13, study.get_trials())
        if assigned is None:
            break
        study.enqueue_trial({"estimator": assigned})
        study.ask().suggest_categorical("estimator", ESTIMATORS)
        order.append(assigned)
    assert order == ESTIMATORS * 4 + ["uoro"]


def test_split_gives_each_estimator_its_share_and_resume_keeps_the_plan(tmp_path):
    spec = _spec()
    stores = opened_stores(spec, tmp_path)
    first = _ask(stores, 5)
    assert first == ["uoro", "tbptt", "rtrl", "uoro", "tbptt"]
    stores.close("KILLED")
    stores = opened_stores(spec, tmp_path, resume=True)  # a new driver: counts the recorded trials
    rest = _ask(stores, 7)
    stores.close("FINISHED")
    assert Counter(first + rest) == {"uoro": 4, "tbptt": 4, "rtrl": 4}
    trials = stores.study.get_trials()
    assert [trial_estimator(t) for t in trials] == first + rest
    for trial in trials:  # each trial has only its estimator's parameters
        tbptt = trial.params["estimator"] == "tbptt"
        assert set(trial.params) == {"estimator", "lr"} | ({"truncation"} if tbptt else set())
        assert trial.system_attrs["fixed_params"] == {"estimator": trial.params["estimator"]}


def test_searched_leaves_the_estimator_to_the_sampler(tmp_path):
    spec = _spec(estimator_choice="searched", sampler="random")
    stores = opened_stores(spec, tmp_path)
    got = _ask(stores, 12)
    stores.close("FINISHED")
    # the same draws as the spec's sampler alone, seeded as the driver seeds it
    replay = optuna.create_study(sampler=spec_.make_sampler(spec, spec.seed))
    expected = [spec_.suggest(spec, replay.ask())[0] for _ in range(12)]
    assert got == expected and Counter(got) != {"uoro": 4, "tbptt": 4, "rtrl": 4}
    assert all("fixed_params" not in t.system_attrs for t in stores.study.get_trials())


def test_finite_space_is_tried_once_per_set_within_each_estimator(tmp_path):
    spec = _spec(search={"truncation": {"type": "int", "low": 2, "high": 3}})
    stores = opened_stores(spec, tmp_path)
    _ask_finite = []
    for _ in range(12):
        trial, estimator, settings = stores.ask()
        stores.record_settings(trial, estimator, settings)
        stores.study.tell(trial, 1.0)
        _ask_finite.append((estimator, settings.get("truncation")))
    # uoro, tbptt, rtrl, uoro (again: its one set), tbptt (its other set): all 4 sets tried
    assert stores.exhausted == 5
    stores.close("FINISHED")
    assert Counter(e for e, _ in _ask_finite) == {"uoro": 4, "tbptt": 4, "rtrl": 4}
    tbptt = [t for e, t in _ask_finite if e == "tbptt"]
    assert sorted(tbptt[:2]) == [2, 3] and sorted(tbptt[2:]) == [2, 3]  # each once, then again


class _Seeing(optuna.samplers.RandomSampler):
    """A real random sampler that also notes the trials it was shown."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self.seen: list[set[int]] = []

    def sample_independent(self, study, trial, param_name, param_distribution):
        self.seen.append({t.number for t in study.get_trials(deepcopy=False)})
        return super().sample_independent(study, trial, param_name, param_distribution)


def test_each_estimators_sampler_sees_only_its_trials(tmp_path):
    spec = _spec()
    sampler = EstimatorSampler(ESTIMATORS, _Seeing, seed=0)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", sampler=sampler)
    for _ in range(9):
        assigned = next_estimator(ESTIMATORS, 9, study.get_trials())
        study.enqueue_trial({"estimator": assigned})
        trial = study.ask()
        estimator, settings = spec_.suggest(spec, trial)
        assert estimator == assigned
        study.tell(trial, settings["lr"])
    numbers = {e: {t.number for t in study.trials if trial_estimator(t) == e} for e in ESTIMATORS}
    for estimator, inner in sampler.samplers.items():
        assert inner.seen and all(seen <= numbers[estimator] for seen in inner.seen)
    assert sampler.shared.seen == []


def test_each_estimators_tpe_learns_from_its_own_trials(tmp_path):
    """uoro's objective falls with lr, rtrl's rises: past TPE's 10 startup trials each
    estimator's sampler proposes its own good region (one shared sampler could not)."""
    spec = _spec(trials=48)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path}/o.db", sampler=spec_.make_sampler(spec, 0)
    )
    for _ in range(48):
        assigned = next_estimator(ESTIMATORS, 48, study.get_trials())
        study.enqueue_trial({"estimator": assigned})
        trial = study.ask()
        estimator, settings = spec_.suggest(spec, trial)
        assert estimator == assigned
        lr = settings["lr"]
        study.tell(trial, -lr if estimator == "uoro" else lr)
    lrs = {e: [t.params["lr"] for t in study.trials if trial_estimator(t) == e] for e in ESTIMATORS}
    late = {e: values[10:] for e, values in lrs.items()}
    assert [len(v) for v in late.values()] == [6, 6, 6]
    assert min(late["uoro"]) > max(late["rtrl"]), late


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("split", "trials per estimator: uoro 4, tbptt 4, rtrl 4"), ("searched", "categorical {")],
)
def test_dry_run_shows_the_split_and_the_pruning(tmp_path, capsys, choice, expected):
    import yaml

    path = tmp_path / "fair.yaml"
    path.write_text(yaml.safe_dump({**_spec(estimator_choice=choice).to_dict(), "storage": {}}))
    assert main(["launch", str(path), "--dry-run", "--state-dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert expected in out
    assert "pruning: median, within estimator (same estimator, task and cell), after 2" in out
    if choice == "split":
        lines = [line for line in out.splitlines() if ". " in line[:6]]
        sampled = [line.split(":")[0].split(". ")[1] for line in lines]
        assert sampled == ["uoro", "tbptt", "rtrl"]


def test_launch_help_names_the_split_and_the_pruning_scope(capsys):
    with pytest.raises(SystemExit):
        main(["launch", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "estimator_choice: split the trials shared evenly by the estimators" in out
    assert "prune_within: estimator a trial pruned only against trials of its own" in out
    assert "min_complete_per_estimator: 2 completed trials an estimator needs" in out
