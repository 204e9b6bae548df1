"""A run's specification (``LearnerSpec``) and the resolution of its settings.

``split_settings`` routes a spec's flat ``settings`` to the learner, its estimator and its task,
fills in defaults (``LEARNER_DEFAULTS``, the learning rates ``LR`` by optimizer and estimator)
and refuses unknown keys and bad values with a ``ValueError`` naming them. Below every part of
the engine (``member``, ``population``) and the ``Learner`` facade, which all read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnsweep.algorithms import kalman
from rnnsweep.algorithms.estimator import get_estimator, resolve_hyper
from rnnsweep.tasks import make_task, task_settings

KALMAN_RULES = {"nobacktrack-kalman": "nobacktrack", "uoro-kalman": "uoro", "rtrl-kalman": "rtrl"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT_VERSION = 1

# Learner settings and their defaults; ``None`` means "chosen from the estimator/optimizer".
LEARNER_DEFAULTS: dict[str, Any] = {
    "optimizer": None,  # sgd | adam | kalman (default adam; kalman for *-kalman rules)
    "lr": None,  # default: LR[optimizer]
    "lr_decay": 0.01,  # alpha in lr / (1 + alpha sqrt(t))
    "clip": 0.0,  # global gradient-norm clip, 0 = off (Adam bounds its steps already)
    "update_every": 1,
    "batch": 1,  # independent streams sharing one model
    "init_scale": 1.0,  # recurrent weight scale at initialisation
    "log_every": 1000,
    "beta1": 0.9,
    "beta2": 0.999,
    "adam_eps": 1e-8,
    "process_noise": kalman.PROCESS_NOISE,
    "obs_noise": -1.0,  # < 0: the filter's default for the loss kind
    "p0": kalman.P0,
    "covariance": "diagonal",  # full | block | diagonal
    "probe_every": 0,  # 0: no probe
    "probe_window": 100,
    "probe_samples": 64,
    "probe_horizon": 100,
}
PROBE_METRICS = ("bias", "variance", "cosine", "staleness")
# Default learning rates, by optimizer, then estimator (tuned on ``add``, see
# benchmarks/learning.py): per-step updates of a single stream are noisy, so Adam's rate is
# small; truncated BPTT updates once per truncation and takes a larger one.
LR: dict[str, dict[str, float]] = {
    "sgd": {"default": 1e-3},
    "adam": {
        "default": 1e-4,
        "rtrl": 1e-3,
        "tbptt": 1e-3,
        "snap1": 1e-3,
        "rflo": 1e-3,
        "kf-rtrl": 3e-4,
    },
    "kalman": {"default": 1.0},  # unused: the filter sets its own step
}
CHOICES = {
    "optimizer": ("sgd", "adam", "kalman"),
    "covariance": ("full", "block", "diagonal"),
}
POSITIVE_INT = (
    "update_every",
    "batch",
    "log_every",
    "probe_window",
    "probe_samples",
    "probe_horizon",
)


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


def _coerce(key: str, value: Any, default: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"setting {key!r} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"setting {key!r} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"setting {key!r} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"setting {key!r} must be a string, got {value!r}")
    return value


def split_settings(spec: LearnerSpec) -> tuple[dict, dict, dict, str, str]:
    """Route ``spec.settings`` to (learner, estimator, task) settings; validate every key.

    Returns ``(learner, estimator_hyper, task_settings, estimator_name, optimizer)``. Unknown
    keys and bad values raise ``ValueError`` naming them.
    """
    name = KALMAN_RULES.get(spec.estimator, spec.estimator)
    estimator = get_estimator(name)
    if name == "bptt":
        raise ValueError("estimator 'bptt' is offline (a reference): use tbptt to learn online")
    task_defaults = task_settings(spec.task)
    learner = dict(LEARNER_DEFAULTS)
    est_keys, task_keys = {}, {}
    for key, value in spec.settings.items():
        owners = [
            owner
            for owner, keys in (
                ("learner", LEARNER_DEFAULTS),
                (f"estimator {name}", estimator.defaults),
                (f"task {spec.task}", task_defaults),
            )
            if key in keys
        ]
        if not owners:
            known = sorted(set(LEARNER_DEFAULTS) | set(estimator.defaults) | set(task_defaults))
            raise ValueError(f"unknown setting {key!r} (known: {', '.join(known)})")
        if len(owners) > 1:
            raise ValueError(f"setting {key!r} is ambiguous: it belongs to {' and '.join(owners)}")
        if owners[0] == "learner":
            learner[key] = _coerce(
                key,
                value,
                LEARNER_DEFAULTS[key]
                if LEARNER_DEFAULTS[key] is not None
                else {"lr": 0.0}.get(key, ""),
            )
        elif owners[0].startswith("estimator"):
            est_keys[key] = value
        else:
            task_keys[key] = value
    resolve_hyper(estimator, est_keys)
    for key, value in make_task(spec.task, **task_keys).learner_defaults.items():
        if key not in spec.settings:
            learner[key] = value
    opt = learner["optimizer"] or ("kalman" if spec.estimator in KALMAN_RULES else "adam")
    learner["optimizer"] = opt
    for key, choices in CHOICES.items():
        if learner[key] is not None and learner[key] not in choices:
            raise ValueError(
                f"setting {key!r} must be one of {', '.join(choices)}, got {learner[key]!r}"
            )
    if spec.estimator in KALMAN_RULES and opt != "kalman":
        raise ValueError(
            f"{spec.estimator} learns with the Kalman filter; optimizer={opt} "
            f"contradicts it (use estimator {name} for {opt})"
        )
    if opt == "kalman" and estimator.influence is None:
        raise ValueError(f"optimizer kalman needs an estimator with an influence, not {name!r}")
    if learner["lr"] is None:
        learner["lr"] = LR[opt].get(name, LR[opt]["default"])
    for key in POSITIVE_INT:
        if learner[key] < 1:
            raise ValueError(f"setting {key!r} must be >= 1, got {learner[key]}")
    for key in ("lr", "lr_decay", "clip", "process_noise", "p0"):
        if learner[key] < 0:
            raise ValueError(f"setting {key!r} must be >= 0, got {learner[key]}")
    if learner["probe_every"] < 0:
        raise ValueError(f"setting 'probe_every' must be >= 0, got {learner['probe_every']}")
    if learner["probe_every"] and learner["probe_window"] > learner["probe_every"]:
        raise ValueError("setting 'probe_window' must not exceed 'probe_every'")
    if spec.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {spec.dtype!r}")
    if spec.hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {spec.hidden}")
    return learner, est_keys, task_keys, name, opt
