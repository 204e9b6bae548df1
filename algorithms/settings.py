"""The settings table: every learner, optimizer, estimator, Kalman, probe and run key, once.

One ``Setting`` per key (name, type, default, bounds or choices, the estimators it applies to,
a one-line doc, per-member or pack-shared); the task keys are declared by each task
(``rnnsweep.tasks.registry.task_setting_entries``), the sweep keys in
``rnnsweep.orchestrator.sweep_settings``. Everything that validates, defaults, lists or packs
settings reads them here: the learner (``split_settings``), the estimators' ``defaults``, the
population's ``pack_key``, ``rnnsweep run --set`` and ``--help``, the sweep spec and its search
space, ``--dry-run`` and ``rnnsweep settings``.

A key *applies* to an estimator when the learner would use it (``applies``): estimator
hyperparameters to the estimators listed, Kalman keys only with the filter (the ``*-kalman``
rules, or ``optimizer: kalman``), Adam keys only with Adam, gradient-step keys never with the
filter, ``optimizer`` never to the ``*-kalman`` rules (they always learn with the filter).

Pure Python (no torch): ``rnnsweep --help`` reads it without loading the numerics.
"""

from __future__ import annotations

from typing import Any

from rnnsweep.tasks.settings import Setting, did_you_mean

KALMAN_RULES = {"nobacktrack-kalman": "nobacktrack", "uoro-kalman": "uoro", "rtrl-kalman": "rtrl"}
ONLINE = ("kf-rtrl", "nobacktrack", "rflo", "rtrl", "snap1", "tbptt", "uoro")
# Every name a learner (``run``, a sweep's ``estimators``) takes: an online estimator or a
# Kalman rule built on one.
RULES = ONLINE + tuple(KALMAN_RULES)
OPTIMIZERS = ("sgd", "adam", "kalman")
# The estimators whose lone step ``compile`` takes: those with a gradient at every step (not
# tbptt, whose gradient comes every ``stride`` steps).
COMPILED = tuple(name for name in ONLINE if name != "tbptt")
# The optimizers a key of each group applies to (other groups: every optimizer).
GROUP_OPTIMIZERS = {"gradient": ("sgd", "adam"), "adam": ("adam",), "kalman": ("kalman",)}
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
# Learner defaults a task is documented with, by task, then estimator ("*": every estimator);
# they replace the table's defaults for that task, and explicit settings override them
# (``task_defaults``; ``split_settings`` applies them for `rnnsweep run`, sweeps and the
# benchmarks alike). Each entry says where it was measured.
TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # Adam's bounded steps: theta reaches the optimum within a few thousand steps and the
    # spikes of rank-one estimates cannot throw it far (SGD at a rate small enough for them
    # stalls); the decay lets exact gradients settle (benchmarks/learning.py --only influence)
    "influence-balancing": {"*": {"optimizer": "adam", "lr": 1e-2, "lr_decay": 0.3}},
    # GRU n=64, one stream: the rank-one rules learn faster with a larger rate than the
    # table's (lr 1e-4: 0.53 bpc after 20k steps); over 360k steps (seed 2) lr 1e-3 with decay
    # 0.03 ends at 0.357 bpc, 2e-3/0.03 and 1e-3/0.01 collapse to the memoryless 1.29,
    # 5e-4/0.03 0.293, 5e-4/0.01 0.235; at 5e-4/0.01 uoro gives 0.285/0.273/0.270 and
    # nobacktrack 0.305/0.279/0.235 (seeds 0/1/2); clipping at 1 stalls them near 1.0
    # (benchmarks/learning.py --only anbn; README, "Benchmarks"). tbptt T=64 (seeds 0/1/2):
    # the table's 1e-3/0.01 gives 0.163/0.179/0.157 bpc, 1e-3/0.03 0.156/0.165/0.161,
    # 2e-3/0.03 0.156/0.158/0.165 (the best mean), 1e-3/0.1 and 1.5e-3/0.02 worse on seed 1.
    # influence_decay 0.99 for the rank-one rules: with the whole influence carried, about one
    # run in eight collapses to the memoryless level after the estimate's norm runs away
    # (twelve seeds compiled: uoro mean 0.375, nobacktrack 0.445 bpc); with 0.99, twelve
    # seeds each: uoro 0.276 +- 0.004, nobacktrack 0.276 +- 0.006, no collapse (README,
    # "Benchmarks"); biased (an exponentially truncated RTRL), as the table's entry says
    "anbn": {
        "tbptt": {"lr": 2e-3, "lr_decay": 0.03},
        "uoro": {"lr": 5e-4, "influence_decay": 0.99},  # and the table's lr_decay, 0.01
        "nobacktrack": {"lr": 5e-4, "influence_decay": 0.99},
    },
}


def _with_kalman(*names: str) -> tuple[str, ...]:
    """``names`` and the ``*-kalman`` rules built on them."""
    return names + tuple(rule for rule, base in KALMAN_RULES.items() if base in names)


