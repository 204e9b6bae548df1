"""The sweep specification: a YAML file, validated completely before anything starts.

A sweep names a task, a cell, the estimators to compare, settings fixed for every trial and a
search space. Settings are the flat keys of the settings table (learner, estimator and probe
keys in ``rnnsweep.algorithms.settings``, the task's own, the sweep keys in
``rnnsweep.orchestrator.sweep_settings``): their types, bounds, defaults and applicability
come from there. A key *applies* to an estimator when the learner would use it:
estimator hyperparameters only for the estimators that have them (``truncation`` for tbptt),
Kalman-filter keys (``process_noise``, ``obs_noise``, ``p0``, ``covariance``) only with the
Kalman filter (the rules ``*-kalman``, or ``optimizer: kalman``), Adam keys only with Adam,
gradient-step keys (``lr``, ``lr_decay``, ``clip``, ``update_every``) never with the filter.
A fixed key applies to the estimators it applies to (an error if none); a searched key exists
only for the estimators it applies to, or for those listed in its ``estimators:``.

Validation runs in three layers: ``spec_file.read_spec_file`` reads the YAML safely (size and
alias limits); ``spec_models.validate`` checks the structure with pydantic models generated
from the settings table (keys, types, bounds, choices, defaults); ``_build`` here checks what
needs the task, the estimators and the learner. Every problem raises ``SpecError`` (a
``ValueError``) whose message starts with the key path, e.g. ``search.truncation.low: must be
< high (got 20 >= 5)``.

Trials: ``suggest(spec, trial)`` samples an estimator (the categorical parameter
``estimator``) and then, define-by-run, the parameters that exist for it (``optimizer``
first when it is searched, so that keys conditional on the optimizer follow it);
``learner_spec`` turns the result into an ``rnnsweep.algorithms.learner.LearnerSpec``. With
``estimator_choice: split`` the estimator is assigned before sampling (``estimator_split``, a
fixed parameter) and ``make_sampler`` gives each estimator its own sampler
(``estimator_sampler``); ``make_pruner`` prunes within each estimator (``grouped_pruner``).
Pruners count resources in learner steps: the driver reports intermediate losses at
``report["step"]``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import yaml
from pydantic_core import PydanticCustomError

from rnnsweep.algorithms.estimator import get_estimator
from rnnsweep.algorithms.learner import KALMAN_RULES, LearnerSpec, split_settings
from rnnsweep.algorithms.learner_spec import qualified_task_settings
from rnnsweep.algorithms.settings import (
    HYPER_KEYS,
    LEARNER_KEYS,
    PER_MEMBER,
    PROBE_KEYS,
    RULES,
    SETTINGS,
    applies,
    default_optimizer,
    did_you_mean,
    unknown_estimator,
    where,
)
from rnnsweep.orchestrator import spec_models
from rnnsweep.orchestrator.spec_file import SpecError, read_spec_file
from rnnsweep.orchestrator.spec_models import ParamModel
from rnnsweep.orchestrator.sweep_settings import SWEEP_SETTINGS
from rnnsweep.tasks.registry import make_task, task_names, task_setting_entries
from rnnsweep.tasks.settings import Setting

if TYPE_CHECKING:
    import optuna

# Optional Python packages each sampler needs (optuna imports them lazily).
SAMPLER_PACKAGES = {"cmaes": ("cmaes",), "gp": ("torch", "scipy")}
# The probe section's keys: ``probe.samples`` is the learner's ``probe_samples``.
PROBE_SETTINGS = {key.removeprefix("probe_"): key for key in PROBE_KEYS}



@dataclass(frozen=True)
class SearchParam:
    """One searched setting; ``estimators`` are those it exists for (resolved)."""

    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None  # int parameters only
    choices: tuple[Any, ...] = ()
    estimators: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log)
            if self.type == "int":
                out["step"] = self.step
        out["estimators"] = list(self.estimators)
        return out

    def describe(self) -> str:
        if self.type == "categorical":
            return "categorical {" + ", ".join(_fmt(c) for c in self.choices) + "}"
        text = f"{self.type} [{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.type == "int" and self.step != 1:
            text += f" step {self.step}"
        return text + (" log" if self.log else "")

    def candidates(self) -> list[tuple[str, Any]]:
        """Representative values (with their key) to validate against the learner."""
        if self.type == "categorical":
            return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]
        return [("low", self.low), ("high", self.high)]


@dataclass(frozen=True)
class Objective:
    metric: str = "final_loss"  # the mean loss over the last 10% of steps
    direction: str = "minimize"


@dataclass(frozen=True)
class Probe:
    every: int = SETTINGS["probe_every"].default  # 0: off
    window: int = SETTINGS["probe_window"].default
    samples: int = SETTINGS["probe_samples"].default
    horizon: int = SETTINGS["probe_horizon"].default
    full: bool = SETTINGS["probe_full"].default

    def settings(self) -> dict[str, int | bool]:
        """The learner's ``probe_*`` settings (none when the probe is off)."""
        if not self.every:
            return {}
        return {key: getattr(self, name) for name, key in PROBE_SETTINGS.items()}


