"""The online learner: one task stream, a cell, a readout, an estimator and an optimizer.

Every step: ``x_t, y_t`` from the stream -> the estimator's step (cell forward, readout, loss,
gradient estimate) -> every ``update_every`` steps, the mean of the accumulated gradients is
clipped to global norm ``clip`` and applied by the optimizer (``sgd``, ``adam``) at the rate
``lr / (1 + lr_decay sqrt(t))`` — or, with ``optimizer = kalman``, the extended Kalman filter
over the parameters takes the step from the estimator's influence. Losses are accumulated on
the device; every ``log_every`` steps (the only host synchronisation) the learner reports its
running loss, bits per character where the task counts characters, gradient norm and
stream-steps per second, and checks for divergence: a non-finite loss or parameter ends the
run with ``diverged = True`` and a reason, never an exception.

``snapshot()`` / ``restore()`` cover the whole state (parameters, optimizer or filter,
estimator state, stream position and RNG, probe, counters), so that a restored learner
continues bit-for-bit like one never interrupted. ``final_loss`` is the mean loss (nats) over
the last 10% of the planned steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import checkpoint, checkpoint_file, kalman, kalman_step, optimizer
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import check_step, get_estimator, resolve_hyper, start
from rnnsweep.algorithms.params import Params, init_params
from rnnsweep.algorithms.signs import stream_seeds
from rnnsweep.tasks import make_task, task_settings

KALMAN_RULES = {"nobacktrack-kalman": "nobacktrack", "uoro-kalman": "uoro", "rtrl-kalman": "rtrl"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT_VERSION = checkpoint_file.FORMAT  # a snapshot's layout is the file's body

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


class Learner:
    """One online learner; build it from a ``LearnerSpec`` (validated before any work)."""

    def __init__(self, spec: LearnerSpec) -> None:
        learner, est_keys, task_keys, est_name, opt = split_settings(spec)
        self.spec = spec
        self.config = learner
        self.task = make_task(spec.task, **task_keys)
        self.dtype = DTYPES[spec.dtype]
        self.device = torch.device(spec.device)
        task = self.task
        if task.cell is not None:
            if "hidden" in spec.settings or (task.hidden and spec.hidden not in (task.hidden, 32)):
                raise ValueError(f"task {task.name} fixes the system: hidden = {task.hidden}")
            self.cell = task.cell()
        else:
            self.cell = make_cell(spec.cell, spec.hidden, task.inputs)
        self.batch = learner["batch"]
        gen = torch.Generator().manual_seed(spec.seed)
        params = init_params(
            self.cell, task.outputs, gen, self.dtype, self.device, learner["init_scale"]
        )
        if task.readout is not None:
            params = Params(params.theta, task.readout.to(self.dtype).to(self.device).clone())
        self.params = params
        self.estimator = get_estimator(est_name)
        self.estimator, self.est_state = start(
            est_name,
            self.cell,
            params,
            task.loss_kind,
            self.batch,
            seeds=stream_seeds(spec.seed, self.batch, self.device),
            **est_keys,
        )
        if task.initial_state is not None:
            s0 = task.initial_state.to(self.dtype).to(self.device)
            self.est_state.traj.set_state(s0.expand(self.batch, -1))
        self.stream = task.new_stream(self.batch, spec.seed, self.dtype, self.device)
        self.optimizer = opt
        if opt == "kalman":
            self.filter = kalman_step.init_filter(
                self.cell, params, self.batch, learner["covariance"], learner["p0"]
            )
            self.opt_state = None
        else:
            self.filter = None
            trainable = list(params)[:1] if task.readout is not None else list(params)
            self.opt_state = optimizer.init(opt, trainable)
        self.probe = None
        if learner["probe_every"]:
            from rnnsweep.algorithms import probe

            config = probe.ProbeConfig(
                learner["probe_every"],
                learner["probe_window"],
                learner["probe_samples"],
                learner["probe_horizon"],
            )
            self.probe = probe.init(
                config,
                self.cell,
                est_name,
                est_keys,
                task.loss_kind,
                spec.seed,
                self.dtype,
                self.device,
            )
        self.counters = {
            "t": 0,  # steps done
            "updates": 0,
            "pending": 0,  # gradients accumulated since the last update
            "planned": 0,  # total steps of the run (for final_loss)
            "tail_steps": 0,
            "diverged": False,
            "reason": "",
            "elapsed": 0.0,  # seconds of stepping, across restarts
        }
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # window, tail, |g|
        self.grad_acc = [torch.zeros_like(p) for p in params]
        self.last_probe: dict[str, float] = {}
        self.loss_kind = task.loss_kind
        self._checked = False

    # -- stepping ---------------------------------------------------------------------------

    def _apply(self, grad: Params) -> None:
        cfg, c = self.config, self.counters
        if cfg["update_every"] > 1:
            for acc, g in zip(self.grad_acc, grad, strict=True):
                acc.add_(g)
            c["pending"] += 1
            if c["pending"] < cfg["update_every"]:
                return
            grads = [acc.div_(cfg["update_every"]) for acc in self.grad_acc]
        else:
            grads = list(grad)
        if self.task.readout is not None:
            grads = grads[:1]
        norm = optimizer.clip_(grads, cfg["clip"])
        self.sums[2] += norm
        lr = optimizer.learning_rate(cfg["lr"], cfg["lr_decay"], c["updates"])
        targets = list(self.params)[: len(grads)]
        optimizer.update(
            self.opt_state,
            targets,
            grads,
            lr,
            beta1=cfg["beta1"],
            beta2=cfg["beta2"],
            eps=cfg["adam_eps"],
        )
        c["updates"] += 1
        if cfg["update_every"] > 1:
            for acc in self.grad_acc:
                acc.zero_()
            c["pending"] = 0

    def step(self) -> Tensor:
        """One time step of all streams; returns the per-stream loss ``[B]``."""
        c = self.counters
        x, y = self.stream.next()
        if not self._checked:
            check_step(self.cell, self.params, self.loss_kind, self.batch, x, y)
            self._checked = True
        if self.probe is not None and self.probe.wants(c["t"]):
            s_prev = self.est_state.traj.state[0].clone()
            report = self.probe.observe(self.params, s_prev, x[0], y[0], c["t"])
            if report:
                self.last_probe = {k: report[k] for k in PROBE_METRICS}
                self.last_probe["probe_step"] = report["step"]
        if self.filter is not None:
            cfg = self.config
            obs = cfg["obs_noise"] if cfg["obs_noise"] >= 0 else None
            result, new = kalman_step.filtered_step(
                self.estimator,
                self.params,
                self.est_state,
                self.filter,
                x,
                y,
                process_noise=cfg["process_noise"],
                obs_noise=obs,
            )
            self.params.theta.copy_(new.theta)
            if self.task.readout is None:
                self.params.readout.copy_(new.readout)
            c["updates"] += 1
        else:
            result = self.estimator.step(self.params, self.est_state, x, y)
            if result.grad is not None:
                self._apply(result.grad)
        loss = result.loss
        self.stream.observe(loss)
        total = loss.sum()
        self.sums[0] += total
        if c["t"] >= c["planned"] - c["tail_steps"]:
            self.sums[1] += total
        c["t"] += 1
        return loss

    def _report(self, steps: int, seconds: float) -> dict[str, Any]:
        c = self.counters
        window_loss = float(self.sums[0]) / (steps * self.batch)
        grad_norm = float(self.sums[2]) / max(1, steps)
        self.sums[0] = 0.0
        self.sums[2] = 0.0
        report = make_report(
            self.task,
            c,
            self.config,
            window_loss,
            grad_norm,
            steps * self.batch / max(seconds, 1e-9),
            self.stream.curriculum,
            self.last_probe,
        )
        finite = all(bool(torch.isfinite(p).all()) for p in self.params)
        reason = divergence(window_loss, finite, c["t"])
        if reason:
            c["diverged"], c["reason"] = True, reason
        return report

    def run(
        self,
        steps: int,
        on_report: Callable[[dict[str, Any]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Step until ``steps`` steps in total are done (a restored learner continues)."""
        c = self.counters
        plan(c, steps)
        log_every = self.config["log_every"]
        while c["t"] < steps and not c["diverged"]:
            begin, t0 = c["t"], time.perf_counter()
            chunk = min(log_every - c["t"] % log_every, steps - c["t"])
            try:
                for _ in range(chunk):
                    self.step()
            except torch.OutOfMemoryError:
                raise  # the device's limit, not the learner's numerics: the caller decides
            except (RuntimeError, torch.linalg.LinAlgError) as error:  # e.g. a failed Cholesky
                c["diverged"], c["reason"] = True, f"numerical failure at step {c['t']}: {error}"
                break
            seconds = time.perf_counter() - t0
            c["elapsed"] += seconds
            report = self._report(c["t"] - begin, seconds)
            if on_report is not None:
                on_report(report)
            if should_stop is not None and should_stop():
                break
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return summarize(self.task, self.counters, float(self.sums[1]), self.batch, self.last_probe)

    # -- checkpoints ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "spec": asdict(self.spec),
            "params": [p.detach().clone() for p in self.params],
            "opt_state": checkpoint.snapshot(self.opt_state),
            "filter": checkpoint.snapshot(self.filter),
            "estimator": checkpoint.snapshot(self.est_state),
            "stream": self.stream.state_dict(),
            "probe": self.probe.state_dict() if self.probe is not None else None,
            "counters": dict(self.counters),
            "sums": self.sums.clone(),
            "grad_acc": [g.clone() for g in self.grad_acc],
            "last_probe": dict(self.last_probe),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint version {snap.get('version')!r} is not {CHECKPOINT_VERSION}"
            )
        saved, mine = dict(snap["spec"]), asdict(self.spec)
        saved.pop("device", None)  # a run may continue on another device
        mine.pop("device", None)
        if saved != mine:
            raise ValueError(
                f"checkpoint was written by a different run specification: {saved} != {mine}"
            )
        for p, value in zip(self.params, snap["params"], strict=True):
            checkpoint.restore(p, value, "params")
        if self.opt_state is not None:
            checkpoint.restore(self.opt_state, snap["opt_state"], "optimizer")
        if self.filter is not None:
            checkpoint.restore(self.filter, snap["filter"], "filter")
        checkpoint.restore(self.est_state, snap["estimator"], "estimator")
        self.stream.load_state_dict(snap["stream"])
        if self.probe is not None:
            self.probe.load_state_dict(snap["probe"])
        self.counters = dict(snap["counters"])
        self.sums.copy_(snap["sums"])
        for g, saved in zip(self.grad_acc, snap["grad_acc"], strict=True):
            g.copy_(saved)
        self.last_probe = dict(snap["last_probe"])
        self._checked = False


