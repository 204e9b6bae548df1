"""Where a sweep's trials run: the actor pool on Ray, the queue, packing and retries.

``Running`` is one trial between Optuna's ask and tell: queued, or in a pack (``Group``) on a
``LearnerHost`` actor. ``fill`` gives queued trials to free actors, up to ``pack`` trials that
can share one (the same pack key: task, cell, estimator, structure; and the same steps done);
each pack has one ``advance`` call in flight, and ``wait`` returns the calls that ended: a
result, a failed call, or a dead actor. An actor that dies is replaced; ``actor_died`` says
which of its trials go again (from their last checkpoints, at the front of the queue) and
which have used up their ``max_retries``. The pool holds at most what the live nodes can hold
(``cluster_resources.capacity``), never more than ``workers``: ``resize`` follows the cluster
(a node lost, a node added) and gives back the trials of the actors it removes, to queue again
from their checkpoints (no retry counted: a trial never waits on an actor no node can place).
The scheduler writes no store: its callers record what it decides.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rnnsweep.orchestrator import cluster_resources, local_ray
from rnnsweep.orchestrator.actors import LearnerHost
from rnnsweep.orchestrator.environment_fault import trial_reason
from rnnsweep.orchestrator.progress_table import TrialRow
from rnnsweep.orchestrator.tracking import Tracker


@dataclass
class Running:
    """A trial asked of Optuna and not yet told: queued for an actor, or in a pack on one."""

    number: int
    trial: Any  # optuna.trial.Trial
    estimator: str
    settings: dict[str, Any]
    learner_spec: dict[str, Any]
    tracker: Tracker
    last_logged: int
    reported: set[int]
    row: TrialRow
    pack_key: str = ""  # trials with equal keys (and steps done) can share a pack
    pack_limit: int = 1  # the most trials its pack may hold
    checkpoint: bytes | None = None  # to start from (queued trials)
    group: Group | None = None
    retries: int = 0
    restart_from: int = 0  # steps done at the (re)start
    unrecorded: dict[str, Any] = field(default_factory=dict)  # user attrs for its next write

    @property
    def actor(self) -> Any:
        return self.group.actor if self.group is not None else None


@dataclass
class Group:
    """One actor's pack: its trials, and its one call in flight."""

    actor: Any
    members: dict[int, Running]
    future: Any = None
    start_future: Any = None
    node: dict[str, str] | None = None  # where it runs: {"node_id": .., "node_ip": ..}


@dataclass
class Outcome:
    """A pack's call that ended: its ``result``, or ``died`` (the actor's error), or
    ``error`` (why the call failed: the trials fail, the actor lives on)."""

    group: Group
    result: dict[str, Any] | None = None
    died: Exception | None = None
    error: str = ""
    node: dict[str, str] | None = None  # the pack's node, on its first result after a start