_PATH = _with_kalman("nobacktrack", "rtrl", "snap1", "tbptt", "uoro")
_EPS = _with_kalman("kf-rtrl", "nobacktrack", "uoro")
_RANK_ONE = _with_kalman("nobacktrack", "uoro")

TABLE: tuple[Setting, ...] = (
    # -- run: the LearnerSpec fields (flags of `rnnsweep run`, top-level keys of a sweep)
    Setting("cell", str, "tanh", "recurrent cell", "run", choices=("tanh", "gru", "lstm")),
    Setting("hidden", int, 32, "hidden units n (a task that fixes the system sets its own)",
            "run", low=1),
    Setting("seed", int, 0, "initial parameters, task stream and estimator noise", "run",
            low=0, high=2**32 - 1, per_member=True),  # the samplers' (NumPy's) seed range
    Setting("dtype", str, "float32", "floating-point type of parameters and states", "run",
            choices=("float32", "float64")),
    # -- learner
    Setting("optimizer", str, None, "what applies the gradient estimates", "optimizer",
            choices=OPTIMIZERS, estimators=ONLINE,
            derived="adam (a task may document another); the *-kalman rules: kalman"),
    Setting("batch", int, 1, "independent streams sharing one model", low=1),
    Setting("init_scale", float, 1.0, "recurrent weight scale at initialisation", low=0.0,
            per_member=True),
    Setting("log_every", int, 1000, "steps between reports (the only host synchronisation)",
            low=1, resume_safe=True),
    # -- gradient steps (sgd, adam)
    Setting("lr", float, None, "learning rate", "gradient", low=0.0, per_member=True,
            resume_safe=True,
            derived="adam 1e-4; 1e-3 for rtrl, tbptt, snap1, rflo; 3e-4 for kf-rtrl; sgd 1e-3"),
    Setting("lr_decay", float, 0.01, "alpha of the rate lr / (1 + alpha sqrt(updates))",
            "gradient", low=0.0, per_member=True, resume_safe=True),
    Setting("clip", float, 0.0, "global gradient-norm clip; 0: off (Adam bounds its steps)",
            "gradient", low=0.0, per_member=True, resume_safe=True),
    Setting("update_every", int, 1, "steps whose gradients are averaged into one update",
            "gradient", low=1),
    Setting("compile", bool, False, "a lone learner's step (pack 1, update_every 1, no clip) "
            "as one torch.compile graph: ~2x faster at one stream after seconds of warm-up; "
            "needs a C++ compiler, else eager", "gradient", estimators=COMPILED,
            resume_safe=True),
    Setting("beta1", float, 0.9, "Adam's first-moment decay", "adam", low=0.0, high=1.0,
            high_open=True, per_member=True),
    Setting("beta2", float, 0.999, "Adam's second-moment decay", "adam", low=0.0, high=1.0,
            high_open=True, per_member=True),
    Setting("adam_eps", float, 1e-8, "Adam's denominator guard", "adam", low=0.0,
            low_open=True, per_member=True),
    # -- the Kalman filter
    Setting("process_noise", float, 1e-5, "q, added to the parameter covariance every step",
            "kalman", low=0.0, per_member=True),
    Setting("obs_noise", float, -1.0,
            "r, observation noise; < 0: the loss kind's default (ce: 1e-2, mse: 1)", "kalman",
            per_member=True),
    Setting("p0", float, 1e-2, "initial parameter covariance (an SGD-sized first step)",
            "kalman", low=0.0, low_open=True, per_member=True),
    Setting("covariance", str, "diagonal", "covariance structure: full, block (per unit), "
            "diagonal", "kalman", choices=("full", "block", "diagonal")),
    # -- the probe (a sweep sets them in its probe section: probe.every, ...)
    Setting("probe_every", int, 0, "steps between probe windows; 0: no probe", "probe",
            low=0, per_member=True, resume_safe=True),
    Setting("probe_window", int, 100, "steps measured per window: the last of its "
            "probe_horizon steps (<= probe_horizon)", "probe", low=1, per_member=True,
            resume_safe=True),
    Setting("probe_samples", int, 16, "K shadow copies of the estimator per window", "probe",
            low=1, per_member=True, resume_safe=True),
    Setting("probe_horizon", int, 100, "W: steps each window spans, from zero influence "
            "(<= probe_every)", "probe", low=1, per_member=True),
    Setting("probe_full", bool, False, "also run exact RTRL from the run's start for "
            "staleness_full (O(n^4) per step; hidden <= 64)", "probe", per_member=True),
    # -- estimator hyperparameters
    Setting("truncation", int, 16, "steps backpropagated through", "estimator", low=1,
            estimators=("tbptt",)),
    Setting("stride", int, 0, "steps between updates (<= truncation); 0: = truncation",
            "estimator", low=0, estimators=("tbptt",)),
    Setting("path", str, "auto", "closed-form (tanh; for nobacktrack and uoro also gru, lstm), "
            "generic (torch.func) or auto (closed form where one exists)", "estimator",
            choices=("auto", "closed-form", "generic"), estimators=_PATH),
    Setting("eps", float, 1e-7, "guard of the rank-one norms rho = sqrt(|w| / |v|)",
            "estimator", low=0.0, low_open=True, estimators=_EPS),
    Setting("influence_decay", float, 1.0, "gamma: the influence carried from the past is "
            "scaled by gamma every step, G <- J gamma G + dF/dtheta; 1 is unbiased, below 1 "
            "forgets beyond ~1/(1 - gamma) steps (biased) and damps the variance they carry",
            "estimator", low=0.0, high=1.0, low_open=True, estimators=_RANK_ONE),
    Setting("feedback", str, "random", "output-error feedback: fixed random matrix or the "
            "readout", "estimator", choices=("random", "readout"), estimators=("rflo",)),
    Setting("feedback_seed", int, 0, "seed of the random feedback matrix", "estimator",
            low=0, high=2**64 - 1, estimators=("rflo",)),
)
SETTINGS: dict[str, Setting] = {entry.name: entry for entry in TABLE}
RUN_KEYS = tuple(e.name for e in TABLE if e.group == "run")
LEARNER_KEYS = tuple(e.name for e in TABLE if e.group not in ("run", "estimator"))
HYPER_KEYS = tuple(e.name for e in TABLE if e.group == "estimator")
# What `run --resume CK --set` may change: rates, clipping, reporting and the probe's cadence
# (probe_horizon sizes the probe's saved ring, probe_full needs exact RTRL from step 0)
RESUME_SAFE_KEYS = tuple(e.name for e in TABLE if e.resume_safe)
PER_MEMBER = tuple(e.name for e in TABLE if e.per_member and e.group != "run")
PROBE_KEYS = tuple(e.name for e in TABLE if e.group == "probe")


