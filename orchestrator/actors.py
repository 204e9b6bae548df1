"""The Ray actor that hosts learners: one trial at a time, advanced in short chunks.

The driver calls ``advance`` repeatedly; each call steps the learner for about ``seconds``
(whole report intervals, so stopping never splits a step) and returns the reports made, a
checkpoint (the learner's snapshot as bytes, every ``checkpoint_every`` steps, so that the
driver can keep it even when the checkpoint directory is on another machine) and the trial's
state. Chunks keep the actor free of threads: pruning is simply not asking for the next chunk,
and a dead actor shows as an error on the pending call. The device is taken from Ray's GPU
assignment (``cuda`` when the actor was given a GPU), else the CPU.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any


def snapshot_bytes(learner) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(learner.snapshot(), buffer)
    return buffer.getvalue()


class LearnerHost:
    """Hosts one learner at a time (wrapped with ``ray.remote`` by the driver)."""

    def __init__(self, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        # Ray starts workers at nice 15, below its own daemons; a learner is the work itself,
        # so it takes the ordinary priority back where the system allows it.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except (PermissionError, OSError):
            pass
        self.learner = None
        self.trial: int | None = None
        self.steps = 0
        self.checkpoint_every = 0
        self.next_checkpoint = 0

    def device(self) -> str:
        import ray

        return "cuda" if ray.get_gpu_ids() else "cpu"

    def pid(self) -> int:
        return os.getpid()

    def start(
        self,
        trial: int,
        spec: dict[str, Any],
        steps: int,
        checkpoint_every: int,
        checkpoint: bytes | None = None,
    ) -> dict[str, Any]:
        """Build (or restore) the trial's learner; returns ``{"step": steps already done}``."""
        import torch

        from algorithms.learner import Learner, LearnerSpec

        spec = {**spec, "device": self.device()}
        learner = Learner(LearnerSpec(**spec))
        if checkpoint is not None:
            snap = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=False)
            learner.restore(snap)
        self.learner, self.trial, self.steps = learner, trial, steps
        self.checkpoint_every = checkpoint_every
        done = learner.counters["t"]
        self.next_checkpoint = (done // checkpoint_every + 1) * checkpoint_every
        return {"step": done, "device": spec["device"]}

    def advance(self, seconds: float = 1.0) -> dict[str, Any]:
        """Step for about ``seconds``; returns reports, maybe a checkpoint, and the state."""
        learner = self.learner
        if learner is None:
            raise RuntimeError("advance() before start()")
        reports: list[dict[str, Any]] = []
        checkpoint = None
        deadline = time.monotonic() + seconds

        def stop() -> bool:
            return time.monotonic() >= deadline

        summary = learner.run(self.steps, on_report=reports.append, should_stop=stop)
        done = learner.counters["t"]
        finished = done >= self.steps or summary["diverged"]
        if done >= self.next_checkpoint or finished:
            checkpoint = snapshot_bytes(learner)
            self.next_checkpoint = (done // self.checkpoint_every + 1) * self.checkpoint_every
        state = "diverged" if summary["diverged"] else "done" if finished else "running"
        return {
            "trial": self.trial,
            "reports": reports,
            "checkpoint": checkpoint,
            "checkpoint_step": done if checkpoint is not None else None,
            "state": state,
            "summary": summary if finished else None,
        }

    def release(self) -> None:
        self.learner = None
        self.trial = None