def plan(counters: dict[str, Any], steps: int) -> None:
    """Fix a run's length (and its tail, the last 10%); a restored run keeps its own."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if counters["planned"] and counters["planned"] != steps:
        raise ValueError(f"this run was planned for {counters['planned']} steps, not {steps}")
    counters["planned"] = steps
    counters["tail_steps"] = max(1, steps // 10)


def make_report(
    task: Any,
    counters: dict[str, Any],
    config: dict[str, Any],
    loss: float,
    grad_norm: float,
    rate: float,
    curriculum: dict[str, float],
    last_probe: dict[str, Any],
) -> dict[str, Any]:
    """One report: window loss (and bpc), gradient norm, stream-steps/s, rate, curriculum, probe."""
    report = {
        "step": counters["t"],
        "loss": loss,
        "grad_norm": grad_norm,
        "steps_per_sec": rate,
        "lr": optimizer.learning_rate(config["lr"], config["lr_decay"], counters["updates"]),
    }
    if task.bits_per_char:
        report["bpc"] = loss / math.log(2)
    if task.name == "copy" or curriculum:
        report.update({f"curriculum_{k}": v for k, v in curriculum.items()})
    report.update(last_probe)
    return report


def divergence(loss: float, finite_params: bool, step: int) -> str:
    """Why a run diverged at ``step`` (a non-finite loss or parameter), or ``""``."""
    if not math.isfinite(loss):
        return f"non-finite loss at step {step}"
    if not finite_params:
        return f"non-finite parameters at step {step}"
    return ""


def summarize(
    task: Any, counters: dict[str, Any], tail_sum: float, batch: int, last_probe: dict[str, Any]
) -> dict[str, Any]:
    """A run's summary from its counters and the summed loss of its tail (last 10% of steps)."""
    c = counters
    done_tail = max(0, min(c["tail_steps"], c["t"] - (c["planned"] - c["tail_steps"])))
    final = tail_sum / (done_tail * batch) if done_tail else float("nan")
    summary = {
        "final_loss": final,
        "steps": c["t"],
        "planned_steps": c["planned"],
        "steps_per_sec": c["t"] * batch / c["elapsed"] if c["elapsed"] else 0.0,
        "diverged": c["diverged"],
        "reason": c["reason"],
        "unit": task.unit,
        "references": dict(task.references),
    }
    if task.bits_per_char:
        summary["final_bpc"] = final / math.log(2)
    for key in ("bias", "variance", "cosine", "staleness"):
        summary[key] = last_probe.get(key)
    return summary