def hyper_defaults(estimator: str) -> dict[str, Any]:
    """The hyperparameters of a registered estimator, with their defaults (for ``Estimator``)."""
    return {
        e.name: e.default
        for e in TABLE
        if e.group == "estimator" and e.estimators is not None and estimator in e.estimators
    }


def applies(entry: Setting, estimator: str, optimizer: str) -> bool:
    """Whether a learner of ``estimator`` with ``optimizer`` uses ``entry``."""
    if entry.estimators is not None and estimator not in entry.estimators:
        return False
    return optimizer in GROUP_OPTIMIZERS.get(entry.group, OPTIMIZERS)


def where(entry: Setting) -> str:
    """Where a key applies, for messages: ``only to tbptt``, ``only with optimizer adam``."""
    if entry.name == "optimizer":
        return "not to the *-kalman rules (they always learn with the Kalman filter)"
    if entry.group == "estimator":
        return "only to " + ", ".join(entry.estimators or ())
    if entry.group == "kalman":
        return f"only with the Kalman filter ({', '.join(KALMAN_RULES)} or optimizer kalman)"
    if entry.group in GROUP_OPTIMIZERS:
        optimizers = "only with optimizer " + " or ".join(GROUP_OPTIMIZERS[entry.group])
        if entry.estimators is not None:
            return f"{optimizers}, and only to {', '.join(entry.estimators)}"
        return optimizers
    return "to every estimator"


def not_applying(key: str, estimator: str, optimizer: str) -> str:
    """The message for a known key that a learner of ``estimator``/``optimizer`` does not use."""
    entry = SETTINGS[key]
    using = f"{estimator}" if entry.group == "estimator" else f"{estimator} with {optimizer}"
    return f"setting {key!r} applies {where(entry)}, not to {using}"


def unknown_estimator(name: Any) -> str:
    """The message for an estimator name no learner takes, with the closest and every one."""
    close = did_you_mean(name, RULES) if isinstance(name, str) else ""
    return f"unknown estimator {name!r}{close}; known: {', '.join(RULES)}"


def default_optimizer(estimator: str) -> str:
    """The optimizer a learner takes when ``optimizer`` is not set (a task may document
    another: ``TASK_DEFAULTS``)."""
    return "kalman" if estimator in KALMAN_RULES else "adam"


def task_defaults(task: str, estimator: str) -> dict[str, Any]:
    """The learner defaults ``task`` documents for ``estimator`` (``TASK_DEFAULTS``)."""
    by_estimator = TASK_DEFAULTS.get(task, {})
    return {**by_estimator.get("*", {}), **by_estimator.get(estimator, {})}


def task_default_text(key: str) -> str:
    """``task anbn: uoro 3e-4, nobacktrack 3e-4`` for the rows of ``rnnsweep settings``."""
    parts = []
    for task, by_estimator in TASK_DEFAULTS.items():
        values = [
            f"{'every estimator' if est == '*' else est} {value:g}"
            if isinstance(value, float)
            else f"{'every estimator' if est == '*' else est} {value}"
            for est, keys in by_estimator.items()
            for k, value in keys.items()
            if k == key
        ]
        if values:
            parts.append(f"task {task}: {', '.join(values)}")
    return "; ".join(parts)


def lr_default(optimizer: str, estimator: str) -> float:
    """The learning rate a learner takes when ``lr`` is not set."""
    return LR[optimizer].get(estimator, LR[optimizer]["default"])