@dataclass(frozen=True)
class Resources:
    cpus: float = SWEEP_SETTINGS["resources.cpus"].default  # per trial
    gpus: float = SWEEP_SETTINGS["resources.gpus"].default  # per trial; fractions share a GPU


@dataclass(frozen=True)
class Storage:
    state_dir: str | None = None  # None: $RNNSWEEP_STATE_DIR or ./.rnnsweep
    optuna: str | None = None  # None: SQLite in the state directory
    mlflow: str | None = None  # None: SQLite in the state directory
    outage_limit: float = SWEEP_SETTINGS["storage.outage_limit"].default  # seconds


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep, defaults filled; ``to_dict()`` round-trips through ``load_spec_dict``."""

    name: str
    task: str
    steps: int
    trials: int
    estimators: tuple[str, ...]
    task_settings: dict[str, Any] = field(default_factory=dict)
    cell: str = "tanh"
    hidden: int = 32
    dtype: str = "float32"
    seed: int = 0
    fixed: dict[str, Any] = field(default_factory=dict)
    search: dict[str, SearchParam] = field(default_factory=dict)
    objective: Objective = Objective()
    sampler: str = "tpe"
    pruner: str = "median"
    estimator_choice: str = SWEEP_SETTINGS["estimator_choice"].default
    prune_within: str = SWEEP_SETTINGS["prune_within"].default
    min_complete_per_estimator: int = SWEEP_SETTINGS["min_complete_per_estimator"].default
    probe: Probe = Probe()
    resources: Resources = Resources()
    checkpoint_every: int = 1000
    max_retries: int = 2
    lease_timeout: float = SWEEP_SETTINGS["lease_timeout"].default  # seconds
    workers: int = 1
    pack: int = 1
    storage: Storage = Storage()
    source: str = field(default="<dict>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A plain (YAML-able) dict of every field, defaults included."""
        return {
            "name": self.name,
            "task": self.task,
            "task_settings": dict(self.task_settings),
            "cell": self.cell,
            "hidden": self.hidden,
            "dtype": self.dtype,
            "seed": self.seed,
            "steps": self.steps,
            "trials": self.trials,
            "estimators": list(self.estimators),
            "fixed": dict(self.fixed),
            "search": {key: param.to_dict() for key, param in self.search.items()},
            "objective": dataclasses.asdict(self.objective),
            "sampler": self.sampler,
            "pruner": self.pruner,
            "estimator_choice": self.estimator_choice,
            "prune_within": self.prune_within,
            "min_complete_per_estimator": self.min_complete_per_estimator,
            "probe": dataclasses.asdict(self.probe),
            "resources": dataclasses.asdict(self.resources),
            "checkpoint_every": self.checkpoint_every,
            "max_retries": self.max_retries,
            "lease_timeout": self.lease_timeout,
            "workers": self.workers,
            "pack": self.pack,
            "storage": dataclasses.asdict(self.storage),
        }


# -- loading ---------------------------------------------------------------------------------


