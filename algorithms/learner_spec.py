"""A run's specification (``LearnerSpec``) and the resolution of its settings.

``split_settings`` routes a spec's flat ``settings`` to the learner, its estimator and its task,
fills in the defaults of the settings table (``rnnsweep.algorithms.settings``: the learning
rates by optimizer and estimator among them) and refuses unknown keys (with a did-you-mean),
keys that do not apply and bad values with a ``ValueError`` naming them. Below every part of
the engine (``member``, ``population``) and the ``Learner`` facade, which all read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnsweep.algorithms import checkpoint_file
from rnnsweep.algorithms.estimator import get_estimator, resolve_hyper
from rnnsweep.algorithms.probe import METRICS as PROBE_METRICS  # what each window reports
from rnnsweep.algorithms.settings import (
    HYPER_KEYS,
    KALMAN_RULES,
    LEARNER_KEYS,
    RULES,
    RUN_KEYS,
    SETTINGS,
    applies,
    default_optimizer,
    did_you_mean,
    hyper_defaults,
    lr_default,
    not_applying,
    task_defaults,
    unknown_estimator,
)
from rnnsweep.tasks import make_task
from rnnsweep.tasks.registry import task_setting_entries

__all__ = [
    "CHECKPOINT_VERSION",
    "DTYPES",
    "KALMAN_RULES",
    "PROBE_METRICS",
    "LearnerSpec",
    "split_settings",
    "unused_settings",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT_VERSION = checkpoint_file.FORMAT  # a snapshot's layout is the file's body


@dataclass
class LearnerSpec:
    """Everything that defines a run; ``settings`` holds learner, estimator and task keys."""

    task: str
    estimator: str
    cell: str = "tanh"
    hidden: int = 32
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)


def _estimator_owns(key: str, estimator: str) -> bool:
    """Whether ``key`` is one of ``estimator``'s hyperparameters."""
    return key in HYPER_KEYS and estimator in (SETTINGS[key].estimators or ())


def qualified_task_settings(
    task: str, settings: Mapping[str, Any], estimator: str
) -> dict[str, Any]:
    """A task's settings as a learner's settings: a key that also names a learner setting or
    one of the estimator's (the text task's ``path`` and uoro's) qualified with the task's
    name (``text.path``, which ``split_settings`` gives the task), others as they are."""
    return {
        f"{task}.{key}" if key in LEARNER_KEYS or _estimator_owns(key, estimator) else key: v
        for key, v in settings.items()
    }


def split_settings(spec: LearnerSpec) -> tuple[dict, dict, dict, str, str]:
    """Route ``spec.settings`` to (learner, estimator, task) settings; validate every key.

    Keys, types, bounds and defaults come from the settings table
    (``rnnsweep.algorithms.settings``) and the task's declared settings. Returns
    ``(learner, estimator_hyper, task_settings, estimator_name, optimizer)``. Unknown keys (with
    a did-you-mean), hyperparameters of other estimators and bad values raise ``ValueError``
    naming them.
    """
    if spec.estimator == "bptt":
        raise ValueError("estimator 'bptt' is offline (a reference): use tbptt to learn online")
    if spec.estimator not in RULES:
        raise ValueError(unknown_estimator(spec.estimator))
    name = KALMAN_RULES.get(spec.estimator, spec.estimator)
    estimator = get_estimator(name)
    for key in RUN_KEYS:
        SETTINGS[key].check(getattr(spec, key))
    task_entries = {entry.name: entry for entry in task_setting_entries(spec.task)}
    learner = {key: SETTINGS[key].default for key in LEARNER_KEYS}
    est_keys, task_keys = {}, {}

    def estimator_key(key: str) -> bool:  # a hyperparameter of this learner's estimator
        return _estimator_owns(key, spec.estimator)

    prefix = f"{spec.task}."  # ``text.path``: the task's setting, whatever else is named so
    task_named = {key.removeprefix(prefix) for key in spec.settings if key.startswith(prefix)}
    for key, value in spec.settings.items():
        task_key = key.removeprefix(prefix)
        if task_key != key and task_key in task_entries:
            task_keys[task_key] = value
            continue
        mine = estimator_key(key)
        owners = [
            owner
            for owner, known in (
                ("learner", key in LEARNER_KEYS),
                (f"estimator {name}", mine),
                # with the task's named ``text.path``, a bare ``path`` is the other owner's
                (f"task {spec.task}", key in task_entries and key not in task_named),
            )
            if known
        ]
        if not owners:
            if key in HYPER_KEYS:
                raise ValueError(not_applying(key, spec.estimator, ""))
            if key in RUN_KEYS:
                raise ValueError(
                    f"setting {key!r} is not a --set key: use --{key} (in a sweep: {key} at the "
                    "top level)"
                )
            known = sorted(
                set(LEARNER_KEYS) | set(hyper_defaults(spec.estimator)) | set(task_entries)
            )
            hint = did_you_mean(key, known + [k for k in HYPER_KEYS if k not in known])
            raise ValueError(f"unknown setting {key!r}{hint} (known: {', '.join(known)})")
        if len(owners) > 1:
            hint = f"; {prefix}{key} names the task's" if key in task_entries else ""
            raise ValueError(
                f"setting {key!r} is ambiguous: it belongs to {' and '.join(owners)}{hint}"
            )
        if owners[0] == "learner":
            learner[key] = SETTINGS[key].check(value)
        elif owners[0].startswith("estimator"):
            est_keys[key] = value
        else:
            task_keys[key] = value
    for key, value in task_defaults(spec.task, spec.estimator).items():
        if key in spec.settings or (key == "optimizer" and spec.estimator in KALMAN_RULES):
            continue
        if estimator_key(key):
            est_keys[key] = value
        elif key not in HYPER_KEYS:  # another estimator's hyperparameter applies elsewhere
            learner[key] = value
    resolve_hyper(estimator, est_keys)
    make_task(spec.task, **task_keys)  # refuses bad task settings here, naming them
    opt = learner["optimizer"] or default_optimizer(spec.estimator)
    learner["optimizer"] = opt
    if spec.estimator in KALMAN_RULES and opt != "kalman":
        raise ValueError(
            f"{spec.estimator} learns with the Kalman filter; optimizer={opt} "
            f"contradicts it (use estimator {name} for {opt})"
        )
    if opt == "kalman" and estimator.influence is None:
        raise ValueError(f"optimizer kalman needs an estimator with an influence, not {name!r}")
    if learner["lr"] is None:
        learner["lr"] = lr_default(opt, name)
    if learner["probe_every"] and learner["probe_window"] > learner["probe_every"]:
        raise ValueError("setting 'probe_window' must not exceed 'probe_every'")
    if learner["probe_every"] and learner["probe_horizon"] > learner["probe_every"]:
        raise ValueError("setting 'probe_horizon' must not exceed 'probe_every'")
    if learner["probe_every"] and learner["probe_window"] > learner["probe_horizon"]:
        raise ValueError("setting 'probe_window' must not exceed 'probe_horizon'")
    return learner, est_keys, task_keys, name, opt


def unused_settings(spec: LearnerSpec, optimizer: str) -> list[str]:
    """Messages for the keys of ``spec.settings`` that its learner would not use (``beta1``
    with sgd, ``process_noise`` without the filter); ``rnnsweep run --set`` refuses them."""
    task_keys = {entry.name for entry in task_setting_entries(spec.task)}
    return [
        not_applying(key, spec.estimator, optimizer)
        for key in spec.settings
        if key in SETTINGS
        and key not in task_keys
        and not applies(SETTINGS[key], spec.estimator, optimizer)
    ]
