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
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import kalman_step, optimizer
from rnnsweep.algorithms.estimator import check_step
from rnnsweep.algorithms.learner_spec import (
    CHECKPOINT_VERSION,
    CHOICES,
    DTYPES,
    KALMAN_RULES,
    LEARNER_DEFAULTS,
    LR,
    POSITIVE_INT,
    PROBE_METRICS,
    LearnerSpec,
    split_settings,
)
from rnnsweep.algorithms.member import Member
from rnnsweep.algorithms.params import Params

__all__ = [  # the settings names are re-exported from learner_spec, where they live
    "CHECKPOINT_VERSION",
    "CHOICES",
    "DTYPES",
    "KALMAN_RULES",
    "LEARNER_DEFAULTS",
    "LR",
    "POSITIVE_INT",
    "PROBE_METRICS",
    "Learner",
    "LearnerSpec",
    "divergence",
    "load_checkpoint",
    "make_report",
    "plan",
    "read_checkpoint",
    "save_checkpoint",
    "split_settings",
    "summarize",
]


class Learner(Member):
    """One online learner; build it from a ``LearnerSpec`` (validated before any work)."""

    def __init__(self, spec: LearnerSpec) -> None:
        super().__init__(spec)
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

    def restore(self, snap: dict[str, Any]) -> None:
        super().restore(snap)
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
    """Write the learner's snapshot (and ``extra``, e.g. a tracking run id) atomically."""
    import os
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({**learner.snapshot(), "extra": dict(extra or {})}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str) -> dict[str, Any]:
    """The raw snapshot in a checkpoint file; a missing, corrupt or foreign file is refused."""
    try:
        snap = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path!r} does not exist") from None
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"checkpoint {path!r} is corrupt or not a checkpoint: {error}") from None
    if not isinstance(snap, dict) or "spec" not in snap or "version" not in snap:
        raise ValueError(f"checkpoint {path!r} is not an rnnsweep learner checkpoint")
    return snap


def load_checkpoint(path: str, spec: LearnerSpec | None = None) -> Learner:
    """Rebuild a learner from a checkpoint file; a corrupt or mismatched file is refused."""
    snap = read_checkpoint(path)
    saved = LearnerSpec(**snap["spec"])
    if spec is not None and asdict(spec) != asdict(saved):
        raise ValueError(
            f"checkpoint {path!r} belongs to another run: {asdict(saved)} != {asdict(spec)}"
        )
    learner = Learner(saved)
    learner.restore(snap)
    return learner