def load_spec(path: str) -> SweepSpec:
    """Read (``spec_file.read_spec_file``: size and alias limits) and validate a sweep file;
    every problem raises ``SpecError`` naming the file."""
    return load_spec_dict(read_spec_file(path), source=path)


def load_spec_dict(d: Mapping[str, Any], source: str = "<dict>") -> SweepSpec:
    """Validate a sweep given as a dict (as read from YAML) and fill in the defaults."""
    try:
        return _build(d, source)
    except SpecError as error:
        if source == "<dict>":
            raise
        raise SpecError(f"{source}: {error}", error.key) from None


# -- trials ----------------------------------------------------------------------------------


def suggest(spec: SweepSpec, trial: optuna.trial.Trial) -> tuple[str, dict[str, Any]]:
    """Sample one configuration: ``(estimator, settings)``, settings = fixed + suggested.

    The estimator is the categorical parameter ``estimator``; a searched key is suggested
    only when it exists for that estimator (and, for optimizer-specific keys, for the
    optimizer the trial uses), under its own name.
    """
    estimator = trial.suggest_categorical("estimator", list(spec.estimators))
    task_keys = _task_entries(spec.task)
    if estimator in KALMAN_RULES:
        optimizer = "kalman"
    else:
        optimizer = spec.fixed.get("optimizer", default_optimizer(estimator))
    suggested: dict[str, Any] = {}
    ordered = sorted(spec.search.items(), key=lambda item: item[0] != "optimizer")
    for key, param in ordered:
        if estimator not in param.estimators:
            continue
        if not _applies(key, estimator, optimizer, task_keys):
            continue
        if param.type == "float":
            value = trial.suggest_float(key, param.low, param.high, log=param.log)
        elif param.type == "int":
            value = trial.suggest_int(key, param.low, param.high, step=param.step, log=param.log)
        else:
            value = trial.suggest_categorical(key, list(param.choices))
        suggested[key] = value
        if key == "optimizer":
            optimizer = value
    fixed = {k: v for k, v in spec.fixed.items() if _applies(k, estimator, optimizer, task_keys)}
    return estimator, {**fixed, **suggested}


def learner_spec(
    spec: SweepSpec, estimator: str, settings: Mapping[str, Any], seed: int, device: str = "cpu"
) -> LearnerSpec:
    """The ``LearnerSpec`` of one trial (task settings and probe added), validated."""
    if estimator not in spec.estimators:
        raise SpecError(
            f"estimator {estimator!r} is not in sweep {spec.name!r} ({', '.join(spec.estimators)})"
        )
    result = LearnerSpec(
        task=spec.task,
        estimator=estimator,
        cell=spec.cell,
        hidden=spec.hidden,
        seed=seed,
        dtype=spec.dtype,
        device=device,
        settings={
            **qualified_task_settings(spec.task, spec.task_settings, estimator),
            **spec.probe.settings(),
            **settings,
        },
    )
    try:
        split_settings(result)
    except ValueError as error:
        raise SpecError(f"estimator {estimator}: {error}") from None
    return result