class Scheduler:
    """The actor pool and the queue of one sweep. ``names(number)`` says how messages name a
    trial's checkpoint."""

    def __init__(
        self, spec: Any, workers: int, chunk_seconds: float, names: Callable[[int], str]
    ) -> None:
        self.spec, self.workers, self.chunk_seconds, self.names = (
            spec,
            workers,
            chunk_seconds,
            names,
        )
        self.started_ray = False
        self.reaper: subprocess.Popen | None = None  # of the local instance it started
        self.queue: list[Running] = []  # waiting for an actor
        self.groups: list[Group] = []  # packs on actors
        self.idle: list[Any] = []
        self.actors: list[Any] = []
        self.pool = workers  # the actors the live cluster can hold, at most ``workers``
        self.nodes: set[str] = set()  # the live nodes' ids, at the last ``resize``
        self.placed: dict[Any, Any] = {}  # actor -> its ``node()`` call: ready once placed

    # -- the pool ----------------------------------------------------------------------------

    def start(self) -> None:
        """``start_ray`` then ``start_actors``."""
        self.start_ray()
        self.start_actors()

    def start_ray(self) -> None:
        """Start Ray (a private local instance unless ``RAY_ADDRESS`` names one) and check
        that a node can host a trial (``ValueError`` naming the resource if none can)."""
        import ray

        if not ray.is_initialized():
            quiet = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
            if os.environ.get("RAY_ADDRESS"):
                ray.init(**quiet)
            else:
                cpus = max(1, math.ceil(self.workers * self.spec.resources.cpus))
                self.reaper = local_ray.start(cpus, **quiet)
            self.started_ray = True
        cluster_resources.check(self.spec.resources)

    def start_actors(self) -> None:
        """The pool's actors, ``workers`` or what the cluster can hold if fewer (each starts
        once Ray finds it a node)."""
        self.pool = self._capacity()
        for _ in range(self.pool):
            self.idle.append(self._new_actor())

    def stop(self) -> None:
        """Stop the Ray this scheduler started (left to its reaper when the process ends
        next: ``local_ray.exit_follows``); on a shared instance, kill its actors."""
        import ray

        if self.started_ray and self.reaper is not None and local_ray.exit_follows:
            local_ray.leave_to_reaper(self.reaper)
        elif self.started_ray:
            ray.shutdown()
            if self.reaper is not None:
                local_ray.stop(self.reaper)
        else:  # on a shared instance, give the actors' resources back
            for actor in self.actors:
                ray.kill(actor)

    def _new_actor(self) -> Any:
        import ray

        res = self.spec.resources
        host = ray.remote(LearnerHost).options(
            num_cpus=res.cpus, num_gpus=res.gpus, max_restarts=0, max_concurrency=1
        )
        actor = host.remote(max(1, int(res.cpus)))
        self.actors.append(actor)
        self.placed[actor] = actor.node.remote()
        return actor

    def _capacity(self) -> int:
        """``workers``, or fewer when the live nodes hold fewer actors; updates ``nodes``."""
        capacity, self.nodes = cluster_resources.capacity(self.spec.resources)
        return self.workers if capacity is None else min(self.workers, capacity)

    def _remove(self, actor: Any) -> None:
        import ray

        if actor in self.actors:
            self.actors.remove(actor)
        if actor in self.idle:
            self.idle.remove(actor)
        self.placed.pop(actor, None)
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def _node_of(self, actor: Any) -> str | None:
        """The node id of a placed actor; ``None`` while unplaced; ``""`` if it died."""
        import ray

        ref = self.placed.get(actor)
        if ref is None or not ray.wait([ref], timeout=0)[0]:
            return None
        try:
            return ray.get(ref)["node_id"]
        except ray.exceptions.RayError:
            return ""

    def resize(self) -> tuple[str, list[Running]]:
        """Follow the live cluster: the pool becomes what it can hold (at most ``workers``).
        Idle actors of a lost node go; on a shrink, the surplus actors that are idle or not
        yet placed are killed. Returns a line for the progress output when the size changed
        ("pool 2→1: node 1a2b3c4d lost"), and the trials of the killed actors, to queue
        again from their last checkpoints (no retry counted)."""
        before, old_pool = set(self.nodes), self.pool
        self.pool = self._capacity()
        for actor in list(self.idle):  # an idle actor's death shows on no call: look
            if self._node_of(actor) not in (None, *self.nodes):
                self._remove(actor)
        again: list[Running] = []
        surplus = len(self.actors) - self.pool
        busy = {group.actor: group for group in self.groups}
        unplaced = [a for a in self.actors if self._node_of(a) is None]
        order = [a for a in unplaced if a not in busy] + [a for a in unplaced if a in busy]
        order += [a for a in self.idle if a not in order]
        for actor in order[: max(0, surplus)]:
            group = busy.get(actor)
            if group is not None:
                self.groups.remove(group)
                for run in group.members.values():
                    run.group = None
                    again.append(run)
                group.members.clear()
            self._remove(actor)
        if self.pool == old_pool:
            return "", again
        lost = ", ".join(node[:8] for node in sorted(before - self.nodes))
        added = ", ".join(node[:8] for node in sorted(self.nodes - before))
        why = f"node {lost} lost" if lost else f"node {added} added" if added else "cluster changed"
        return f"pool {old_pool}→{self.pool}: {why}", again

    # -- the queue ---------------------------------------------------------------------------

    def has_room(self) -> bool:
        """An actor is free and no trial waits for one: time to ask Optuna for more (one
        trial even while the pool is empty, so that the sweep waits for a node, not ends)."""
        return len(self.groups) < max(1, self.pool) and not self.queue

    def enqueue(self, runs: list[Running], front: bool = False) -> None:
        if front:
            self.queue[:0] = runs
        else:
            self.queue.extend(runs)

    def unqueue(self, run: Running) -> None:
        if run in self.queue:
            self.queue.remove(run)

    def fill(self) -> list[Group]:
        """Give queued trials to free actors, up to ``pack`` trials that can share one each:
        same pack key (task, cell, estimator, structure) and the same steps done. Returns the
        packs started."""
        started = []
        while self.queue and len(self.groups) < self.pool:
            first = self.queue[0]
            members = [
                run
                for run in self.queue
                if (run.pack_key, run.restart_from) == (first.pack_key, first.restart_from)
            ][: first.pack_limit]
            for run in members:
                self.queue.remove(run)
            started.append(self._dispatch(members))
        return started

    def _dispatch(self, members: list[Running]) -> Group:
        """Start a pack on an actor without waiting: an actor runs its calls in order, so the
        first ``advance`` follows ``start``; a failed start surfaces on that future."""
        actor = self.idle.pop() if self.idle else self._new_actor()
        group = Group(actor, {run.number: run for run in members})
        self.groups.append(group)
        group.start_future = actor.start.remote(
            [(run.number, run.learner_spec, run.checkpoint) for run in members],
            self.spec.steps,
            self.spec.checkpoint_every,
            {run.number: self.names(run.number) for run in members},
        )
        group.future = actor.advance.remote(self.chunk_seconds)
        for run in members:
            run.group, run.checkpoint = group, None
        return group

    # -- calls in flight ---------------------------------------------------------------------

    def wait(self, timeout: float) -> list[Outcome]:
        """The packs' calls that ended within ``timeout`` seconds (at most one)."""
        import ray

        futures = {g.future: g for g in self.groups if g.future is not None}
        ready, _ = ray.wait(list(futures), num_returns=1, timeout=timeout)
        outcomes = []
        for future in ready:
            group = futures[future]
            group.future = None
            if group not in self.groups:
                continue
            try:
                outcome = Outcome(group, result=ray.get(future))
                if group.node is None:  # its start is done: the advance followed it
                    start = ray.get(group.start_future)
                    group.node = {key: start[key] for key in ("node_id", "node_ip")}
                    outcome.node = group.node
                outcomes.append(outcome)
            except ray.exceptions.RayActorError as error:
                outcomes.append(Outcome(group, died=error))
            except ray.exceptions.RayTaskError as task_error:
                cause = task_error.cause
                try:  # a failed start is the real cause of a failed first advance
                    ray.get(group.start_future)
                except ray.exceptions.RayTaskError as start_error:
                    cause = start_error.cause
                except ray.exceptions.RayActorError as actor_error:
                    outcomes.append(Outcome(group, died=actor_error))
                    continue
                outcomes.append(Outcome(group, error=trial_reason(cause)))
        return outcomes

    def waiting(self) -> list[int]:
        """Trials waiting for an actor to start: queued, or in a pack whose actor has not
        started yet (Ray has no node for it, or has not placed it yet)."""
        import ray

        numbers = [run.number for run in self.queue]
        for group in self.groups:
            if group.start_future is not None:
                ready, _ = ray.wait([group.start_future], timeout=0)
                if not ready:
                    numbers.extend(group.members)
        return sorted(numbers)

    def next_chunk(self, group: Group) -> None:
        """The pack's next ``advance``, sent before its result is recorded (the actor
        computes meanwhile)."""
        group.future = group.actor.advance.remote(self.chunk_seconds)

    def drop(self, group: Group, numbers: list[int]) -> None:
        """Stop trials of a pack (e.g. pruned); the others go on."""
        group.actor.drop.remote(numbers)

    def release(self, group: Group) -> None:
        """A pack with no trial left: its actor takes the next one (after its current call)."""
        if group in self.groups:
            self.groups.remove(group)
        if len(self.actors) > self.pool:  # the pool shrank while it ran
            self._remove(group.actor)
        elif group.actor in self.actors and group.actor not in self.idle:
            self.idle.append(group.actor)

    def actor_died(self, group: Group, error: Exception) -> tuple[list[Running], list[Running]]:
        """Replace the pack's actor; returns its trials ``(again, exhausted)``: those to run
        again from their last checkpoints, those past ``max_retries`` (to fail with
        ``died_reason``). Each has its ``retries`` counted."""
        if group in self.groups:
            self.groups.remove(group)
        self._remove(group.actor)
        again, exhausted = [], []
        for run in list(group.members.values()):
            run.group = None
            run.retries += 1
            (exhausted if run.retries > self.spec.max_retries else again).append(run)
        group.members.clear()
        return again, exhausted

    def died_reason(self, run: Running, error: Exception) -> str:
        return (
            f"actor died {run.retries} times (max_retries {self.spec.max_retries}): "
            f"{type(error).__name__}: {_last_line(error)}"
        )


def _last_line(error: Exception) -> str:
    """The most telling line of a Ray error (its root cause comes last)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
