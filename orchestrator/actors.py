"""The Ray actor that hosts learners: one pack of trials at a time, advanced in short chunks.

A pack is one or more trials stepped together as a ``Population`` (``pack: N`` in the spec;
members share the task, cell, estimator and structure, and differ in seed and continuous
hyperparameters). The driver calls ``advance`` repeatedly; each call steps the pack for about
``seconds`` (whole report intervals, so stopping never splits a step) and returns, per trial,
the reports made, a checkpoint (the member's snapshot, which is a lone learner's, as the bytes
of a ``checkpoint_file``, every ``checkpoint_every`` steps, so that the driver can keep it even
when the checkpoint directory is on another machine) and the trial's state. Checkpoints come
and go as bytes that are only ever read by ``checkpoint_file.decode`` (never unpickled); a
member whose checkpoint is refused is left out of the pack and reported ``failed`` with the
reason by the next ``advance``, while the others run. ``drop`` stops members the driver
pruned; when half the pack is gone it is rebuilt without them. Chunks keep the actor free of
threads: a dead actor shows as an error on the pending call. The device is taken from Ray's GPU
assignment (``cuda`` when the actor was given a GPU), else the CPU.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rnnsweep.algorithms import checkpoint_file


class LearnerHost:
    """Hosts one pack of trials at a time (wrapped with ``ray.remote`` by the driver)."""

    def __init__(self, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        # Ray starts workers at nice 15, below its own daemons (a private local Ray starts them
        # at 0: ``local_ray``); a learner is the work itself, so it takes the ordinary
        # priority back where the system allows it.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except (PermissionError, OSError):
            pass
        self.population = None
        self.trials: list[int] = []  # trial number of each member, in pack order
        self.reported: set[int] = set()  # members whose end was already returned
        self.refused: dict[int, str] = {}  # trial -> why its checkpoint was refused
        self.steps = 0
        self.checkpoint_every = 0
        self.next_checkpoint = 0

    def device(self) -> str:
        import ray

        return "cuda" if ray.get_gpu_ids() else "cpu"

    def node(self) -> dict[str, str]:
        """The Ray node this actor runs on: ``{"node_id": hex id, "node_ip": address}``."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
        }

    def pid(self) -> int:
        return os.getpid()

    def start(
        self,
        members: list[tuple[int, dict[str, Any], bytes | None]],
        steps: int,
        checkpoint_every: int,
        names: dict[int, str] | None = None,
    ) -> dict[str, Any]:
        """Build (or restore) the pack ``[(trial, learner spec, checkpoint or None), ...]``;
        ``names`` says how messages name a trial's checkpoint (its file). Returns ``{"step":
        steps already done, "device": ..., "refused": {trial: reason}, "node_id": Ray's hex id
        of this node, "node_ip": its address}`` (a retried trial may run on another node)."""
        from rnnsweep.algorithms.learner import LearnerSpec
        from rnnsweep.algorithms.population import Population

        # The previous pack goes first: a failed start must leave no pack to advance (the
        # driver then sees the start's error), and a GPU must not hold two packs at once.
        self.release()
        device = self.device()
        names = names or {}
        trials, specs, snaps, refused = [], [], [], {}
        for trial, spec, checkpoint in members:
            snap = None
            if checkpoint is not None:
                source = names.get(trial, f"of trial {trial}")
                try:
                    snap = checkpoint_file.decode(checkpoint, source).snapshot
                except checkpoint_file.CheckpointError as error:
                    refused[trial] = str(error)
                    continue
            trials.append(trial)
            specs.append(LearnerSpec(**{**spec, "device": device}))
            snaps.append(snap)
        self.population = Population(specs, snaps) if specs else None
        self.trials, self.refused = trials, refused
        self.reported = set()
        self.steps, self.checkpoint_every = steps, checkpoint_every
        done = self.population.counters["t"] if self.population is not None else 0
        self.next_checkpoint = (done // checkpoint_every + 1) * checkpoint_every
        return {"step": done, "device": device, "refused": dict(refused), **self.node()}

    def advance(self, seconds: float = 1.0) -> dict[str, Any]:
        """Step for about ``seconds``; per trial: reports, maybe a checkpoint, its state."""
        failed = {
            trial: {
                "trial": trial,
                "reports": [],
                "checkpoint": None,
                "state": "failed",
                "summary": None,
                "reason": reason,
            }
            for trial, reason in self.refused.items()
        }
        self.refused = {}
        pop = self.population
        if pop is None:
            if failed:
                return {"members": failed, "step": 0}
            raise RuntimeError("advance() before start()")
        trials = list(self.trials)
        reports: dict[int, list[dict[str, Any]]] = {t: [] for t in trials}
        deadline = time.monotonic() + seconds

        def stop() -> bool:
            return time.monotonic() >= deadline

        pop.replan(self.steps)  # `rnnsweep extend --steps`: a restored trial runs longer
        summaries = pop.run(
            self.steps, on_report=lambda i, r: reports[trials[i]].append(r), should_stop=stop
        )
        done = pop.counters["t"]
        finished = done >= self.steps
        due = done >= self.next_checkpoint or finished
        if due:
            self.next_checkpoint = (done // self.checkpoint_every + 1) * self.checkpoint_every
        results: dict[int, dict[str, Any]] = failed
        ends = [i for i, trial in enumerate(trials) if pop.diverged[i] or finished]
        wanted = [i for i, t in enumerate(trials) if t not in self.reported and (due or i in ends)]
        snaps = dict(zip(wanted, pop.snapshots(wanted), strict=True))
        for i, trial in enumerate(trials):
            if trial in self.reported:
                continue
            diverged = pop.diverged[i]
            state = "diverged" if diverged else "done" if finished else "running"
            results[trial] = {
                "trial": trial,
                "reports": reports[trial],
                "checkpoint": checkpoint_file.encode(snaps[i]) if i in snaps else None,
                "state": state,
                "summary": summaries[i] if state != "running" else None,
            }
            if state != "running":
                self.reported.add(trial)
        self._compact()
        return {"members": results, "step": done}

    def drop(self, trials: list[int]) -> None:
        """Stop members (e.g. pruned by the driver); the others go on undisturbed."""
        pop = self.population
        if pop is None:
            return
        members = [i for i, t in enumerate(self.trials) if t in trials]
        pop.stop(members, "dropped by the driver")
        self.reported.update(trials)
        self._compact()

    def _compact(self) -> None:
        """Rebuild the pack without its stopped members once they are half of it."""
        pop = self.population
        if pop is None or not pop.frozen or len(pop.frozen) == pop.pack:
            return
        if len(pop.frozen) * 2 >= pop.pack:
            self.trials = [self.trials[i] for i in pop.compact()]

    def release(self) -> None:
        self.population = None
        self.trials = []
        self.reported = set()
        self.refused = {}
        if self.device() == "cuda":
            import torch

            torch.cuda.empty_cache()