def make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by ``spec.sampler``, seeded; with ``estimator_choice: split``
    (and several estimators) one of them per estimator (``EstimatorSampler``)."""
    from rnnsweep.orchestrator import estimator_split

    if estimator_split.splits(spec):
        from rnnsweep.orchestrator.estimator_sampler import EstimatorSampler

        return EstimatorSampler(spec.estimators, lambda s: _named_sampler(spec, s), seed)
    return _named_sampler(spec, seed)


def _named_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    import warnings

    import optuna

    _check_sampler_packages(spec.sampler)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group: conditional (per-estimator) spaces; constant_liar: parallel pending trials.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner named by ``spec.pruner`` (resources are learner steps), applied
    within each estimator (``prune_within``) once it has ``min_complete_per_estimator``
    complete trials (``GroupedPruner``)."""
    import optuna

    from rnnsweep.orchestrator.grouped_pruner import GroupedPruner

    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        inner: optuna.pruners.BasePruner = optuna.pruners.HyperbandPruner(
            min_resource=max(1, spec.steps // 27), max_resource=spec.steps, reduction_factor=3
        )
    else:
        # Online losses are noisy early on: no pruning in the first quarter of a run. (No
        # startup trials here: the wrapper waits for min_complete_per_estimator per group.)
        inner = optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=spec.steps // 4)
    return GroupedPruner(
        inner,
        within=spec.prune_within,
        min_complete=spec.min_complete_per_estimator,
        defaults={"task": spec.task, "cell": spec.cell},
    )


def pruning_text(spec: SweepSpec) -> str:
    """How trials are pruned, in one line."""
    if spec.pruner == "none":
        return "none"
    scope = (
        "within estimator (same estimator, task and cell)"
        if spec.prune_within == "estimator"
        else "global (against every trial)"
    )
    return (
        f"{spec.pruner}, {scope}, after {spec.min_complete_per_estimator} completed trials "
        "per estimator"
    )


def estimator_text(spec: SweepSpec) -> str:
    """How trials get their estimator, in one line."""
    from rnnsweep.orchestrator import estimator_split

    if spec.estimator_choice == "split":
        split = estimator_split.split_text(spec.estimators, spec.trials)
        return f"trials per estimator: {split} (split: a sampler each)"
    return f"estimator: categorical {{{', '.join(spec.estimators)}}} (searched by the sampler)"


def search_space_text(spec: SweepSpec) -> str:
    """The search space per estimator, with the fixed settings each one gets."""
    task_keys = _task_entries(spec.task)
    lines = [estimator_text(spec)]
    for estimator in spec.estimators:
        optimizers = _optimizers(estimator, spec.fixed, spec.search)
        lines.append(f"{estimator} (optimizer {' | '.join(optimizers)}):")
        params = [(k, p) for k, p in spec.search.items() if estimator in p.estimators]
        width = max([len(k) for k, _ in params] + [8])
        for key, param in params:
            only = [o for o in optimizers if _applies(key, estimator, o, task_keys)]
            note = (
                f"  (only with optimizer {' | '.join(only)})" if len(only) < len(optimizers) else ""
            )
            lines.append(f"  {key:<{width}}  {param.describe()}{note}")
        if not params:
            lines.append("  (nothing searched)")
        fixed = {
            k: v for k, v in spec.fixed.items() if _applies_any(k, estimator, optimizers, task_keys)
        }
        if fixed:
            lines.append("  fixed: " + ", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items()))
    return "\n".join(lines)


def dry_run_text(spec: SweepSpec, samples: int = 3) -> str:
    """What ``launch`` would do: resolved spec, search space, sampled trials, resources.

    Sampling uses an in-memory Optuna study with a RandomSampler: nothing is written.
    """
    import optuna

    from rnnsweep.orchestrator import estimator_split
    from rnnsweep.orchestrator.state_dir import resolve as resolve_state_dir

    resolved = yaml.safe_dump(spec.to_dict(), sort_keys=False, default_flow_style=None)
    out = [f"sweep {spec.name!r} ({spec.source})", "", "resolved spec:"]
    out += ["  " + line for line in resolved.rstrip().splitlines()]
    out += ["", "search space:"]
    out += ["  " + line for line in search_space_text(spec).splitlines()]
    out += ["", f"pruning: {pruning_text(spec)}"]
    out += ["", f"{samples} sampled configurations (random sampler, seed {spec.seed}):"]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            sampler=optuna.samplers.RandomSampler(seed=spec.seed),
            direction=spec.objective.direction,
        )
        for index in range(samples):
            if estimator_split.splits(spec):  # the estimators in the order the driver asks
                existing = study.get_trials(deepcopy=False)
                assigned = estimator_split.next_estimator(
                    spec.estimators, max(spec.trials, samples), existing
                )
                study.enqueue_trial({"estimator": assigned})
            trial = study.ask()
            estimator, settings = suggest(spec, trial)
            learner_spec(spec, estimator, settings, spec.seed + index)
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in settings.items()) or "defaults"
            out.append(f"  {index + 1}. {estimator}: {shown}")
    finally:
        optuna.logging.set_verbosity(verbosity)
    r = spec.resources
    state_dir = resolve_state_dir(spec.storage.state_dir)
    sqlite = "SQLite in the state directory"
    unit = "trial" if spec.pack == 1 else f"actor (a pack of up to {spec.pack} trials)"
    out += [
        "",
        "resources:",
        f"  per {unit}: {r.cpus:g} CPU, {r.gpus:g} GPU",
        f"  workers: {spec.workers} concurrent {'trials' if spec.pack == 1 else 'packs'} -> "
        f"Ray is asked for {r.cpus * spec.workers:g} CPU, {r.gpus * spec.workers:g} GPU in total",
        f"  trials: {spec.trials} x {spec.steps} steps; checkpoint every "
        f"{spec.checkpoint_every} steps; retries per failed trial: {spec.max_retries}",
        *pack_text(spec),
        "",
        "storage:",
        f"  state directory: {state_dir}",
        f"  optuna: {spec.storage.optuna or sqlite}",
        f"  mlflow: {spec.storage.mlflow or sqlite + ' (or $MLFLOW_TRACKING_URI)'}",
    ]
    return "\n".join(out)


