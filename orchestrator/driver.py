"""The sweep driver: the loop between the stores (``stores``) and the actors (``scheduler``).

Loop: ask Optuna for trials while fewer than ``trials`` exist and an actor is free; suggest
each one's estimator and hyperparameters (define-by-run, conditional on the estimator); open
its MLflow child run under the sweep's parent run; queue it, and let the scheduler pack queued
trials onto actors, one ``advance`` call in flight per actor. Each result's reports go to
MLflow through the tracker's queue (never blocking) and to Optuna as intermediate values for
pruning; checkpoints come back as bytes (``checkpoint_file``'s format, never unpickled here)
and are kept atomically, their step read from their header alone.

Faults: an actor that dies is replaced and its trials restarted from their last checkpoints
under the same trial numbers, up to ``max_retries`` times, then failed with the reason; a
diverged learner fails its trial with the reason (no retry); so does a trial whose checkpoint
is truncated, corrupt, of another format version or holds pickled objects (the reason names
the file and the trial; the other trials go on); a driver killed mid-sweep leaves RUNNING
trials that ``resume`` restarts from their checkpoints, in the same MLflow child runs, with no
metric step logged twice (steps already in MLflow are skipped). The ``on_event`` hook sees
the moments where a fault matters (``SweepEvent``); tests inject faults through it. Faults of
the machine (``environment_fault``: a full disk, a read-only or locked store) stop the sweep
with ``EnvironmentFault`` naming the path, its running trials left RUNNING for ``resume``; a
trial no node can host stops it before any store is created (``cluster_resources``);
a store unavailable for a while is waited for, the wait shown on the progress table, and past
``storage.outage_limit`` the driver stops as on Ctrl-C (``StoreOutage``), its trials resumable.
A lost Ray node kills its actors (their trials retried as above, on the nodes left); the pool
shrinks to what the live nodes can hold ("pool 2→1: node … lost") and grows back with them.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from rnnsweep.orchestrator import cluster_resources
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.environment_fault import EnvironmentFault, describe
from rnnsweep.orchestrator.progress_table import ProgressTable, TrialRow, row_from_trial
from rnnsweep.orchestrator.scheduler import Group, Outcome, Running, Scheduler
from rnnsweep.orchestrator.stop_signal import sigterm_as_interrupt
from rnnsweep.orchestrator.store_outage import StoreOutage
from rnnsweep.orchestrator.stores import SweepStores, Unfinished, checkpoint_step
from rnnsweep.orchestrator.sweep_lease import LeaseHeld
from rnnsweep.orchestrator.sweep_store import open_error
from rnnsweep.orchestrator.url_secrets import redact


@dataclass(frozen=True)
class SweepEvent:
    """What the driver just did, passed to its ``on_event`` hook.

    ``kind``: ``"asked"`` (a trial is about to start: asked of Optuna, or found RUNNING by
    ``resume``; nothing is recorded for it yet), ``"run_opened"`` (its MLflow child run is
    open, its id not yet recorded in Optuna), ``"checkpoint"`` (a result of the trial with a
    checkpoint is fully recorded; ``step`` is the checkpoint's), ``"creating"`` (a step of the
    sweep's creation is written: ``stage`` is one of ``stores.CREATION_STAGES``, ``number`` is
    -1; sent from the thread that opens the stores: what the hook raises there is raised again
    in the driver's thread). ``running``: the trials asked and not yet told. ``actor``: the
    Ray actor hosting the trial, if any.

    The hook runs in the driver's thread. Whatever it raises leaves the driver at that point
    (``KeyboardInterrupt`` is a Ctrl-C there, a driver killed there but for the stores'
    clean-up); ``ray.kill(event.actor)`` kills the actor's process. Tests inject their faults
    this way.
    """

    kind: str
    number: int
    running: frozenset[int]
    step: int = 0
    actor: Any = None
    stage: str = ""


@dataclass
class Driver:
    """One sweep's driver. ``pruner``: an Optuna pruner in place of the spec's (any
    ``optuna.pruners.BasePruner``); ``on_event``: a hook called with every ``SweepEvent``."""

    spec: Any  # SweepSpec
    state_dir: str
    workers: int
    out: TextIO = field(default_factory=lambda: sys.stderr)
    chunk_seconds: float = 1.0
    pruner: Any = None
    on_event: Callable[[SweepEvent], None] | None = None
    restart_broken: bool = False  # resume: restart trials with a broken checkpoint from 0

    def __post_init__(self) -> None:
        self.stores = SweepStores(self.spec, self.state_dir, self.pruner)
        self.scheduler = Scheduler(
            self.spec, self.workers, self.chunk_seconds, self.stores.checkpoint_name
        )
        self.running: dict[int, Running] = {}  # asked and not told: queued or on an actor
        objective = (self.spec.objective.metric, self.spec.objective.direction)
        slots = self.workers * self.spec.pack
        self.table = ProgressTable(
            self.spec.trials, self.out, objective, slots, steps=self.spec.steps
        )
        self._waiting_checked = 0.0
        for outage in self.stores.outages():
            outage.on_wait = lambda outage: self.table.store_status(outage.describe())

    # -- the loop ----------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run the sweep (or ``resume`` it) to its end; returns ``sweep_summary``. SIGTERM
        stops it as Ctrl-C does (``KeyboardInterrupt``)."""
        self._start(resume)
        status, summary = "FAILED", None
        restore_sigterm = sigterm_as_interrupt()  # after Ray's start: it sets its own
        try:
            if resume:
                self._seed_table()
                for unfinished in self.stores.unfinished(self.restart_broken):
                    self._begin(
                        unfinished.trial, unfinished.estimator, unfinished.settings, unfinished
                    )
            said_exhausted = False
            while True:
                if self.stores.lease_lost():
                    raise LeaseHeld(f"{self.stores.lease_lost()}; this driver stops")
                if self.stores.stop_requested():  # `rnnsweep stop`: as on Ctrl-C
                    print(f"\nstop requested by {self.stores.stop_requested()}", file=sys.stderr)
                    raise KeyboardInterrupt
                self._started(self.scheduler.fill())
                while self.scheduler.has_room() and self.stores.asked() < self.spec.trials:
                    # up to one pack's worth; those that cannot share a pack wait their turn
                    for _ in range(min(self.spec.pack, self.spec.trials - self.stores.asked())):
                        self._begin(*self.stores.ask())
                        if self.stores.exhausted is not None and not said_exhausted:
                            said_exhausted = True
                            self._exhausted()
                    self._started(self.scheduler.fill())
                if not self.running:
                    break
                for outcome in self.scheduler.wait(timeout=0.5):
                    self._on_outcome(outcome)
                self.table.store_status(self.stores.check_outage())
                self.table.draw()
                self._show_waiting()
            self.table.draw(force=True)
            summary = self.stores.summary()
            status = "FINISHED"
            return summary
        except KeyboardInterrupt:
            # raised again after the clean-up, once its traceback is gone: the frames it holds
            # may keep a half-read SQLite cursor, whose lock would block the lease's release
            status = "KILLED"
        except StoreOutage:  # past storage.outage_limit: stopped as on Ctrl-C, resumable
            status = "KILLED"
            raise
        except Exception as error:
            fault = describe(error, self.stores.places())
            if fault is None:
                raise
            status = "KILLED"  # resumable, as after Ctrl-C: RUNNING trials keep their checkpoints
            raise EnvironmentFault(f"{fault}; what was recorded is kept: {self._fix()}") from None
        finally:
            self._close(status, summary, quiet=status == "KILLED")
            self.scheduler.stop()
            restore_sigterm()
        raise KeyboardInterrupt

    def _seed_table(self) -> None:
        """Resume: the trials earlier drivers finished go into the table as they ended."""
        ended = [t for t in self.stores.study.get_trials(deepcopy=False) if t.state.is_finished()]
        self.table.seed([row_from_trial(t, self.spec.steps) for t in ended])

    def _close(self, status: str, summary: dict[str, Any] | None, quiet: bool) -> None:
        """End the running trials' MLflow runs (``KILLED``; Optuna keeps them RUNNING for
        ``resume``) and the stores. ``quiet``: after a fault or an interrupt, a store that
        fails to take these last writes (full, read-only) must not hide the first error."""
        for run in list(self.running.values()):
            if self.stores.lease_lost():  # its new driver owns the runs
                break
            try:
                run.tracker.close("KILLED")
            except Exception:  # noqa: BLE001
                if not quiet:
                    raise
        try:
            self.stores.close(status, summary)
        except Exception as error:  # noqa: BLE001
            if quiet:
                return
            fault = describe(error, self.stores.places())
            if fault is None:
                raise
            raise EnvironmentFault(f"{fault}; the sweep's parent run was not closed") from None

    def _fix(self) -> str:
        return (
            f"fix the cause, then `rnnsweep resume {self.spec.name} --state-dir "
            f"{self.state_dir}`"
        )

    def _show_waiting(self) -> None:
        """The progress output's "waiting for resources" line while no live node can host a
        trial (e.g. the node that had the resource left); checked every few seconds."""
        now = time.monotonic()
        if now - self._waiting_checked < 3.0:
            return
        self._waiting_checked = now
        self._resize()
        numbers = self.scheduler.waiting() if self.running else []
        need = cluster_resources.waiting(self.spec.resources) if numbers else ""
        trials = ", ".join(map(str, numbers))
        self.table.waiting(f"waiting for resources: trials {trials}: {need}" if need else "")

    def _resize(self) -> None:
        """The pool follows the live nodes; trials of the actors it removed queue again."""
        line, again = self.scheduler.resize()
        if line:
            print(line, file=self.out, flush=True)
        for run in again:
            run.row.state, run.row.note = "QUEUED", "its actor was removed"
            self.table.update(run.row, changed_state=True)
        self._requeue(again)

    def _start(self, resume: bool) -> None:
        """Take the sweep's lease, start Ray and check that a node can host a trial
        (``ValueError`` naming the resource); open the stores in a thread meanwhile (its
        imports overlap Ray's start) and while this one starts the actors (their processes
        overlap MLflow's store migrations). ``resume`` takes the lease first, so that a second
        driver is refused before it starts anything; a new sweep takes it once the resources
        are known to fit, so that a refused launch creates nothing. A store that cannot be
        opened because of the machine (read-only, full, locked) raises ``EnvironmentFault``
        naming it."""
        if resume:
            self._take_lease(resume)
        errors: list[BaseException] = []
        checked, go = threading.Event(), threading.Event()

        def open_stores() -> None:
            import mlflow.tracking  # noqa: F401 - imported while Ray starts
            import optuna  # noqa: F401

            checked.wait()
            if not go.is_set():
                return
            try:
                self.stores.open(resume, lambda stage: self._emit("creating", -1, stage=stage))
            except (ValueError, KeyError, StoreOutage) as error:
                errors.append(error)
            except Exception as error:  # noqa: BLE001 - an unreachable or broken store
                fault = describe(error, self.stores.places())
                if fault is not None:
                    errors.append(EnvironmentFault(f"{fault}; fix it, then run the command again"))
                    return
                where = (
                    f"the sweep's stores (Optuna {redact(self.stores.optuna_url)}, "
                    f"MLflow {redact(self.stores.tracking_uri)})"
                )
                errors.append(ValueError(open_error(where, error)))
            except BaseException as error:  # e.g. an on_event hook's KeyboardInterrupt
                errors.append(error)

        opener = threading.Thread(target=open_stores, name="open-stores")
        opener.start()
        try:
            self.scheduler.start_ray()
            if not resume:
                self._take_lease(resume)
            go.set()
        except BaseException:
            checked.set()
            opener.join()
            self.scheduler.stop()
            raise
        checked.set()
        try:
            self.scheduler.start_actors()
        except BaseException:
            opener.join()
            if not errors:
                self.stores.close("FAILED")
            raise
        opener.join()
        if errors:
            self.scheduler.stop()
            raise errors[0]

    def _take_lease(self, resume: bool) -> None:
        self.stores.take_lease(resume)
        if self.stores.takeover:
            print(self.stores.takeover, file=self.out, flush=True)

    def _exhausted(self) -> None:
        """A finite search space is fully tried: the trials left repeat its sets."""
        size = self.stores.exhausted
        print(
            f"search space exhausted after {size} trials: every parameter set is tried; "
            f"the {self.spec.trials - size} trial(s) left repeat them with new seeds",
            file=self.out,
        )

    # -- trials ------------------------------------------------------------------------------

    def _begin(
        self,
        trial: Any,
        estimator: str,
        settings: dict[str, Any],
        resumed: Unfinished | None = None,
    ) -> None:
        """Open the trial's MLflow child run and queue it (``resumed``: where a killed
        driver left it)."""
        from rnnsweep.algorithms.learner import LearnerSpec
        from rnnsweep.algorithms.population import pack_key, packable

        number = trial.number
        self._emit("asked", number)
        seed = resumed.seed if resumed is not None else None  # a continuation's: its origin's
        learner_spec = asdict(
            spec_.learner_spec(
                self.spec, estimator, settings, self.stores.seed(number) if seed is None else seed
            )
        )
        run_id = resumed.run_id if resumed is not None else None
        tracker = self.stores.open_run(trial, estimator, settings, run_id)
        if resumed is not None and resumed.restarted:
            tracker.set_tags({"rnnsweep.restarted": resumed.restarted})
        self._emit("run_opened", number)
        if run_id is None:  # its settings and run id in one transaction
            self.stores.record_run(trial, tracker, (estimator, settings))
        checkpoint = resumed.checkpoint if resumed is not None else None
        # the file's own step: a driver killed between writing it and recording its step in
        # Optuna leaves the attribute behind
        restart_from = checkpoint_step(checkpoint)
        row = TrialRow(
            number, estimator, settings_for_display(settings), self.spec.steps, step=restart_from
        )
        if resumed is not None:  # the time earlier drivers ran it
            timing = trial.user_attrs.get("timing") or {}
            row.wall_before = timing.get("wall_s", 0.0)
            row.rate_before = timing.get("steps_per_sec")
            row.continues = trial.user_attrs.get("continues")
        reported = resumed.reported if resumed is not None else set()
        run = Running(
            number,
            trial,
            estimator,
            settings,
            learner_spec,
            tracker,
            tracker.resume_step() if run_id is not None else -1,  # (a new run has no steps)
            reported,
            row,
            checkpoint=checkpoint,
            restart_from=restart_from,
        )
        self.running[number] = run
        try:
            key = pack_key(LearnerSpec(**learner_spec))
            run.pack_key = json.dumps(key, sort_keys=True, default=str)
            run.pack_limit = 1 if not packable(key) else self.spec.pack
        except ValueError as error:
            self._finish(run, "FAIL", None, f"error: {error}"[:500])
            return
        if resumed is not None and resumed.refused:  # only this trial fails; the others go on
            self._finish(run, "FAIL", None, resumed.refused)
            return
        run.row.state = "QUEUED"
        self.table.update(run.row, changed_state=True)
        self.scheduler.enqueue([run])

    def _started(self, groups: list[Group]) -> None:
        for group in groups:
            numbers = list(group.members)
            for run in group.members.values():
                if self.spec.pack > 1:
                    self._record(run, {"pack": numbers})
                run.row.state = "RUNNING"
                self.table.update(run.row, changed_state=True)

    def _on_outcome(self, outcome: Outcome) -> None:
        group = outcome.group
        if outcome.node is not None:  # (re)started on this node: recorded with the next attrs
            for run in group.members.values():
                run.unrecorded.update(self.stores.node_attrs(run.tracker, outcome.node))
        if outcome.died is not None:
            self._actor_died(group, outcome.died)
        elif outcome.error:
            for run in list(group.members.values()):
                self._finish(run, "FAIL", None, outcome.error)
            self.scheduler.release(group)
        else:
            self._handle_pack(group, outcome.result or {"members": {}})

    def _actor_died(self, group: Group, error: Exception) -> None:
        """The pack's trials go back to the queue from their last checkpoints, or fail past
        ``max_retries``."""
        again, exhausted = self.scheduler.actor_died(group, error)
        for run in exhausted:
            attrs = {"retries": run.retries}
            self._finish(run, "FAIL", None, self.scheduler.died_reason(run, error), attrs)
        for run in again:
            self._record(run, {"retries": run.retries})
            run.row.state, run.row.note = "RESTARTING", f"retry {run.retries}"
            self.table.update(run.row, changed_state=True)
        self._requeue(again)
        self._resize()  # its node may be gone: no new actor beyond what the cluster holds

    def _requeue(self, runs: list[Running]) -> None:
        """Back to the front of the queue (in order), to continue from their last checkpoint;
        a trial whose checkpoint is refused fails with the reason."""
        from rnnsweep.algorithms.checkpoint_file import CheckpointError

        again = []
        for run in runs:
            run.group = None
            try:
                run.checkpoint = self.stores.read_checkpoint(run.number)
            except CheckpointError as error:
                self._finish(run, "FAIL", None, str(error))
                continue
            run.restart_from = checkpoint_step(run.checkpoint)
            again.append(run)
        self.scheduler.enqueue(again, front=True)

    def _finish(
        self,
        run: Running,
        state: str,
        value: float | None,
        reason: str = "",
        attrs: dict[str, Any] | None = None,
        checkpoint: bytes | None = None,
    ) -> None:
        """End a trial; ``attrs`` (e.g. ``steps_done``) go with its end's user attrs,
        ``checkpoint`` (its last, from the chunk that ended it) with its end (``stores.end``)."""
        attrs = {**run.unrecorded, **(attrs or {})}
        run.unrecorded = {}
        if run.row.started is not None:
            run.row.end(time.monotonic())
            attrs["timing"] = run.row.timing(time.monotonic())
        self.stores.end(run.trial, run.tracker, state, value, reason, attrs, checkpoint)
        run.row.state, run.row.note, run.row.value = state, reason[:60], value
        self.table.update(run.row, changed_state=True)
        del self.running[run.number]
        group = run.group
        if group is not None:
            group.members.pop(run.number, None)
            if not group.members:
                self.scheduler.release(group)

    def _handle_pack(self, group: Group, result: dict[str, Any]) -> None:
        members = result["members"]
        if any(r["state"] == "running" for r in members.values()):
            # The next chunk first, so that the actor computes while this result is recorded
            # (a pruned trial then wastes at most one chunk, which is discarded).
            self.scheduler.next_chunk(group)
        pruned = []
        for number, member in members.items():
            run = group.members.get(number)
            if run is None:  # pruned while this chunk ran
                continue
            self._handle(run, member)
            if member["state"] == "running" and number not in group.members:
                pruned.append(number)
        if pruned and group.members and group.future is not None:
            self.scheduler.drop(group, pruned)
        if group.future is None and group.members:  # (never expected) the actor lost them
            self._actor_died(group, RuntimeError("the actor returned no result for its trials"))
            return
        if not group.members:
            self.scheduler.release(group)

    def _handle(self, run: Running, result: dict[str, Any]) -> None:
        """One trial's part of a chunk: metrics, pruning, checkpoint, end."""
        trial, actor = run.trial, run.actor
        pruned = False
        for report in result["reports"]:
            step = report["step"]
            if step > run.last_logged:
                run.tracker.log_metrics(step, report)
                for window in report.get("probe", ()):  # each probe window at its own step
                    run.tracker.log_metrics(window["step"], window["metrics"])
                run.last_logged = step
            loss = report["loss"]
            run.row.step, run.row.loss = step, loss
            if step not in run.reported and loss == loss:
                run.reported.add(step)
                if self.stores.report(trial, step, loss):
                    pruned = True
        ended: dict[str, Any] = {}  # user attrs written with the trial's end, if it ends here
        checkpoint, step = result["checkpoint"], 0
        if checkpoint is not None and result["state"] == "running":
            # The metrics up to the checkpoint must be in MLflow (or, while it is unavailable,
            # in the run's journal) before it can be resumed from, or a crash would leave a
            # gap; the learner is already on its next chunk.
            run.tracker.flush()
            step = self.stores.write_checkpoint(trial, checkpoint)
            # written below, or with its end if it is pruned now
            run.unrecorded.update(checkpoint_step=step, timing=run.row.timing(time.monotonic()))
            checkpoint = None  # (its end writes no second copy)
        elif checkpoint is not None:  # an ended trial's: ``end`` writes it once MLflow has all
            step = ended["checkpoint_step"] = checkpoint_step(checkpoint)
        finish = functools.partial(self._finish, run, attrs=ended, checkpoint=checkpoint)
        if result["state"] == "failed":  # e.g. its checkpoint refused by the actor
            finish("FAIL", None, result["reason"])
        elif result["state"] == "done":
            summary = result["summary"]
            metric = self.spec.objective.metric
            value = summary.get(metric)
            run.row.step = summary["steps"]
            ended["steps_done"] = summary["steps"]
            run.tracker.log_metrics(
                summary["steps"],
                {
                    "final_loss": summary["final_loss"],
                    "final_steps_per_sec": summary["steps_per_sec"],
                },
            )
            if value is None or value != value:
                finish("FAIL", None, f"objective {metric} is not a number")
            else:
                finish("COMPLETE", float(value))
        elif result["state"] == "diverged":
            ended["steps_done"] = result["summary"]["steps"]
            finish("FAIL", None, f"diverged: {result['summary']['reason']}")
        elif pruned:
            ended["steps_done"] = run.row.step
            finish("PRUNED", None, f"pruned at step {run.row.step}")
        else:
            self.table.update(run.row)
        if run.unrecorded and run.number in self.running:  # still running: its node, progress
            self._record(run)
        if result["checkpoint"] is not None:
            self._emit("checkpoint", run.number, step, actor)

    def _record(self, run: Running, attrs: dict[str, Any] | None = None) -> None:
        """``attrs`` of a running trial, with those waiting for its next write (its node,
        its progress since the last: ``Running.unrecorded``), in one transaction."""
        self.stores.record(run.trial, {**run.unrecorded, **(attrs or {})})
        run.unrecorded = {}

    def _emit(
        self, kind: str, number: int, step: int = 0, actor: Any = None, stage: str = ""
    ) -> None:
        if self.on_event is not None:
            self.on_event(SweepEvent(kind, number, frozenset(self.running), step, actor, stage))


def settings_for_display(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in ("log_every",)}