def save_checkpoint(learner: Learner, path: str, extra: dict[str, Any] | None = None) -> None:
    """Write the learner's snapshot (and ``extra``, e.g. a tracking run id) atomically, in the
    format of ``checkpoint_file``."""
    checkpoint_file.write(path, learner.snapshot(), extra)


def learner_from(
    saved: checkpoint_file.Checkpoint, source: str, spec: LearnerSpec | None = None
) -> Learner:
    """Rebuild the learner of a read checkpoint; ``source`` names it in messages. ``spec``, if
    given, must be the checkpoint's own."""
    try:
        saved_spec = LearnerSpec(**saved.snapshot["spec"])
    except TypeError as error:
        raise checkpoint_file.CheckpointError(
            f"checkpoint {source} has a malformed run specification: {error}"
        ) from None
    if spec is not None and asdict(spec) != asdict(saved_spec):
        raise checkpoint_file.CheckpointError(
            f"checkpoint {source} belongs to another run: {asdict(saved_spec)} != {asdict(spec)}"
        )
    try:
        learner = Learner(saved_spec)
        learner.restore(saved.snapshot)
    except (ValueError, TypeError, KeyError) as error:
        raise checkpoint_file.CheckpointError(
            f"checkpoint {source} does not fit its run: {error}"
        ) from None
    return learner


def load_checkpoint(path: str, spec: LearnerSpec | None = None) -> Learner:
    """Rebuild a learner from a checkpoint file; a corrupt or mismatched file is refused."""
    return learner_from(checkpoint_file.read(path), checkpoint_file.describe(path), spec)