def pack_text(spec: SweepSpec) -> list[str]:
    """Which trials can share a pack: searched keys outside the per-member ones split packs."""
    if spec.pack == 1:
        return []
    splitting = sorted(k for k in spec.search if k not in PER_MEMBER)
    split = ["estimator"] * (len(spec.estimators) > 1) + splitting
    return [
        f"  pack: up to {spec.pack} trials stepped together per actor"
        + (f"; trials share a pack only when they agree on {', '.join(split)}" if split else "")
    ]


# -- applicability ---------------------------------------------------------------------------


def _applies(key: str, estimator: str, optimizer: str, task_keys: Mapping[str, Any]) -> bool:
    """Whether a learner of ``estimator`` with ``optimizer`` uses setting ``key`` (the table's
    ``applies``; task keys apply to every estimator)."""
    if key in task_keys:
        return True
    return key in SETTINGS and applies(SETTINGS[key], estimator, optimizer)


def _applies_any(
    key: str, estimator: str, optimizers: tuple[str, ...], task_keys: Mapping[str, Any]
) -> bool:
    return any(_applies(key, estimator, o, task_keys) for o in optimizers)


def _optimizers(
    estimator: str, fixed: Mapping[str, Any], search: Mapping[str, SearchParam]
) -> tuple[str, ...]:
    """The optimizers a trial of ``estimator`` may use."""
    if estimator in KALMAN_RULES:
        return ("kalman",)
    if "optimizer" in fixed:
        return (fixed["optimizer"],)
    param = search.get("optimizer")
    if param is not None and (not param.estimators or estimator in param.estimators):
        return tuple(param.choices)
    return (default_optimizer(estimator),)


def _owner_text(key: str, task_keys: Mapping[str, Any]) -> str:
    if key in task_keys:
        return "a task setting"
    entry = SETTINGS[key]
    if entry.group == "estimator":
        return "a hyperparameter of " + ", ".join(entry.estimators or ())
    kind = {
        "optimizer": "the optimizer",
        "kalman": "a Kalman-filter setting",
        "adam": "an Adam setting",
        "gradient": "a gradient-step setting",
    }.get(entry.group, "a learner setting")
    return f"{kind}: it applies {where(entry)}"




def _known_settings(task_keys: Mapping[str, Any]) -> list[str]:
    keys = (set(LEARNER_KEYS) | set(HYPER_KEYS)) - set(PROBE_KEYS)
    return sorted(keys | set(task_keys))


def _task_entries(task: str) -> dict[str, Setting]:
    return {entry.name: entry for entry in task_setting_entries(task)}


# -- validation ------------------------------------------------------------------------------


def _fail(path: str, message: str) -> NoReturn:
    raise SpecError(f"{path}: {message}", path)


def _hint(word: str, options: list[str] | tuple[str, ...]) -> str:
    return did_you_mean(word, options)


_fmt = spec_models.fmt
_describe = spec_models.describe


