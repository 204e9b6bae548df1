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

from rnnsweep.algorithms import checkpoint, checkpoint_file, kalman_step, optimizer
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import check_step, get_estimator, resolve_hyper, start
from rnnsweep.algorithms.params import Params, init_params
from rnnsweep.algorithms.settings import (
    HYPER_KEYS,
    KALMAN_RULES,
    LEARNER_KEYS,
    RUN_KEYS,
    SETTINGS,
    applies,
    default_optimizer,
    did_you_mean,
    hyper_defaults,
    lr_default,
    not_applying,
)
from rnnsweep.algorithms.signs import stream_seeds
from rnnsweep.algorithms.system_cell import system_cell
from rnnsweep.tasks import make_task
from rnnsweep.tasks.registry import task_setting_entries

DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT_VERSION = checkpoint_file.FORMAT  # a snapshot's layout is the file's body
PROBE_METRICS = ("bias", "variance", "cosine", "staleness")


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


def split_settings(spec: LearnerSpec) -> tuple[dict, dict, dict, str, str]:
    """Route ``spec.settings`` to (learner, estimator, task) settings; validate every key.

    Keys, types, bounds and defaults come from the settings table
    (``rnnsweep.algorithms.settings``) and the task's declared settings. Returns
    ``(learner, estimator_hyper, task_settings, estimator_name, optimizer)``. Unknown keys (with
    a did-you-mean), hyperparameters of other estimators and bad values raise ``ValueError``
    naming them.
    """
    name = KALMAN_RULES.get(spec.estimator, spec.estimator)
    estimator = get_estimator(name)
    if name == "bptt":
        raise ValueError("estimator 'bptt' is offline (a reference): use tbptt to learn online")
    for key in RUN_KEYS:
        SETTINGS[key].check(getattr(spec, key))
    task_entries = {entry.name: entry for entry in task_setting_entries(spec.task)}
    learner = {key: SETTINGS[key].default for key in LEARNER_KEYS}
    est_keys, task_keys = {}, {}
    for key, value in spec.settings.items():
        mine = key in HYPER_KEYS and spec.estimator in (SETTINGS[key].estimators or ())
        owners = [
            owner
            for owner, known in (
                ("learner", key in LEARNER_KEYS),
                (f"estimator {name}", mine),
                (f"task {spec.task}", key in task_entries),
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
            raise ValueError(f"setting {key!r} is ambiguous: it belongs to {' and '.join(owners)}")
        if owners[0] == "learner":
            learner[key] = SETTINGS[key].check(value)
        elif owners[0].startswith("estimator"):
            est_keys[key] = value
        else:
            task_keys[key] = value
    resolve_hyper(estimator, est_keys)
    for key, value in make_task(spec.task, **task_keys).learner_defaults.items():
        if key not in spec.settings:
            learner[key] = value
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
            self.cell = system_cell(task.cell())
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
