"""The sweep specification: examples, round trip, error messages, conditional sampling,
learner specs a Learner accepts, and a dry run that writes nothing."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import optuna
import pytest
import yaml

from rnnsweep.algorithms.learner import KALMAN_RULES, Learner
from rnnsweep.orchestrator import spec as spec_module
from rnnsweep.orchestrator.spec import (
    SpecError,
    SweepSpec,
    dry_run_text,
    learner_spec,
    load_spec,
    load_spec_dict,
    make_pruner,
    make_sampler,
    search_space_text,
    suggest,
)

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))

BASE = {
    "name": "unit",
    "task": "add",
    "hidden": 8,
    "dtype": "float64",
    "steps": 200,
    "trials": 4,
    "estimators": ["tbptt", "uoro", "nobacktrack-kalman"],
    "fixed": {"log_every": 10},
    "search": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "truncation": {"type": "int", "low": 2, "high": 12},
        "process_noise": {"type": "float", "low": 1e-8, "high": 1e-3, "log": True},
    },
}


@pytest.fixture(autouse=True)
def quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def base(**changes) -> dict:
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"smoke.yaml", "compare_add.yaml", "gpu_cluster.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_round_trips(path):
    spec = load_spec(str(path))
    assert isinstance(spec, SweepSpec) and spec.source == str(path)
    again = load_spec_dict(spec.to_dict())
    assert again == spec
    # through YAML text as well (what `launch --dry-run` prints can be saved and reused)
    text = yaml.safe_dump(spec.to_dict(), sort_keys=False)
    assert load_spec_dict(yaml.safe_load(text)) == spec


def test_smoke_example_is_a_small_quick_sweep():
    spec = load_spec(str(EXAMPLES[0].parent / "smoke.yaml"))
    assert spec.task == "add" and spec.cell == "tanh" and spec.hidden == 16
    assert set(spec.estimators) == {"uoro", "tbptt"}
    assert 3000 <= spec.steps <= 5000 and spec.trials == 6 and spec.workers == 2
    assert spec.checkpoint_every == 1000
    assert spec.steps // spec.fixed["log_every"] >= 4  # several intermediate reports
    assert spec.search["lr"].log and spec.search["lr"].estimators == ("uoro", "tbptt")
    assert spec.search["truncation"].estimators == ("tbptt",)


def test_compare_add_example_searches_the_kalman_noise_on_a_log_scale():
    spec = load_spec(str(EXAMPLES[0].parent / "compare_add.yaml"))
    assert spec.estimators == ("tbptt", "uoro", "nobacktrack", "nobacktrack-kalman")
    assert spec.steps == 100_000 and spec.trials == 48 and spec.probe.every > 0
    for key in ("process_noise", "obs_noise"):
        assert spec.search[key].log and spec.search[key].estimators == ("nobacktrack-kalman",)
    assert "nobacktrack-kalman" not in spec.search["lr"].estimators


def test_gpu_cluster_example_points_at_the_head_node():
    spec = load_spec(str(EXAMPLES[0].parent / "gpu_cluster.yaml"))
    assert spec.resources.gpus == 0.25 and spec.resources.cpus == 1.0
    assert spec.storage.optuna.startswith("postgresql://")
    assert spec.storage.mlflow == "http://127.0.0.1:5000"


def test_defaults_are_filled():
    spec = load_spec_dict(
        {"name": "d", "task": "add", "steps": 50_000, "trials": 3, "estimators": ["uoro"]}
    )
    assert (spec.cell, spec.hidden, spec.dtype, spec.seed) == ("tanh", 32, "float32", 0)
    assert (spec.sampler, spec.pruner) == ("tpe", "median")
    assert (spec.objective.metric, spec.objective.direction) == ("final_loss", "minimize")
    assert (spec.probe.every, spec.probe.window, spec.probe.samples, spec.probe.horizon) == (
        0,
        100,
        16,
        100,
    )
    assert (spec.resources.cpus, spec.resources.gpus) == (1.0, 0.0)
    assert spec.checkpoint_every == 5000  # max(1000, steps // 10)
    assert (spec.max_retries, spec.workers, spec.pack) == (2, 1, 1)
    assert (spec.storage.state_dir, spec.storage.optuna, spec.storage.mlflow) == (None,) * 3
    assert load_spec_dict({**spec.to_dict(), "steps": 2000}).checkpoint_every == 5000
    short = load_spec_dict(
        {"name": "d", "task": "add", "steps": 2000, "trials": 1, "estimators": ["uoro"]}
    )
    assert short.checkpoint_every == 1000


def test_search_estimators_are_resolved_to_those_the_key_applies_to():
    spec = load_spec_dict(base())
    assert spec.search["lr"].estimators == ("tbptt", "uoro")  # not the Kalman filter
    assert spec.search["truncation"].estimators == ("tbptt",)
    assert spec.search["process_noise"].estimators == ("nobacktrack-kalman",)


def test_yaml_reads_exponent_floats_and_rejects_duplicate_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ntask: add\nsteps: 1e4\ntrials: 2\nestimators: [uoro]\n"
        "search:\n  lr: {type: float, low: 1e-5, high: 1e-2, log: true}\n"
    )
    spec = load_spec(str(path))
    assert spec.steps == 10_000 and spec.search["lr"].low == 1e-5
    path.write_text("name: s\ntask: add\nsteps: 10\nsteps: 20\ntrials: 2\nestimators: [uoro]\n")
    with pytest.raises(SpecError, match="duplicate key 'steps'") as info:
        load_spec(str(path))
    assert str(path) in str(info.value)


def _set(path: str, value):
    """A mutation of BASE: set the dotted ``path`` (``None`` value deletes the key)."""

    def apply(d: dict) -> dict:
        *parents, last = path.split(".")
        node = d
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
        return d

    return apply


ERRORS = [
    (_set("trails", 5), "unknown key 'trails' at top level (did you mean 'trials'?)"),
    (_set("steps", None), "missing required key 'steps' at top level"),
    (_set("steps", 0), "steps: must be an integer >= 1, got 0"),
    (_set("steps", "1e5"), "steps: must be an integer >= 1, got '1e5' (a string)"),
    (_set("trials", 2.5), "trials: must be an integer >= 1, got 2.5"),
    (_set("hidden", True), "hidden: must be an integer >= 1, got True"),
    (_set("name", "my sweep"), "name: must use letters, digits, '-', '_' and '.' only, got"),
    (_set("name", "x" * 5000), "name: must be at most 100 characters, got 5000: 'xxx"),
    (_set("name", ".."), "name: must not be '..'"),
    (_set("name", "."), "name: must not be '.'"),
    (_set("name", "a/b"), "name: must use letters, digits"),
    (_set("name", ""), "name: must be a non-empty string"),
    (_set("workers", 10**9), "workers: must be an integer in [1, 1024], got 1000000000"),
    (_set("task", "ad"), "task: unknown task 'ad' (did you mean 'add'?)"),
    (_set("task_settings", {"t3": 4}), "unknown key 't3' in task_settings (known: t1, t2"),
    (
        _set("task_settings", {"t1": -1}),
        "task_settings: add: setting 't1' must be in [0, 1000000], got -1",
    ),
    (_set("cell", "lstn"), "cell: unknown cell 'lstn' (did you mean 'lstm'?)"),
    (_set("dtype", "float16"), "dtype: unknown dtype 'float16'"),
    (_set("estimators", []), "estimators: must be a non-empty list"),
    (
        _set("estimators", ["uoor"]),
        "estimators[0]: unknown estimator 'uoor' (did you mean 'uoro'?)",
    ),
    (_set("estimators", ["bptt"]), "estimators[0]: 'bptt' is offline"),
    (_set("estimators", ["tbptt", "tbptt"]), "estimators[1]: duplicate estimator 'tbptt'"),
    (
        lambda d: {**d, "cell": "gru", "estimators": ["uoro", "kf-rtrl"], "search": {}},
        "estimators[1]: kf-rtrl supports the tanh cell only, not gru",
    ),
    (_set("fixed.trncation", 4), "fixed.trncation: unknown setting (did you mean 'truncation'?)"),
    (
        lambda d: {**d, "estimators": ["uoro"], "search": {}, "fixed": {"truncation": 4}},
        "fixed.truncation: applies to none of the estimators uoro (a hyperparameter of tbptt)",
    ),
    (
        lambda d: {**d, "estimators": ["uoro"], "search": {}, "fixed": {"obs_noise": 0.1}},
        "fixed.obs_noise: applies to none of the estimators uoro (a Kalman-filter setting",
    ),
    (
        _set("fixed.lr_decay", -1.0),
        "fixed.lr_decay: setting 'lr_decay' must be >= 0, got -1.0 (estimator tbptt)",
    ),
    (_set("fixed.truncation", [4]), "fixed.truncation: must be a single value"),
    (_set("fixed.probe_every", 100), "fixed.probe_every: set the probe in the probe section"),
    (
        _set("fixed.optimizer", "sdg"),
        "fixed.optimizer: unknown optimizer 'sdg' (did you mean 'sgd'?)",
    ),
    (_set("search.truncation.low", 20), "search.truncation.low: must be < high (got 20 >= 12)"),
    (_set("search.lr.low", 0.0), "search.lr.low: must be > 0 with log: true (got 0.0)"),
    (_set("search.lr.lwo", 1), "unknown key 'lwo' in search.lr (did you mean 'low'?)"),
    (_set("search.lr.type", "flaot"), "search.lr.type: unknown parameter type 'flaot'"),
    (_set("search.lr.high", None), "missing required key 'high' in search.lr"),
    (_set("search.lr.step", 1), "search.lr.step: only for type int"),
    (_set("search.lr.log", "yes"), "search.lr.log: must be true or false"),
    (_set("search.truncation.step", 0), "search.truncation.step: must be an integer >= 1"),
    (_set("search.truncation.step", 3), "search.truncation.high: high - low must be a multiple"),
    (_set("search.truncation.type", "float"), "search.truncation.type: truncation is an integer"),
    (
        _set("search.covariance", {"type": "categorical", "choices": []}),
        "search.covariance.choices: must be a non-empty list",
    ),
    (
        _set("search.covariance", {"type": "categorical", "choices": ["diagonal", "ful"]}),
        "search.covariance.choices[1]: setting 'covariance' must be one of full, block, diagonal",
    ),
    (
        _set("search.covariance", {"type": "categorical", "choices": ["full"], "low": 1}),
        "search.covariance.low: only for type float or int",
    ),
    (_set("search.trncation", {"type": "int", "low": 2, "high": 4}), "search.trncation: unknown"),
    (
        lambda d: {**d, "estimators": ["uoro", "nobacktrack"]},
        "search.truncation: applies to none of the estimators uoro, nobacktrack",
    ),
    (
        _set("search.truncation.estimators", ["rtrl"]),
        "search.truncation.estimators[0]: 'rtrl' is not one of the sweep's estimators",
    ),
    (
        _set("search.truncation.estimators", ["tbptt", "uoro"]),
        "search.truncation.estimators[1]: truncation does not apply to uoro",
    ),
    (
        _set("search.lr.estimators", ["nobacktrack-kalman"]),
        "search.lr.estimators[0]: lr does not apply to nobacktrack-kalman",
    ),
    (_set("fixed.lr", 0.01), "search.lr: also fixed for tbptt, uoro (fixed.lr)"),
    (_set("search.truncation.low", 0), "search.truncation.low: tbptt: truncation=0"),
    (_set("objective.metric", "final_los"), "objective.metric: unknown metric 'final_los'"),
    (_set("objective.metric", "final_bpc"), "objective.metric: final_bpc needs a character task"),
    (_set("objective.direction", "minimise"), "objective.direction: unknown direction"),
    (_set("sampler", "bayes"), "sampler: unknown sampler 'bayes'"),
    (_set("pruner", "hyperbnd"), "pruner: unknown pruner 'hyperbnd' (did you mean 'hyperband'?)"),
    (_set("probe", {"every": 50, "window": 100}), "probe.window: must be <= probe.every"),
    (_set("probe", {"evry": 50}), "unknown key 'evry' in probe (did you mean 'every'?)"),
    (_set("probe", {"every": -1}), "probe.every: must be an integer >= 0"),
    (_set("resources.cpus", 0), "resources.cpus: must be a finite number > 0.0"),
    (_set("resources.gpus", -0.5), "resources.gpus: must be a finite number >= 0.0"),
    (_set("resources.gpus", 1.5), "resources.gpus: above 1 must be a whole number"),
    (_set("resources.gpu", 1), "unknown key 'gpu' in resources (did you mean 'gpus'?)"),
    (_set("max_retries", -1), "max_retries: must be an integer >= 0"),
    (_set("workers", 0), "workers: must be an integer >= 1"),
    (_set("pack", 0), "pack: must be an integer >= 1"),
    (_set("checkpoint_every", 0), "checkpoint_every: must be an integer >= 1"),
    (_set("storage.optuna", "optuna.db"), "storage.optuna: must be a database URL"),
    (_set("storage.mlfow", "http://x"), "unknown key 'mlfow' in storage (did you mean 'mlflow'?)"),
    (_set("search", [1, 2]), "search: must be a mapping, got a list"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), ERRORS, ids=[m.split(":")[0][:40] for _, m in ERRORS]
)
def test_errors_name_the_key_path(mutate, message):
    with pytest.raises(SpecError) as info:
        load_spec_dict(mutate(base()))
    assert message in str(info.value)


def test_sweep_names_at_the_limits_are_taken():
    for name in ("a" * 100, "v1.2_final-run", "..a", "-"):
        assert load_spec_dict(base(name=name)).name == name
    with pytest.raises(SpecError, match="at most 100 characters, got 101") as info:
        load_spec_dict(base(name="a" * 101))
    assert len(str(info.value)) < 120 and "\n" not in str(info.value)  # the value is cut


def test_unavailable_sampler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(spec_module, "_importable", lambda package: package != "cmaes")
    with pytest.raises(SpecError, match=r"sampler: cmaes needs the Python package\(s\) cmaes"):
        load_spec_dict(base(sampler="cmaes"))


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="nope.yaml: sweep file does not exist"):
        load_spec(str(missing))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        load_spec(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="list.yaml: a sweep file must be a YAML mapping"):
        load_spec(str(listed))
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**BASE, "trails": 3}))
    with pytest.raises(SpecError) as info:
        load_spec(str(typo))
    assert str(info.value).startswith(f"{typo}: unknown key 'trails' at top level")
    assert info.value.key == "trails"


def _sample(spec: SweepSpec, sampler, trials: int) -> list[tuple[str, dict, dict]]:
    study = optuna.create_study(sampler=sampler)
    out = []
    for number in range(trials):
        trial = study.ask()
        estimator, settings = suggest(spec, trial)
        out.append((estimator, settings, dict(trial.params)))
        study.tell(trial, float(settings.get("lr", 1e-3)) + 0.01 * number)
    return out


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_suggest_gives_only_the_conditional_params_of_the_estimator(sampler):
    spec = load_spec_dict(base(sampler=sampler))
    samples = _sample(spec, make_sampler(spec, seed=3), 30)
    assert {e for e, _, _ in samples} == set(spec.estimators)
    for estimator, settings, params in samples:
        expected = {
            "tbptt": {"lr", "truncation"},
            "uoro": {"lr"},
            "nobacktrack-kalman": {"process_noise"},
        }[estimator]
        assert set(params) == {"estimator"} | expected
        assert params["estimator"] == estimator
        assert settings == {"log_every": 10, **{k: params[k] for k in expected}}
        if "truncation" in settings:
            assert isinstance(settings["truncation"], int) and 2 <= settings["truncation"] <= 12
        if "lr" in settings:
            assert 1e-4 <= settings["lr"] <= 1e-2
        if "process_noise" in settings:
            assert estimator in KALMAN_RULES and 1e-8 <= settings["process_noise"] <= 1e-3


def test_a_single_estimator_is_still_a_categorical_param():
    spec = load_spec_dict(
        base(estimators=["tbptt"], search={"truncation": BASE["search"]["truncation"]})
    )
    ((estimator, settings, params),) = _sample(spec, optuna.samplers.RandomSampler(seed=0), 1)
    assert estimator == "tbptt" and params["estimator"] == "tbptt"
    assert set(settings) == {"log_every", "truncation"}


def test_searched_optimizer_gates_the_keys_that_depend_on_it():
    spec = load_spec_dict(
        base(
            estimators=["uoro", "nobacktrack-kalman"],
            fixed={"log_every": 10, "beta1": 0.8},
            search={
                "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "kalman"]},
                "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "obs_noise": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
            },
        )
    )
    assert spec.search["optimizer"].estimators == ("uoro",)
    assert spec.search["obs_noise"].estimators == ("uoro", "nobacktrack-kalman")
    assert "only with optimizer" in search_space_text(spec)
    seen = set()
    for estimator, settings, _ in _sample(spec, optuna.samplers.RandomSampler(seed=1), 60):
        optimizer = settings.get("optimizer", "kalman")
        seen.add((estimator, optimizer))
        assert ("lr" in settings) == (optimizer != "kalman")
        assert ("obs_noise" in settings) == (optimizer == "kalman")
        assert ("beta1" in settings) == (optimizer == "adam")
        learner_spec(spec, estimator, settings, seed=0)  # valid for the learner
    assert {("uoro", "sgd"), ("uoro", "adam"), ("uoro", "kalman")} <= seen
    assert ("nobacktrack-kalman", "kalman") in seen


def test_learner_specs_from_suggest_run(tmp_path):
    spec = load_spec_dict(base(probe={"every": 50, "window": 10, "samples": 2, "horizon": 10}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    done = set()
    while done != set(spec.estimators):
        estimator, settings = suggest(spec, study.ask())
        if estimator in done:
            continue
        done.add(estimator)
        ls = learner_spec(spec, estimator, settings, seed=7)
        assert (ls.task, ls.cell, ls.hidden, ls.dtype, ls.seed) == ("add", "tanh", 8, "float64", 7)
        assert ls.settings["probe_every"] == 50 and ls.settings["probe_samples"] == 2
        learner = Learner(ls)
        summary = learner.run(20)
        assert summary["steps"] == 20 and not summary["diverged"]
        assert learner.config["optimizer"] == ("kalman" if estimator in KALMAN_RULES else "adam")
        if "lr" in settings:
            assert learner.config["lr"] == settings["lr"]


@pytest.mark.parametrize("name", ["smoke.yaml", "compare_add.yaml"])
def test_example_trials_build_learners(name):
    spec = load_spec(str(EXAMPLES[0].parent / name))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    done = set()
    while done != set(spec.estimators):
        estimator, settings = suggest(spec, study.ask())
        if estimator not in done:
            done.add(estimator)
            summary = Learner(learner_spec(spec, estimator, settings, seed=1)).run(10)
            assert summary["steps"] == 10 and not summary["diverged"]


def test_learner_spec_refuses_foreign_estimators_and_bad_settings():
    spec = load_spec_dict(base())
    with pytest.raises(SpecError, match="estimator 'rtrl' is not in sweep 'unit'"):
        learner_spec(spec, "rtrl", {}, seed=0)
    with pytest.raises(SpecError, match="estimator tbptt: .*truncation"):
        learner_spec(spec, "tbptt", {"truncation": 0}, seed=0)


def test_samplers_and_pruners():
    from rnnsweep.orchestrator.estimator_sampler import EstimatorSampler
    from rnnsweep.orchestrator.grouped_pruner import GroupedPruner

    spec = load_spec_dict(base())  # three estimators: split, one sampler each
    split = make_sampler(spec, 0)
    assert isinstance(split, EstimatorSampler) and set(split.samplers) == set(spec.estimators)
    assert all(isinstance(s, optuna.samplers.TPESampler) for s in split.samplers.values())
    searched = load_spec_dict(base(estimator_choice="searched"))
    assert isinstance(make_sampler(searched, 0), optuna.samplers.TPESampler)
    one = load_spec_dict(base(estimators=["uoro"], search={}))
    assert isinstance(make_sampler(one, 0), optuna.samplers.TPESampler)
    random = load_spec_dict(base(sampler="random", estimator_choice="searched"))
    assert isinstance(make_sampler(random, 0), optuna.samplers.RandomSampler)
    gp = load_spec_dict(base(sampler="gp", estimator_choice="searched"))  # torch, scipy here
    assert isinstance(make_sampler(gp, 0), optuna.samplers.GPSampler)
    median = make_pruner(spec)
    assert isinstance(median, GroupedPruner)
    assert isinstance(median.inner, optuna.pruners.MedianPruner)
    assert (median.within, median.min_complete) == ("estimator", 2)
    assert median.inner._n_startup_trials == 0 and 0 < median.inner._n_warmup_steps < spec.steps
    hyperband = make_pruner(load_spec_dict(base(pruner="hyperband", prune_within="global")))
    assert isinstance(hyperband.inner, optuna.pruners.HyperbandPruner)
    assert hyperband.inner._max_resource == spec.steps and hyperband.within == "global"
    assert isinstance(make_pruner(load_spec_dict(base(pruner="none"))), optuna.pruners.NopPruner)


def test_search_space_text_lists_each_estimator_with_its_params():
    text = search_space_text(load_spec_dict(base()))
    blocks = {}
    for line in text.splitlines()[1:]:
        if not line.startswith(" "):
            current = line.split(" ")[0]
            blocks[current] = []
        else:
            blocks[current].append(line.split()[0])
    assert blocks == {
        "tbptt": ["lr", "truncation", "fixed:"],
        "uoro": ["lr", "fixed:"],
        "nobacktrack-kalman": ["process_noise", "fixed:"],
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_dry_run_describes_the_sweep_and_writes_nothing(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNNSWEEP_STATE_DIR", raising=False)
    spec = load_spec(str(path))
    text = dry_run_text(spec, samples=3)
    assert os.listdir(tmp_path) == []
    for estimator in spec.estimators:
        assert estimator in text
    for key, param in spec.search.items():
        assert f"{key}  " in text and param.describe() in text
    sampled = [line for line in text.splitlines() if line[:5] in ("  1. ", "  2. ", "  3. ")]
    assert len(sampled) == 3
    assert all(line.split(":")[0].split(". ")[1] in spec.estimators for line in sampled)
    unit = "trial" if spec.pack == 1 else f"actor (a pack of up to {spec.pack} trials)"
    assert f"per {unit}: {spec.resources.cpus:g} CPU, {spec.resources.gpus:g} GPU" in text
    total = spec.resources.gpus * spec.workers
    running = "trials" if spec.pack == 1 else "packs"
    assert f"{spec.workers} concurrent {running}" in text and f"{total:g} GPU in total" in text
    if spec.pack > 1:
        assert f"pack: up to {spec.pack} trials stepped together per actor" in text
    # the resolved spec printed in the dry run is itself a valid sweep file
    block = text.split("resolved spec:\n", 1)[1].split("\n\nsearch space:", 1)[0]
    assert load_spec_dict(yaml.safe_load(block.replace("\n  ", "\n").strip())) == spec


def test_dry_run_names_the_searched_keys_that_split_packs():
    spec = load_spec_dict(
        {
            "name": "p",
            "task": "add",
            "steps": 1000,
            "trials": 4,
            "estimators": ["uoro", "tbptt"],
            "search": {
                "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "truncation": {"type": "int", "low": 2, "high": 8, "estimators": ["tbptt"]},
            },
            "pack": 16,
        }
    )
    text = dry_run_text(spec, samples=1)
    assert "trials share a pack only when they agree on estimator, truncation" in text