def _mapping(
    value: Any,
    path: str,
    allowed: tuple[str, ...] | None,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check that ``value`` is a mapping with string keys among ``allowed``."""
    where = "at top level" if path == "" else f"in {path}"
    if not isinstance(value, Mapping):
        _fail(path or "top level", f"must be a mapping, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            _fail(path or "top level", f"keys must be strings, got {key!r}")
        if allowed is not None and key not in allowed:
            full = f"{path}.{key}" if path else key
            hint = _hint(key, allowed) or f" (known: {', '.join(allowed) or 'none'})"
            raise SpecError(f"unknown key {key!r} {where}{hint}", full)
    for key in required:
        if key not in value:
            full = f"{path}.{key}" if path else key
            raise SpecError(f"missing required key {key!r} {where}", full)
    return dict(value)


def _choice(value: Any, path: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    try:
        return spec_models.choice(value, choices, what)
    except PydanticCustomError as error:
        _fail(path, error.context["message"])


def _check_sampler_packages(sampler: str, path: str = "sampler") -> None:
    missing = [p for p in SAMPLER_PACKAGES.get(sampler, ()) if not _importable(p)]
    if missing:
        _fail(
            path,
            f"{sampler} needs the Python package(s) {', '.join(missing)}, which are not "
            f"installed here (pip install {' '.join(missing)}), or choose tpe or random",
        )


def _importable(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _estimators(value: Any, cell: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        _fail("estimators", f"must be a non-empty list of names, got {_describe(value)}")
    names: list[str] = []
    for index, name in enumerate(value):
        path = f"estimators[{index}]"
        if name == "bptt":
            _fail(path, "'bptt' is offline (a reference), not an online learner; use tbptt")
        if not isinstance(name, str) or name not in RULES:
            _fail(path, unknown_estimator(name))
        if name in names:
            _fail(path, f"duplicate estimator {name!r}")
        cells = get_estimator(KALMAN_RULES.get(name, name)).cells
        if cells is not None and cell not in cells:
            _fail(path, f"{name} supports the {', '.join(cells)} cell only, not {cell}")
        names.append(name)
    return tuple(names)


def _setting_key(
    key: str, path: str, task_settings: Mapping[str, Any], task_keys: Mapping[str, Any]
) -> None:
    """A fixed or searched key must be a known setting, outside probe and task_settings."""
    probe_keys = {v: k for k, v in PROBE_SETTINGS.items()}
    if key in probe_keys:
        _fail(path, f"set the probe in the probe section (probe.{probe_keys[key]})")
    known = _known_settings(task_keys)
    if key not in known:
        _fail(path, f"unknown setting{_hint(key, known)}; known: {', '.join(known)}")
    if key in task_settings:
        _fail(path, f"also set in task_settings (task_settings.{key}); set it in one place")


def _scalar(value: Any, path: str) -> Any:
    if value is not None and not isinstance(value, bool | int | float | str):
        _fail(path, f"must be a single value (number, string, true/false), got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        _fail(path, f"must be finite, got {value!r}")
    return value


def _search_param(key: str, param: ParamModel, sweep_estimators: tuple[str, ...]) -> SearchParam:
    """``search.<key>`` (its structure checked by ``ParamModel``); ``estimators`` stays empty
    unless listed (resolved later)."""
    path = f"search.{key}"
    estimators: tuple[str, ...] = ()
    if "estimators" in param.model_fields_set:
        listed = param.estimators
        if not isinstance(listed, list) or not listed:
            _fail(f"{path}.estimators", f"must be a non-empty list, got {_describe(listed)}")
        for index, name in enumerate(listed):
            if name not in sweep_estimators:
                _fail(
                    f"{path}.estimators[{index}]",
                    f"{name!r} is not one of the sweep's estimators "
                    f"({', '.join(sweep_estimators)})",
                )
            if name in listed[:index]:
                _fail(f"{path}.estimators[{index}]", f"duplicate estimator {name!r}")
        estimators = tuple(listed)
    if param.type == "categorical":
        return SearchParam("categorical", choices=tuple(param.choices), estimators=estimators)
    return SearchParam(param.type, param.low, param.high, param.log, param.step, (), estimators)


def _resolve_estimators(
    key: str,
    param: SearchParam,
    estimators: tuple[str, ...],
    optimizers: Mapping[str, tuple[str, ...]],
    fixed_for: Mapping[str, tuple[str, ...]],
    task_keys: Mapping[str, Any],
) -> SearchParam:
    """Check (or fill in) the estimators a searched key exists for."""
    path = f"search.{key}"
    if param.estimators:
        for index, name in enumerate(param.estimators):
            if not _applies_any(key, name, optimizers[name], task_keys):
                _fail(
                    f"{path}.estimators[{index}]",
                    f"{key} does not apply to {name} ({_owner_text(key, task_keys)})",
                )
        users = param.estimators
    else:
        users = tuple(e for e in estimators if _applies_any(key, e, optimizers[e], task_keys))
        if not users:
            _fail(
                path,
                f"applies to none of the estimators {', '.join(estimators)} "
                f"({_owner_text(key, task_keys)})",
            )
    both = [e for e in users if e in fixed_for.get(key, ())]
    if both:
        _fail(
            path,
            f"also fixed for {', '.join(both)} (fixed.{key}); a setting is either fixed or "
            "searched (limit either one with estimators:)",
        )
    entry = task_keys[key] if key in task_keys else SETTINGS[key]
    if param.type != "categorical" and entry.type in (bool, str):
        example = entry.default if entry.default is not None else entry.choices[0]
        _fail(f"{path}.type", f"{key} takes values like {example!r}: use type: categorical")
    if param.type == "float" and entry.type is int:
        _fail(f"{path}.type", f"{key} is an integer setting: use type: int")
    return dataclasses.replace(param, estimators=users)


def _check_values(
    base: Mapping[str, Any],
    task_settings: Mapping[str, Any],
    probe_settings: Mapping[str, Any],
    estimators: tuple[str, ...],
    fixed: Mapping[str, Any],
    fixed_for: Mapping[str, tuple[str, ...]],
    search: Mapping[str, SearchParam],
) -> None:
    """Validate the fixed values and every search bound or choice with ``split_settings``.

    ``base`` holds the LearnerSpec fields; the task and probe settings go to every learner.
    """

    def check(estimator: str, settings: dict[str, Any], path: str) -> None:
        try:
            split_settings(LearnerSpec(estimator=estimator, settings=settings, **base))
        except ValueError as error:
            _fail(path, f"{error} (estimator {estimator})")

    for estimator in estimators:
        task = qualified_task_settings(base["task"], task_settings, estimator)
        shared = {**task, **probe_settings}
        check(estimator, dict(shared), "probe")
        mine = {k: v for k, v in fixed.items() if estimator in fixed_for[k]}
        for key, value in mine.items():
            check(estimator, {**shared, key: value}, f"fixed.{key}")
        settings = {**shared, **mine}
        check(estimator, settings, "fixed")
        for key, param in search.items():
            if estimator in param.estimators:
                for label, value in param.candidates():
                    check(estimator, {**settings, key: value}, f"search.{key}.{label}")


def _build(d: Mapping[str, Any], source: str) -> SweepSpec:
    top = spec_models.validate(d)  # structure, types, bounds and choices of the table's keys
    name = top.name  # checked by the model (sweep_name's rules)
    task = _choice(top.task, "task", task_names(), "task")
    task_keys = _task_entries(task)
    task_settings = _mapping(top.task_settings, "task_settings", tuple(task_keys))
    try:
        task_obj = make_task(task, **task_settings)
    except ValueError as error:
        _fail("task_settings", str(error))
    cell, hidden, dtype, seed = top.cell, top.hidden, top.dtype, top.seed
    if task_obj.cell is not None and hidden not in (task_obj.hidden, SETTINGS["hidden"].default):
        _fail("hidden", f"task {task} fixes the system: hidden = {task_obj.hidden}, got {hidden}")
    steps, trials = top.steps, top.trials
    effective_cell = task_obj.cell().name if task_obj.cell is not None else cell
    estimators = _estimators(top.estimators, effective_cell)

    probe = Probe(**top.probe.model_dump())
    if probe.every and probe.window > probe.every:
        _fail("probe.window", f"must be <= probe.every (got {probe.window} > {probe.every})")
    if probe.every and probe.horizon > probe.every:
        _fail("probe.horizon", f"must be <= probe.every (got {probe.horizon} > {probe.every})")
    if probe.every and probe.window > probe.horizon:
        _fail("probe.window", f"must be <= probe.horizon (got {probe.window} > {probe.horizon})")

    fixed = dict(top.fixed)
    for key, value in fixed.items():
        _setting_key(key, f"fixed.{key}", task_settings, task_keys)
        _scalar(value, f"fixed.{key}")
    if "optimizer" in fixed:
        _choice(fixed["optimizer"], "fixed.optimizer", SETTINGS["optimizer"].choices, "optimizer")

    search: dict[str, SearchParam] = {}
    for key, value in top.search.items():
        _setting_key(key, f"search.{key}", task_settings, task_keys)
        search[key] = _search_param(key, value, estimators)
    if "optimizer" in search:
        if search["optimizer"].type != "categorical":
            _fail("search.optimizer.type", "the optimizer is searched as type: categorical")
        for index, choice in enumerate(search["optimizer"].choices):
            path = f"search.optimizer.choices[{index}]"
            _choice(choice, path, SETTINGS["optimizer"].choices, "optimizer")

    optimizers = {e: _optimizers(e, fixed, search) for e in estimators}
    fixed_for: dict[str, tuple[str, ...]] = {}
    for key in fixed:
        users = tuple(e for e in estimators if _applies_any(key, e, optimizers[e], task_keys))
        if not users:
            _fail(
                f"fixed.{key}",
                f"applies to none of the estimators {', '.join(estimators)} "
                f"({_owner_text(key, task_keys)})",
            )
        fixed_for[key] = users
    for key, param in search.items():
        search[key] = _resolve_estimators(key, param, estimators, optimizers, fixed_for, task_keys)
    base = {"task": task, "cell": cell, "hidden": hidden, "seed": seed, "dtype": dtype}
    _check_values(base, task_settings, probe.settings(), estimators, fixed, fixed_for, search)

    metric, direction = top.objective.metric, top.objective.direction
    if metric == "final_bpc" and not task_obj.bits_per_char:
        _fail("objective.metric", f"final_bpc needs a character task; {task} is measured in nats")
    sampler, pruner = top.sampler, top.pruner
    _check_sampler_packages(sampler)

    cpus, gpus = top.resources.cpus, top.resources.gpus
    for label, amount in (("cpus", cpus), ("gpus", gpus)):
        if amount > 1 and not amount.is_integer():
            _fail(f"resources.{label}", f"above 1 must be a whole number (Ray), got {amount:g}")

    checkpoint_every = top.checkpoint_every
    if "checkpoint_every" not in top.model_fields_set:  # the table's derived default
        checkpoint_every = max(1000, steps // 10)

    storage = top.storage.model_dump()
    if storage["optuna"] is not None and not re.match(r"^[a-z][a-z0-9+]*://", storage["optuna"]):
        _fail(
            "storage.optuna",
            "must be a database URL such as postgresql://user:password@host:5432/db or "
            f"sqlite:////path/optuna.db, got {storage['optuna']!r}",
        )

    return SweepSpec(
        name=name,
        task=task,
        steps=steps,
        trials=trials,
        estimators=estimators,
        task_settings=task_settings,
        cell=cell,
        hidden=hidden,
        dtype=dtype,
        seed=seed,
        fixed=fixed,
        search=search,
        objective=Objective(metric, direction),
        sampler=sampler,
        pruner=pruner,
        estimator_choice=top.estimator_choice,
        prune_within=top.prune_within,
        min_complete_per_estimator=top.min_complete_per_estimator,
        probe=probe,
        resources=Resources(cpus, gpus),
        checkpoint_every=checkpoint_every,
        max_retries=top.max_retries,
        lease_timeout=top.lease_timeout,
        workers=top.workers,
        pack=top.pack,
        storage=Storage(**storage),
        source=source,
    )
