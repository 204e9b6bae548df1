"""A packed population: many online learners of one kind, stepped as one batched learner.

The one stepping engine: a lone ``learner.Learner`` is a population of one. Each member's
fresh state is built by ``member.Member`` and packed here; stepping, the optimizer's apply,
the run loop, reports and snapshots all happen here.

Members share what fixes the computation's shape (``pack_key``): task and its settings, cell,
hidden size, dtype, device, estimator and its hyperparameters, optimizer kind, ``update_every``,
``batch`` (b, streams per member), ``log_every`` and the filter's covariance structure. Each
member has its own seed (initial parameters, task stream, estimator noise) and its own
continuous settings (``PER_MEMBER``, the keys the settings table marks per-member: learning
rate and schedule, clipping, Adam's betas and eps, the Kalman filter's
``process_noise``/``obs_noise``/``p0``, ``init_scale``, the probe).

Layout, for ``pack`` members of b streams each (B = pack b):

    theta [pack, P], readout [pack, o, n + 1]    member i's parameters are row i
    estimator state over B streams               member i's streams are rows i b .. i b + b - 1
    optimizer m, v [pack, ...]; filter [pack]    per-member hyperparameters as [pack] tensors

A pack of one member keeps a lone learner's shared layout (the sweeps' default, ``pack: 1``,
thus costs what a lone learner costs). A larger pack gives the estimator per-stream
parameters (``theta`` repeated b times when b > 1); member i's
gradient is the mean of its b streams' gradients, clipped to its own global norm, and applied
at its own rate ``lr_i / (1 + alpha_i sqrt(t))``. With the Kalman filter each member has its own
filter (b = 1). A member thus computes what ``Learner(member_spec)`` computes alone, up to
floating-point reassociation (tests hold it to 1e-12 in float64), and a member's snapshot is a
lone learner's snapshot: it can leave a pack, continue alone, or join another pack at its step.

The step loop never synchronises with the device: per-member window loss, tail loss and gradient
norm accumulate in ``sums [pack, 3]`` (each step's losses, and a lone member's squared gradient
norms, wait on the device for up to ``RING`` steps, added to ``sums`` in one operation per fold);
every ``log_every`` steps one transfer brings them back for the members' reports and the
divergence check. A lone member (pack 1) that updates every step without clipping takes the
same update in the fewest operations: in place on its parameters, at a float rate, with no
allocation and no settings looked up (the single-stream cost, ``benchmarks/step_cost``).
A diverged or stopped (pruned) member is frozen: its snapshot is kept as it was, its rows are
zeroed and its rate masked to 0, so the others go on undisturbed; ``compact()`` rebuilds the
pack without the frozen members.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor

from rnnsweep.algorithms import (
    checkpoint,
    compiled_step,
    kalman,
    kalman_step,
    optimizer,
    pack_state,
)
from rnnsweep.algorithms.estimator import check_step, get_estimator, resolve_hyper, start
from rnnsweep.algorithms.estimator_base import StepResult
from rnnsweep.algorithms.learner_spec import (
    CHECKPOINT_VERSION,
    PROBE_METRICS,
    LearnerSpec,
    split_settings,
)
from rnnsweep.algorithms.member import Member
from rnnsweep.algorithms.params import Params
from rnnsweep.algorithms.settings import COMPILED, PER_MEMBER
from rnnsweep.algorithms.signs import stream_seeds
from rnnsweep.tasks import make_task
from rnnsweep.tasks.packed_stream import PackedStream

SHARED_COUNTERS = ("t", "updates", "pending", "planned", "tail_steps")
RING = 64  # steps of per-stream losses (and gradients) kept on the device between folds
GRAD_RING_BYTES = 1 << 22  # a lone learner's ring of gradients holds at most this / its streams
Report = Callable[[int, dict[str, Any]], None]


def pack_key(spec: LearnerSpec) -> dict[str, Any]:
    """What members of one pack must share: the spec with per-member settings resolved away."""
    learner, est_keys, task_keys, name, _ = split_settings(spec)
    return {
        "task": spec.task,
        "task_settings": make_task(spec.task, **task_keys).settings,
        "estimator": spec.estimator,
        "estimator_settings": resolve_hyper(get_estimator(name), est_keys),
        "cell": spec.cell,
        "hidden": spec.hidden,
        "dtype": spec.dtype,
        "device": spec.device,
        **{k: v for k, v in learner.items() if k not in PER_MEMBER},
    }


def packable(key: dict[str, Any]) -> bool:
    """Whether learners of this ``pack_key`` can share a pack with others (the Kalman filter's
    per-member filters need one stream per member)."""
    return key["optimizer"] != "kalman" or key["batch"] == 1


def check_packable(specs: Sequence[LearnerSpec]) -> None:
    """``ValueError`` naming the first member and setting that cannot share member 0's pack."""
    if not specs:
        raise ValueError("a population needs at least one member")
    first = pack_key(specs[0])
    for i, spec in enumerate(specs[1:], 1):
        key = pack_key(spec)
        for name, value in first.items():
            if key[name] != value:
                raise ValueError(
                    f"member {i} cannot join member 0's pack: {name} is {key[name]!r}, not "
                    f"{value!r} (members may differ only in seed and {', '.join(PER_MEMBER)})"
                )
    if len(specs) > 1 and not packable(first):
        raise ValueError(
            "members learning with the Kalman filter are packed with batch 1 only "
            f"(got batch {first['batch']}): use pack 1, or batch 1"
        )


