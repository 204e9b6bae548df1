"""One member of the engine: its fresh state, and that state as a snapshot and back.

``Member(spec)`` builds what one learner starts from, validated before any work: the task and
its stream, the cell, the initial parameters (seeded by ``spec.seed``), the estimator and its
state over ``batch`` streams, the optimizer's state or the Kalman filter, the probe, the
counters (``t``, ``updates``, ``pending``, ``planned``, ``tail_steps``, ``diverged``,
``reason``, ``elapsed``), the loss sums ``[3]`` (window, tail, gradient norm) and the
gradient accumulator. It never steps: ``population.Population`` packs members into its batched
state and steps them. ``snapshot()`` is a lone learner's checkpoint body (format
``CHECKPOINT_VERSION``); ``restore(snap)`` writes one back, refusing another version, another
run specification (the device aside) or any mismatched field, naming it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from rnnsweep.algorithms import checkpoint, kalman_step, optimizer
from rnnsweep.algorithms.cell import make_cell
from rnnsweep.algorithms.estimator import get_estimator, start
from rnnsweep.algorithms.learner_spec import (
    CHECKPOINT_VERSION,
    DTYPES,
    LearnerSpec,
    split_settings,
)
from rnnsweep.algorithms.params import Params, init_params
from rnnsweep.algorithms.signs import stream_seeds
from rnnsweep.algorithms.system_cell import system_cell
from rnnsweep.tasks import make_task


class Member:
    """One learner's state, built from a ``LearnerSpec``; stepped by a ``Population``."""

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

            self.probe = probe.init(
                probe.config_from(learner),
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
        self.last_probe: dict[str, float] = {}  # probe windows' statistics (population)
        self.loss_kind = task.loss_kind

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