class Population:
    """``pack`` learners stepped together; build from specs, and snapshots to continue them."""

    def __init__(
        self,
        specs: Sequence[LearnerSpec],
        snapshots: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        check_packable(specs)
        snapshots = list(snapshots) if snapshots is not None else [None] * len(specs)
        if len(snapshots) != len(specs):
            raise ValueError(f"{len(snapshots)} snapshots for {len(specs)} members")
        self.specs = list(specs)
        self._assemble(_members(self.specs, snapshots))

    # -- construction -----------------------------------------------------------------------

    def _assemble(self, members: list[Member]) -> None:
        lead = members[0]
        self.pack, self.width = len(members), lead.batch
        self.streams = self.pack * self.width
        self.device = torch.device(self.specs[0].device)
        self.dtype = lead.dtype
        self.task, self.cell, self.loss_kind = lead.task, lead.cell, lead.loss_kind
        self.config = {k: v for k, v in lead.config.items() if k not in PER_MEMBER}
        self.member_config = [m.config for m in members]
        snaps = [m.snapshot() for m in members]
        for key in SHARED_COUNTERS:
            values = {s["counters"][key] for s in snaps}
            if len(values) > 1:
                raise ValueError(
                    f"members disagree on {key!r} ({sorted(values)}): members of a pack must "
                    "stand at the same step of runs of the same length"
                )
        dev, dt = self.device, self.dtype
        # theta and the readout are views of one [pack, Q] buffer, so that the optimizer,
        # clipping and norms each take one pass over all parameters.
        self.flat = torch.stack([m.params.flat() for m in members]).to(dev)
        self.params = self._views(self.flat)
        self.fixed_readout = self.task.readout is not None
        # the optimizer's region of ``flat``: everything, or theta alone under a fixed readout
        self.trained = self.params.theta if self.fixed_readout else self.flat
        est_name = lead.estimator.name
        _, est_keys, _, _, _ = split_settings(self.specs[0])
        seeds = torch.cat([stream_seeds(s.seed, self.width) for s in self.specs]).to(dev)
        self.est_params = self._stream_params()
        self.estimator, self.est_state = start(
            est_name,
            self.cell,
            self.est_params,
            self.loss_kind,
            self.streams,
            seeds=seeds,
            **est_keys,
        )
        one = Params(members[0].params.theta.to(dev), members[0].params.readout.to(dev))
        _, member_state = start(
            est_name,
            self.cell,
            one,
            self.loss_kind,
            self.width,
            seeds=stream_seeds(0, self.width, dev),
            **est_keys,
        )
        self._templates = {"estimator": self._template_pair(self.est_state, member_state)}
        self._load("estimator", self.est_state, [s["estimator"] for s in snaps])

        self.optimizer = self.config["optimizer"]
        self.filter, self.opt_state = None, None
        if self.optimizer == "kalman":
            cov = self.config["covariance"]
            self.filter = kalman_step.init_filter(
                self.cell, self.est_params, self.streams, cov, 1.0
            )
            lone = kalman_step.init_filter(self.cell, one, self.width, cov, 1.0)
            self._templates["filter"] = self._template_pair(self.filter, lone)
            self._load("filter", self.filter, [s["filter"] for s in snaps])
        else:
            self.flat_opt = optimizer.init(self.optimizer, [self.trained])
            # the same moments seen as lone learners see theirs, (theta, readout) or (theta,)
            trained = 1 if self.fixed_readout else 2
            self.opt_state = optimizer.OptimizerState(
                self.optimizer,
                0,
                list(self._views(self.flat_opt.m[0]))[:trained] if self.flat_opt.m else [],
                list(self._views(self.flat_opt.v[0]))[:trained] if self.flat_opt.v else [],
            )
            lone = optimizer.init(self.optimizer, list(one)[:trained])
            self._templates["opt_state"] = self._template_pair(self.opt_state, lone)
            self._load("opt_state", self.opt_state, [s["opt_state"] for s in snaps])
            self.flat_opt.t = self.opt_state.t

        cpu_streams = []
        for spec, snap in zip(self.specs, snaps, strict=True):
            stream = self.task.new_stream(self.width, spec.seed, dt, "cpu")
            stream.load_state_dict(snap["stream"])
            cpu_streams.append(stream)
        self.stream = PackedStream(cpu_streams, dev)
        self._observes = self.stream.observes
        self.probes = [self._probe(m, snap) for m, snap in zip(members, snaps, strict=True)]
        self._probed = [i for i, p in enumerate(self.probes) if p is not None]

        counters = snaps[0]["counters"]
        self.counters = {key: counters[key] for key in SHARED_COUNTERS}
        self.elapsed = [s["counters"]["elapsed"] for s in snaps]
        self.diverged = [s["counters"]["diverged"] for s in snaps]
        self.reasons = [s["counters"]["reason"] for s in snaps]
        self.sums = torch.stack([s["sums"] for s in snaps]).to(dev)
        self.acc_flat = torch.stack([Params(*s["grad_acc"]).flat() for s in snaps]).to(dev)
        self.grad_acc = list(self._views(self.acc_flat))
        self.last_probe = [dict(s["last_probe"]) for s in snaps]  # windows' statistics
        self.probe_windows: list[list[dict[str, Any]]] = [[] for _ in snaps]  # since a report
        self.frozen: dict[int, dict[str, Any]] = {}
        self.hyper = self._member_hyper()
        self._checked = False
        self._prepare_step()
        frozen = [i for i, d in enumerate(self.diverged) if d]
        if frozen:
            self._freeze(frozen, [self.reasons[i] for i in frozen], dict(enumerate(snaps)))

    def _prepare_step(self) -> None:
        """The step's buffers and constants, so that its hot path looks up no settings: the
        list of the steps' losses (``[pack b]`` each, at most ``RING``) and, for a lone member
        updating every step without clipping (``_lone``), a ring of its flat gradients (at most
        ``RING`` steps of ``[Q]``, the trained region's layout), both folded into ``sums`` by
        ``_fold``; and that member's rate's terms as floats and its flat parameters and moments
        as the tensors the in-place update takes."""
        dev, c = self.device, self.counters
        self._tail_from = c["planned"] - c["tail_steps"]  # the first step of the tail
        self._losses: list[Tensor] = []  # each step's loss [pack b] since the last fold
        self._grad_k = 0  # steps in the gradient ring since its last fold
        self._compiled: Callable[..., Tensor] | None = None
        cfg = self.member_config[0]
        self._lone = (
            self.pack == 1
            and self.optimizer in optimizer.OPTIMIZERS
            and cfg["update_every"] == 1
            and not self._clipping
        )
        self._lends_grad = False
        if not self._lone:
            return
        # each step's gradient in the trained region's flat layout: the update reads one
        # tensor, and the norms the report needs are taken at the fold, for the ring at once.
        # RING steps, fewer where they would pass GRAD_RING_BYTES / streams (more streams: a
        # dearer step, where a norm each step matters less, and a bigger state beside which
        # the ring must stay small); at least one
        q = self.trained.shape[1]
        budget = GRAD_RING_BYTES // self.width
        slots = max(1, min(RING, budget // (q * self.trained.element_size())))
        self._grad_ring = torch.zeros(slots, q, dtype=self.dtype, device=dev)
        self._grad_rows = [[row] for row in self._grad_ring.unbind(0)]
        theta, readout = self.est_params
        p = self.cell.num_params
        # a fixed readout's gradient is computed but not trained: it lands in a scratch buffer
        scratch = torch.empty_like(readout)
        self._grad_slots = [
            Params(
                row[:p].view(theta.shape),
                scratch if self.fixed_readout else row[p:].view(readout.shape),
            )
            for [row] in self._grad_rows
        ]
        # estimators whose state takes a destination write the gradient into the ring
        self._lends_grad = hasattr(self.est_state, "grad_out")
        self._lr, self._lr_decay = float(cfg["lr"]), float(cfg["lr_decay"])
        adam = self.optimizer == "adam"
        self._lone_update = optimizer.lone_stepper(
            self.optimizer,
            [self.trained[0]],
            [self.flat_opt.m[0][0]] if adam else [],
            [self.flat_opt.v[0][0]] if adam else [],
            float(cfg["beta1"]),
            float(cfg["beta2"]),
            float(cfg["adam_eps"]),
        )
        # Adam's step count for each ring slot: float32 [1] views of one buffer, refilled when
        # the ring starts over
        self._count_values = torch.zeros(slots, dtype=torch.float32, device=dev)
        self._counts = [[c] for c in self._count_values.view(slots, 1).unbind(0)]
        self._lone_apply = self._lone_applier()
        # one stream: the estimators write into strided views (out=) at B > 1, which Dynamo
        # refuses, and with those writes made compile-friendly the compiled step was slower
        # than the eager one at B=64, n=128 (README, "compile")
        if cfg.get("compile") and self.estimator.name in COMPILED and self.width == 1:
            self._prepare_compiled(cfg)

    def _prepare_compiled(self, cfg: dict[str, Any]) -> None:
        """A lone member's compiled step (``compiled_step.lone_step``) with everything but the
        step's coefficients and sample bound: its flat parameters, moments and gradient-norm
        sum; and its hyperparameters as floats, for the coefficients."""
        adam = self.optimizer == "adam"
        empty = torch.empty(0, dtype=self.dtype, device=self.device)
        self._compiled = functools.partial(
            compiled_step.shared(),
            self.estimator.step,
            self.flat[0],
            self.cell.num_params,
            tuple(self.params.readout.shape[1:]),
            self.est_state,
            self.flat_opt.m[0][0] if adam else empty,
            self.flat_opt.v[0][0] if adam else empty,
            self.sums,
            self.trained.shape[1],
            adam,
        )
        self._compiled_hyper = (adam, self._lr, self._lr_decay) + tuple(
            float(cfg[key]) for key in ("beta1", "beta2", "adam_eps")
        )

    def _step_compiled(self, x: Tensor, y: Tensor) -> Tensor | None:
        """A lone member's step through its compiled graph: the loss, or ``None`` (and eager
        steps from now on, with a warning) where the step cannot be compiled."""
        c, opt = self.counters, self.flat_opt
        t, updates = opt.t + 1, c["updates"]
        coefficients = compiled_step.coefficients(*self._compiled_hyper, t, updates)
        try:
            loss = self._compiled(coefficients, x, y)
        except compiled_step.CompileError as error:
            self._compiled = None
            warning = f"compile: {error}; stepping eagerly"
            warnings.warn(warning, compiled_step.CompileWarning, stacklevel=3)
            return None
        opt.t = self.opt_state.t = t
        c["updates"] = updates + 1
        return loss

    def _lone_applier(self) -> Callable[[Params], None]:
        """A lone member's update in the fewest operations (in place, at a float rate): the
        gradient into its ring slot (already there when the estimator wrote it there), then
        Adam (or SGD) over the flat trained region; everything it reads but the gradient is
        bound here, so that a step looks up no settings."""
        rows, slots, update = self._grad_rows, self._grad_slots, self._lone_update
        slots_n = len(slots)
        fixed_readout = self.fixed_readout
        lr0, decay, c = self._lr, self._lr_decay, self.counters
        opt, lone_opt = self.flat_opt, self.opt_state

        def apply(grad: Params) -> None:
            k = self._grad_k
            slot = slots[k]
            if grad is not slot:  # an estimator that made its own tensors
                slot.theta.copy_(grad.theta)
                if not fixed_readout:
                    slot.readout.copy_(grad.readout)
            self._grad_k = k + 1
            updates = c["updates"]
            t = opt.t + 1
            opt.t = lone_opt.t = t
            if k == 0:  # a fresh ring: the counts of its steps, t .. t + RING - 1
                self._refill_counts(t)
            update(rows[k], self._counts[k], t, lr0 / (1.0 + decay * updates**0.5))
            c["updates"] = updates + 1
            if k + 1 == slots_n:
                self._fold_gradients()

        return apply

    def _refill_counts(self, t: int) -> None:
        """The fused Adam kernel's step counts ``t, t + 1, ...``, one per slot of the gradient
        ring, written in place in one operation (``_counts`` holds views of them)."""
        slots = self._count_values.shape[0]
        torch.arange(t, t + slots, dtype=torch.float32, device=self.device, out=self._count_values)

    def _fold(self) -> None:
        """Add the steps since the last fold to ``sums`` (window and, past ``_tail_from``, tail
        loss; the gradient norms ``||g||`` of the ring's steps) and empty the loss list and the
        gradient ring. The step folds every ``RING`` steps and at the tail's first step, so a
        fold never straddles it."""
        if self._losses:
            k = len(self._losses)
            rows = torch.stack(self._losses).view(k, self.pack, self.width).sum(2)
            total = rows.to(torch.float64).sum(0)
            self.sums[:, 0] += total
            if self.counters["t"] - k >= self._tail_from:
                self.sums[:, 1] += total
            self._losses = []
        self._fold_gradients()

    def _fold_gradients(self) -> None:
        """Add the gradient norms ``||g||`` of the ring's steps to ``sums`` and empty the ring
        (the losses keep their own schedule: ``_fold`` takes both)."""
        if self._grad_k:
            norms = torch.linalg.vector_norm(self._grad_ring[: self._grad_k], dim=1)
            self.sums[:, 2] += norms.to(torch.float64).sum()
            self._grad_k = 0

    def _views(self, flat: Tensor) -> Params:
        """``flat [pack, Q]`` (or its theta region) as ``Params`` views."""
        p = self.cell.num_params
        theta = flat[:, :p]
        if flat.shape[1] == p:
            return Params(theta, flat[:, :0])
        return Params(theta, flat[:, p:].view(self.pack, -1, self.cell.hidden + 1))

    def _template_pair(self, packed: Any, member: Any) -> tuple[Any, Any]:
        """The pack's and a member's fresh state as ``pack_state`` templates (shapes only)."""
        return checkpoint.snapshot(packed, shapes=True), checkpoint.snapshot(member, shapes=True)

    def _load(self, name: str, obj: Any, trees: list[Any]) -> None:
        packed, member = self._templates[name]
        stacked = _moved(pack_state.stack(trees, packed, member), self.device)
        checkpoint.restore(obj, stacked, name)

    def _stream_params(self) -> Params:
        """The parameters the estimator sees: a pack of one member keeps a lone learner's
        shared layout (views of row 0, the lone arithmetic and speed); a larger pack gives
        each stream its member's row (repeated b times when b > 1)."""
        if self.pack == 1:
            return Params(self.params.theta[0], self.params.readout[0])
        if self.width == 1:
            return self.params
        return Params(
            self.params.theta.repeat_interleave(self.width, 0),
            self.params.readout.repeat_interleave(self.width, 0),
        )

    def _sync_stream_params(self) -> None:
        if self.width > 1 and self.pack > 1:
            for p, e in zip(self.params, self.est_params, strict=True):
                e.view(self.pack, self.width, *p.shape[1:]).copy_(p.unsqueeze(1))

    def _member_hyper(self) -> dict[str, Any]:
        """Per-member hyperparameters: a float where all members agree (the lone learner's
        arithmetic, and fewer operations), else a ``[pack]`` tensor on the device."""
        rows = self.member_config
        default_r = kalman.OBS_NOISE[self.loss_kind]
        values = {
            key: [r[key] for r in rows]
            for key in ("lr", "lr_decay", "clip", "beta1", "beta2", "adam_eps", "process_noise")
        }
        values["obs_noise"] = [r["obs_noise"] if r["obs_noise"] >= 0 else default_r for r in rows]
        if self.optimizer == "kalman" and self.loss_kind == "ce":
            for i, r in enumerate(values["obs_noise"]):
                if r == 0.0:  # what a lone learner's filter refuses at its first step
                    raise ValueError(
                        f"member {i}: obs_noise must be > 0 for ce: the Fisher diag(p) - p p^T "
                        "is singular"
                    )
        hyper: dict[str, Any] = {}
        for key, column in values.items():
            # the filter's noises act in the parameters' dtype, the rest in float64
            dtype = self.dtype if key in ("process_noise", "obs_noise") else torch.float64
            uniform = all(v == column[0] for v in column)
            hyper[key] = (
                float(column[0])
                if uniform and key != "lr"
                else torch.tensor(column, dtype=dtype, device=self.device)
            )
        hyper["live"] = torch.ones(self.pack, dtype=torch.float64, device=self.device)
        hyper["live_lr"] = hyper["lr"].clone()  # lr, 0 for frozen members
        self._clipping = any(r["clip"] > 0 for r in rows)
        return hyper

    def _probe(self, member: Member, snap: dict[str, Any]) -> Any:
        if member.probe is None:
            return None
        from rnnsweep.algorithms import probe

        p = member.probe
        state = probe.init(
            probe.config_from(member.config),
            self.cell,
            p.estimator_name,
            p.hyper,
            self.loss_kind,
            p.seed,
            self.dtype,
            self.device,
        )
        state.load_state_dict(snap["probe"])
        return state

    # -- stepping ---------------------------------------------------------------------------

    @property
    def active(self) -> list[bool]:
        return [i not in self.frozen for i in range(self.pack)]

    def _rates(self) -> Tensor:
        h, updates = self.hyper, self.counters["updates"]
        return h["live_lr"] / (1.0 + h["lr_decay"] * updates**0.5)

    def _apply(self, grad: Params) -> None:
        """A pack's update (a lone member's fewest operations are ``_lone_apply``'s)."""
        cfg, c, h = self.config, self.counters, self.hyper
        g_theta, g_readout = grad
        if self.pack == 1:  # shared layout: already the mean over the member's streams
            g_theta, g_readout = g_theta.unsqueeze(0), g_readout.unsqueeze(0)
        elif self.width > 1:
            g_theta = g_theta.view(self.pack, self.width, -1).mean(1)
            g_readout = g_readout.view(self.pack, self.width, *g_readout.shape[1:]).mean(1)
        g = torch.cat([g_theta, g_readout.flatten(1)], dim=1)
        if cfg["update_every"] > 1:
            self.acc_flat.add_(g)
            c["pending"] += 1
            if c["pending"] < cfg["update_every"]:
                return
            g = self.acc_flat.div_(cfg["update_every"])
        if self.fixed_readout:
            g = g[:, : self.cell.num_params]
        norm = torch.linalg.vector_norm(g, dim=1)  # [pack]
        if self._clipping:
            clip = h["clip"]
            scale = torch.clamp(clip / (norm + 1e-12), max=1.0)
            if isinstance(clip, Tensor):
                scale = torch.where(clip > 0, scale, 1.0)
            g = g * scale.to(g.dtype).unsqueeze(1)
        self.sums[:, 2].add_(norm)  # in place on the view: no write back
        optimizer.update(
            self.flat_opt,
            [self.trained],
            [g],
            self._rates(),
            beta1=h["beta1"],
            beta2=h["beta2"],
            eps=h["adam_eps"],
        )
        self.opt_state.t = self.flat_opt.t
        c["updates"] += 1
        if cfg["update_every"] > 1:
            self.acc_flat.zero_()
            c["pending"] = 0
        self._sync_stream_params()

    def step(self) -> Tensor:
        """One time step of every member; returns the per-stream loss ``[pack b]``."""
        c = self.counters
        x, y = self.stream.next()
        if not self._checked:
            check_step(self.cell, self.est_params, self.loss_kind, self.streams, x, y)
            self._checked = True
        if self._probed and any(self.probes[i].wants(c["t"]) for i in self._probed):
            self._observe_probes(x, y)
        if self.filter is not None:
            h = self.hyper
            result, new = kalman_step.filtered_step(
                self.estimator,
                self.est_params,
                self.est_state,
                self.filter,
                x,
                y,
                process_noise=h["process_noise"],
                obs_noise=h["obs_noise"],
            )
            keep = list(self.est_params)[: 1 if self.fixed_readout else 2]
            for p, value in zip(keep, new, strict=False):
                if self.frozen and self.pack > 1:
                    value = torch.where(optimizer._rows(h["live"] > 0, p), value, p)
                p.copy_(value)
            c["updates"] += 1
            loss = result.loss
        else:
            loss = self._step_compiled(x, y) if self._compiled is not None else None
            if loss is None:
                result = self._estimate(x, y)
                grad = result.grad
                if grad is not None:
                    self._lone_apply(grad) if self._lone else self._apply(grad)
                loss = result.loss
        if self._observes:
            self.stream.observe(loss)
        t = c["t"]
        if len(self._losses) == RING or t == self._tail_from:
            self._fold()
        self._losses.append(loss)  # a fresh tensor of the estimator's: kept, not copied
        c["t"] = t + 1
        return loss

    def _estimate(self, x: Tensor, y: Tensor) -> StepResult:
        """The estimator's step, its gradient written into the ring's next row where the
        estimator takes a loan (lent for this step only)."""
        state = self.est_state
        if not self._lends_grad:
            return self.estimator.step(self.est_params, state, x, y)
        state.grad_out = self._grad_slots[self._grad_k]
        result = self.estimator.step(self.est_params, state, x, y)
        state.grad_out = None
        return result

    def _observe_probes(self, x: Tensor, y: Tensor) -> None:
        t, b = self.counters["t"], self.width
        states = self.est_state.traj.state
        for i in self._probed:
            p = self.probes[i]
            if i in self.frozen or not p.wants(t):
                continue
            mine = Params(self.params.theta[i], self.params.readout[i])
            report = p.observe(mine, states[i * b].clone(), x[i * b], y[i * b], t)
            if report:
                metrics = {k: report[k] for k in PROBE_METRICS if k in report}
                add_window(self.last_probe[i], metrics)
                self.probe_windows[i].append({"step": report["step"], "metrics": metrics})

    def _reports(self, steps: int, seconds: float) -> dict[int, dict[str, Any]]:
        """Each live member's report for the last ``steps`` steps (one host transfer)."""
        self._fold()
        c, b = self.counters, self.width
        finite = torch.isfinite(self.flat).all(1)
        window = self.sums[:, 0] / (steps * b)
        grad = self.sums[:, 2] / max(1, steps)
        host = torch.stack([window, grad, finite.to(torch.float64)], dim=1).tolist()
        self.sums[:, 0] = 0.0
        self.sums[:, 2] = 0.0
        live = self.pack - len(self.frozen)
        reports, diverged = {}, []
        for i, (loss, grad_norm, ok) in enumerate(host):
            if i in self.frozen:
                continue
            self.elapsed[i] += seconds
            rate = steps * b / max(seconds, 1e-9)
            reports[i] = make_report(
                self.task,
                c,
                self.member_config[i],
                loss,
                grad_norm,
                rate,
                self.stream.curriculum(i),
                self.probe_windows[i],
            )
            self.probe_windows[i] = []
            reports[i]["pack_steps_per_sec"] = rate * live
            reason = divergence(loss, bool(ok), c["t"])
            if reason:
                diverged.append((i, reason))
        if diverged:
            for i, _ in diverged:
                self.diverged[i] = True
            self.stop([i for i, _ in diverged], [reason for _, reason in diverged])
        return reports

    def run(
        self,
        steps: int,
        on_report: Report | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Step until ``steps`` steps in total (a restored pack continues); members' summaries.

        ``on_report(member, report)`` is called for each live member every ``log_every`` steps.
        """
        c = self.counters
        self._fold()  # steps taken before the plan are judged by the plan they were taken under
        plan(c, steps)
        self._tail_from = c["planned"] - c["tail_steps"]
        log_every = self.config["log_every"]
        while c["t"] < steps and len(self.frozen) < self.pack:
            begin, t0 = c["t"], time.perf_counter()
            chunk = min(log_every - c["t"] % log_every, steps - c["t"])
            try:
                for _ in range(chunk):
                    self.step()
            except (torch.OutOfMemoryError, RecursionError):
                raise  # the device's limit or the program's, not the numerics: the caller decides
            except (RuntimeError, torch.linalg.LinAlgError) as error:
                if "can't allocate memory" in str(error):  # the CPU allocator's out-of-memory
                    raise MemoryError(str(error).splitlines()[0]) from error
                # One member's failure (e.g. a failed Cholesky) cannot be told from another's
                # here: the whole pack reports it, as a lone learner would.
                reason = f"numerical failure at step {c['t']}: {error}"
                live = [i for i in range(self.pack) if i not in self.frozen]
                for i in live:
                    self.diverged[i] = True
                self.stop(live, [reason] * len(live))
                break
            seconds = time.perf_counter() - t0
            reports = self._reports(c["t"] - begin, seconds)
            if on_report is not None:
                for i, report in reports.items():
                    on_report(i, report)
            if should_stop is not None and should_stop():
                break
        return self.summaries()

    # -- members ----------------------------------------------------------------------------

    def stop(self, members: Sequence[int], reasons: Sequence[str] | str = "stopped") -> None:
        """Freeze ``members`` (e.g. pruned): they stop updating and reporting; others go on."""
        members = [i for i in members if i not in self.frozen]
        if not members:
            return
        if isinstance(reasons, str):
            reasons = [reasons] * len(members)
        snaps = dict(zip(members, self.snapshots(members), strict=True))
        self._freeze(members, list(reasons), snaps)

    def _freeze(self, members: list[int], reasons: list[str], snaps: dict[int, dict]) -> None:
        for k, i in enumerate(members):
            snap = snaps[i]
            snap["counters"]["diverged"] = self.diverged[i]
            snap["counters"]["reason"] = reasons[k]
            self.frozen[i] = snap
            self.reasons[i] = reasons[k]
        # Zeroed rows, zero rate; whatever a frozen row computes after stays in its row.
        for p in (self.flat, self.acc_flat):
            p[members] = 0.0
        self.sums[members] = 0.0
        self.hyper["live"][members] = 0.0
        self.hyper["live_lr"][members] = 0.0
        self._lone = False  # a frozen row keeps its zero rate: the masked update takes over
        self._lends_grad = False  # the masked update makes its own gradient
        self._compiled = None
        self._sync_stream_params()
        for name, obj in self._states():
            packed, member = self._templates[name]
            tree = pack_state.zero_rows(checkpoint.snapshot(obj), packed, member, members)
            checkpoint.restore(obj, tree, name)

    def _states(self) -> list[tuple[str, Any]]:
        """The batched states whose rows are members' (estimator, and optimizer or filter)."""
        parts = [("estimator", self.est_state), ("opt_state", self.opt_state)]
        return [(name, obj) for name, obj in parts + [("filter", self.filter)] if obj is not None]

    def snapshots(self, members: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Members' snapshots, each a lone ``Learner``'s (``Learner.restore`` reads it)."""
        members = list(range(self.pack)) if members is None else list(members)
        self._fold()
        trees = {"opt_state": None, "filter": None}
        trees.update((name, checkpoint.snapshot(obj)) for name, obj in self._states())
        out = []
        for i in members:
            if i in self.frozen:
                out.append(self.frozen[i])
                continue
            parts = {}
            for name, tree in trees.items():
                if tree is None:
                    parts[name] = None
                else:
                    packed, member = self._templates[name]
                    parts[name] = _moved(pack_state.take(tree, packed, member, i), "cpu")
            probe = self.probes[i]
            out.append(
                {
                    "version": CHECKPOINT_VERSION,
                    "spec": asdict(self.specs[i]),
                    "params": [p[i].detach().cpu().clone() for p in self.params],
                    "opt_state": parts["opt_state"],
                    "filter": parts["filter"],
                    "estimator": parts["estimator"],
                    "stream": self.stream.member_state(i),
                    "probe": probe.state_dict() if probe is not None else None,
                    "counters": {
                        **self.counters,
                        "diverged": self.diverged[i],
                        "reason": self.reasons[i],
                        "elapsed": self.elapsed[i],
                    },
                    "sums": self.sums[i].cpu().clone(),
                    "grad_acc": [g[i].cpu().clone() for g in self.grad_acc],
                    "last_probe": dict(self.last_probe[i]),
                }
            )
        return out

    def replan(self, steps: int) -> None:
        """Lengthen a restored run to ``steps`` (``rnnsweep extend --steps``, ``run --resume
        --steps``): its tail, the last 10% that ``final_loss`` averages, moves to the new end
        and what it had summed is dropped. ``ValueError`` for a shorter run, or when the new
        tail would start before the step reached (those losses were summed under the old
        plan); the message gives the least length that works."""
        c = self.counters
        if not c["planned"] or c["planned"] == steps:
            return
        if steps < c["planned"]:
            raise ValueError(f"this run was planned for {c['planned']} steps; it cannot shrink")
        if steps - max(1, steps // 10) < c["t"]:
            # N - N // 10 <= 0.9 N + 0.9: no N below 10 t / 9 - 1 works; a few steps from there
            least = max(c["t"] + 1, c["t"] * 10 // 9 - 2)
            while least - max(1, least // 10) < c["t"]:
                least += 1
            raise ValueError(
                f"at step {c['t']}, a run of {steps} steps would average its final loss over "
                f"steps already taken; extend it to at least {least} steps"
            )
        self._fold()
        c["planned"], c["tail_steps"] = steps, max(1, steps // 10)
        self.sums[:, 1] = 0
        self._tail_from = c["planned"] - c["tail_steps"]

    def summaries(self) -> list[dict[str, Any]]:
        """Each member's ``Learner.summary()`` (frozen members as they were when frozen)."""
        self._fold()
        tails = self.sums[:, 1].tolist()
        out = []
        for i in range(self.pack):
            if i in self.frozen:
                snap = self.frozen[i]
                counters, tail, probe = snap["counters"], float(snap["sums"][1]), snap["last_probe"]
            else:
                counters = {
                    **self.counters,
                    "elapsed": self.elapsed[i],
                    "diverged": self.diverged[i],
                    "reason": self.reasons[i],
                }
                tail, probe = tails[i], self.last_probe[i]
            out.append(summarize(self.task, counters, tail, self.width, probe))
        return out

    def compact(self) -> list[int]:
        """Rebuild the pack from its live members; returns their former indices."""
        live = [i for i in range(self.pack) if i not in self.frozen]
        if not live or len(live) == self.pack:
            return list(range(self.pack))
        snaps = self.snapshots(live)
        self.specs = [self.specs[i] for i in live]
        self._assemble(_members(self.specs, snaps))
        return live


def _members(
    specs: Sequence[LearnerSpec], snapshots: Sequence[dict[str, Any] | None]
) -> list[Member]:
    """Each member's fresh state, restored where a snapshot is given.

    Built on the CPU (where all streams generate), so that packing changes nothing about what
    a member computes."""
    members = []
    for spec, snap in zip(specs, snapshots, strict=True):
        member = Member(replace(spec, device="cpu"))
        if snap is not None:
            member.restore(snap)
        members.append(member)
    return members


def _moved(tree: Any, device: torch.device | str) -> Any:
    """A snapshot tree with its tensors on ``device``."""
    if isinstance(tree, Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _moved(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_moved(v, device) for v in tree]
    return tree


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
    probe_windows: list[dict[str, Any]],
) -> dict[str, Any]:
    """One report: window loss (and bpc), gradient norm, stream-steps/s, rate, curriculum, and
    under ``probe`` the probe windows completed since the last report, each ``{"step": its own
    step, "metrics": {name: value}}`` (a tracker logs each at its own step; none is repeated)."""
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
    if probe_windows:
        report["probe"] = list(probe_windows)
    return report


def add_window(stats: dict[str, float], metrics: dict[str, float]) -> None:
    """Fold one probe window's ``metrics`` into ``stats`` (flat: ``{m}_n``, ``{m}_sum``,
    ``{m}_last``, ``{m}_max``; non-finite values, e.g. ``bias_se`` for K < 3, skipped)."""
    stats["windows"] = stats.get("windows", 0) + 1
    for key, value in metrics.items():
        if not math.isfinite(value):
            continue
        stats[f"{key}_n"] = stats.get(f"{key}_n", 0) + 1
        stats[f"{key}_sum"] = stats.get(f"{key}_sum", 0.0) + value
        stats[f"{key}_last"] = value
        stats[f"{key}_max"] = max(stats.get(f"{key}_max", -math.inf), value)


def probe_summary(stats: dict[str, float]) -> dict[str, float]:
    """``{m}_mean``, ``{m}_last``, ``{m}_max`` over the probe windows, and ``probe_windows``."""
    if not stats:
        return {}
    out: dict[str, float] = {"probe_windows": stats["windows"]}
    for key in PROBE_METRICS:
        if stats.get(f"{key}_n"):
            out[f"{key}_mean"] = stats[f"{key}_sum"] / stats[f"{key}_n"]
            out[f"{key}_last"] = stats[f"{key}_last"]
            out[f"{key}_max"] = stats[f"{key}_max"]
    return out


def divergence(loss: float, finite_params: bool, step: int) -> str:
    """Why a run diverged at ``step`` (a non-finite loss or parameter), or ``""``."""
    if not math.isfinite(loss):
        return f"non-finite loss at step {step}"
    if not finite_params:
        return f"non-finite parameters at step {step}"
    return ""


def summarize(
    task: Any, counters: dict[str, Any], tail_sum: float, batch: int, probe_stats: dict[str, Any]
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
    summary.update(probe_summary(probe_stats))
    return summary
