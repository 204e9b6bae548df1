"""The sweep driver: Optuna's only writer, Ray actors' dispatcher, MLflow's recorder.

Loop: ask Optuna for a trial (``study.ask``) while fewer than ``trials`` exist and an actor is
free; suggest its estimator and hyperparameters (define-by-run, conditional on the estimator);
open its MLflow child run under the sweep's parent run (tag ``optuna_trial_number``; user attr
``mlflow_run_id`` on the trial); start it on a ``LearnerHost`` actor and keep one ``advance``
call in flight per actor. Each result's reports go to MLflow through the tracker's queue
(never blocking) and to Optuna as intermediate values for pruning; checkpoints come back as
bytes (``checkpoint_file``'s format, never unpickled here) and are written atomically to the
state directory. The driver reads a checkpoint's step from its header alone.

Faults: an actor that dies is replaced and its trial restarted from its last checkpoint under
the same trial number, up to ``max_retries`` times, then failed with the reason; a diverged
learner fails its trial with the reason (no retry); so does a trial whose checkpoint is
truncated, corrupt, of another format version or holds pickled objects (the reason names the
file and the trial; the other trials go on); a driver killed mid-sweep leaves RUNNING
trials that ``resume`` restarts from their checkpoints, in the same MLflow child runs, with no
metric step logged twice (steps already in MLflow are skipped).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from rnnsweep.algorithms import checkpoint_file
from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator import sweep_store
from rnnsweep.orchestrator.actors import LearnerHost
from rnnsweep.orchestrator.progress_table import ProgressTable, TrialRow
from rnnsweep.orchestrator.tracking import Tracker, child_run


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


@dataclass(frozen=True)
class SweepEvent:
    """What the driver just did, passed to its ``on_event`` hook.

    ``kind``: ``"asked"`` (a trial is about to start: asked of Optuna, or found RUNNING by
    ``resume``; nothing is recorded for it yet), ``"run_opened"`` (its MLflow child run is
    open, its id not yet recorded in Optuna), ``"checkpoint"`` (a result of the trial with a
    checkpoint is fully recorded; ``step`` is the checkpoint's). ``running``: the trials asked
    and not yet told. ``actor``: the Ray actor hosting the trial, if any.

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

    def __post_init__(self) -> None:
        self.name = self.spec.name
        storage = self.spec.storage
        self.optuna_url = sweep_store.optuna_url(
            storage.optuna or sweep_store.default_optuna_url(self.state_dir)
        )
        self.tracking_uri = storage.mlflow or sweep_store.default_tracking_uri(self.state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        self.started_ray = False
        self.running: dict[int, Running] = {}  # asked and not told: queued or on an actor
        self.queue: list[Running] = []  # waiting for an actor
        self.groups: list[Group] = []  # packs on actors
        self.idle: list[Any] = []
        self.actors: list[Any] = []
        self.table = ProgressTable(self.spec.trials, self.out)

    # -- set-up -----------------------------------------------------------------------------

    def _open(self, resume: bool):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        direction = self.spec.objective.direction
        sampler = spec_.make_sampler(self.spec, self.spec.seed)
        pruner = self.pruner if self.pruner is not None else spec_.make_pruner(self.spec)
        if resume:
            study = optuna.load_study(
                study_name=self.name, storage=self.optuna_url, sampler=sampler, pruner=pruner
            )
            parent = Tracker(
                self.tracking_uri, self.name, run_id=study.user_attrs["mlflow_parent_run_id"]
            )
        else:
            try:
                optuna.load_study(study_name=self.name, storage=self.optuna_url)
                exists = True
            except KeyError:
                exists = False
            if exists:
                raise ValueError(
                    f"sweep {self.name!r} already exists in {self.optuna_url}; "
                    f"continue it with `rnnsweep resume {self.name}`"
                )
            study = optuna.create_study(
                study_name=self.name,
                storage=self.optuna_url,
                direction=direction,
                sampler=sampler,
                pruner=pruner,
            )
            parent = Tracker(
                self.tracking_uri,
                self.name,
                run_name=self.name,
                tags={
                    "rnnsweep.sweep": self.name,
                    "optuna.study": self.name,
                    "optuna.storage": self.optuna_url,
                },
            )
            parent.log_params(
                {k: v for k, v in self.spec.to_dict().items() if k not in ("search", "storage")}
            )
            parent.set_tags({"search_space": json.dumps(self.spec.to_dict()["search"])})
            study.set_user_attr("mlflow_parent_run_id", parent.run_id)
            study.set_user_attr("mlflow_experiment_id", parent.experiment_id)
            study.set_user_attr("tracking_uri", self.tracking_uri)
            study.set_user_attr("spec", self.spec.to_dict())
            sweep_store.write_record(
                self.state_dir,
                self.name,
                {
                    "name": self.name,
                    "spec": self.spec.to_dict(),
                    "optuna_storage": self.optuna_url,
                    "tracking_uri": self.tracking_uri,
                    "mlflow_parent_run_id": parent.run_id,
                    "mlflow_experiment_id": parent.experiment_id,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        return study, parent

    def _start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        quiet = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**quiet)
        else:
            cpus = max(1, int(round(self.workers * self.spec.resources.cpus)))
            # "local": a private instance, never one that happens to run on this machine.
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
        self.started_ray = True

    def _new_actor(self):
        import ray

        res = self.spec.resources
        host = ray.remote(LearnerHost).options(
            num_cpus=res.cpus, num_gpus=res.gpus, max_restarts=0, max_concurrency=1
        )
        actor = host.remote(max(1, int(res.cpus)))
        self.actors.append(actor)
        return actor

    # -- trials -----------------------------------------------------------------------------

    def _child_tracker(
        self, study, number: int, estimator: str, settings: dict[str, Any], run_id: str | None
    ) -> Tracker:
        tracker = Tracker(
            self.tracking_uri,
            self.name,
            run_name=f"trial-{number}-{estimator}",
            run_id=run_id,
            parent_run_id=study.user_attrs["mlflow_parent_run_id"],
            tags={
                "optuna_trial_number": number,
                "estimator": estimator,
                "rnnsweep.sweep": self.name,
                "optuna.study": self.name,
            },
        )
        if run_id is None:
            tracker.log_params(
                {
                    "estimator": estimator,
                    "task": self.spec.task,
                    "cell": self.spec.cell,
                    "hidden": self.spec.hidden,
                    "steps": self.spec.steps,
                    "trial": number,
                    **settings,
                }
            )
        return tracker

    def _begin(
        self,
        study,
        trial,
        estimator: str,
        settings: dict[str, Any],
        run_id: str | None,
        checkpoint: bytes | None,
        restart_from: int,
        reported: set[int],
    ) -> None:
        """Open the trial's MLflow child run and queue it for an actor."""
        from rnnsweep.algorithms.learner import LearnerSpec
        from rnnsweep.algorithms.population import pack_key, packable

        number = trial.number
        self._emit("asked", number)
        seed = self.spec.seed + number
        learner_spec = asdict(spec_.learner_spec(self.spec, estimator, settings, seed))
        if run_id is None:
            trial.set_user_attr("estimator", estimator)
            trial.set_user_attr("settings", settings)
            trial.set_user_attr("seed", seed)
        tracker = self._child_tracker(study, number, estimator, settings, run_id)
        self._emit("run_opened", number)
        if run_id is None:
            trial.set_user_attr("mlflow_run_id", tracker.run_id)
        row = TrialRow(
            number, estimator, settings_for_display(settings), self.spec.steps, step=restart_from
        )
        run = Running(
            number,
            trial,
            estimator,
            settings,
            learner_spec,
            tracker,
            tracker.resume_step(),
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
        run.row.state = "QUEUED"
        self.table.update(run.row, changed_state=True)
        self.queue.append(run)

    def _fill(self) -> None:
        """Give queued trials to free actors, up to ``pack`` trials that can share one each:
        same pack key (task, cell, estimator, structure) and the same steps done."""
        while self.queue and len(self.groups) < self.workers:
            first = self.queue[0]
            members = [
                run
                for run in self.queue
                if (run.pack_key, run.restart_from) == (first.pack_key, first.restart_from)
            ][: first.pack_limit]
            for run in members:
                self.queue.remove(run)
            self._dispatch(members)

    def _dispatch(self, members: list[Running]) -> None:
        """Start a pack on an actor without waiting: an actor runs its calls in order, so the
        first ``advance`` follows ``start``; a failed start surfaces on that future."""
        actor = self.idle.pop() if self.idle else self._new_actor()
        group = Group(actor, {run.number: run for run in members})
        self.groups.append(group)
        group.start_future = actor.start.remote(
            [(run.number, run.learner_spec, run.checkpoint) for run in members],
            self.spec.steps,
            self.spec.checkpoint_every,
            {run.number: self._checkpoint_name(run.number) for run in members},
        )
        group.future = actor.advance.remote(self.chunk_seconds)
        numbers = [run.number for run in members]
        for run in members:
            run.group, run.checkpoint = group, None
            if self.spec.pack > 1:
                run.trial.set_user_attr("pack", numbers)  # the trials it shares an actor with
            run.row.state = "RUNNING"
            self.table.update(run.row, changed_state=True)

    def _checkpoint_name(self, number: int) -> str:
        path = sweep_store.checkpoint_path(self.state_dir, self.name, number)
        return checkpoint_file.describe(path, number)

    def _checkpoint_bytes(self, number: int) -> bytes | None:
        """Trial ``number``'s last checkpoint, its header, length and checksum verified (not
        deserialized); ``CheckpointError`` naming the file and the trial if they are not."""
        path = sweep_store.checkpoint_path(self.state_dir, self.name, number)
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise checkpoint_file.CheckpointError(
                f"checkpoint {self._checkpoint_name(number)} is unreadable: {error.strerror}"
            ) from None
        checkpoint_file.check(data, self._checkpoint_name(number))
        return data

    def _release(self, group: Group) -> None:
        """A pack with no trial left: its actor takes the next one (after its current call)."""
        if group in self.groups:
            self.groups.remove(group)
        if group.actor in self.actors and group.actor not in self.idle:
            self.idle.append(group.actor)

    def _actor_died(self, group: Group, error: Exception) -> None:
        """Every trial of the pack goes back to the queue, from its last checkpoint."""
        import ray

        if group in self.groups:
            self.groups.remove(group)
        if group.actor in self.actors:
            self.actors.remove(group.actor)
        try:
            ray.kill(group.actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
        again = []
        for run in list(group.members.values()):
            run.group = None
            run.retries += 1
            run.trial.set_user_attr("retries", run.retries)
            if run.retries > self.spec.max_retries:
                self._finish(
                    run,
                    "FAIL",
                    None,
                    f"actor died {run.retries} times (max_retries "
                    f"{self.spec.max_retries}): {type(error).__name__}: {_last_line(error)}",
                )
                continue
            again.append(run)
            run.row.state, run.row.note = "RESTARTING", f"retry {run.retries}"
            self.table.update(run.row, changed_state=True)
        group.members.clear()
        self._requeue(again)

    def _requeue(self, runs: list[Running]) -> None:
        """Back to the front of the queue (in order), to continue from their last checkpoint;
        a trial whose checkpoint is refused fails with the reason."""
        again = []
        for run in runs:
            run.group = None
            try:
                run.checkpoint = self._checkpoint_bytes(run.number)
            except checkpoint_file.CheckpointError as error:
                self._finish(run, "FAIL", None, str(error))
                continue
            run.restart_from = checkpoint_step(run.checkpoint)
            again.append(run)
        self.queue[:0] = again

    def _finish(self, run: Running, state: str, value: float | None, reason: str = "") -> None:
        import optuna

        states = {
            "COMPLETE": optuna.trial.TrialState.COMPLETE,
            "FAIL": optuna.trial.TrialState.FAIL,
            "PRUNED": optuna.trial.TrialState.PRUNED,
        }
        if reason:
            run.trial.set_user_attr("fail_reason" if state == "FAIL" else "reason", reason)
            run.tracker.set_tags({"reason": reason})
        # MLflow first: its queue is drained before Optuna records the end, so a driver killed
        # in between leaves a RUNNING trial (redone from its last checkpoint by ``resume``),
        # never a finished trial with metrics missing.
        run.tracker.set_tags({"optuna_state": state})
        run.tracker.close({"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}[state])
        study = run.trial.study
        study.tell(run.number, value if state == "COMPLETE" else None, state=states[state])
        run.row.state, run.row.note = state, reason[:60]
        if state == "COMPLETE" and value is not None:
            best = self.table.best
            direction = self.spec.objective.direction
            if best is None or (value < best if direction == "minimize" else value > best):
                self.table.best = value
        self.table.update(run.row, changed_state=True)
        del self.running[run.number]
        group = run.group
        if group is not None:
            group.members.pop(run.number, None)
            if not group.members:
                self._release(group)

    def _handle_pack(self, group: Group, result: dict[str, Any]) -> None:
        members = result["members"]
        if any(r["state"] == "running" for r in members.values()):
            # The next chunk first, so that the actor computes while this result is recorded
            # (a pruned trial then wastes at most one chunk, which is discarded).
            group.future = group.actor.advance.remote(self.chunk_seconds)
        pruned = []
        for number, member in members.items():
            run = group.members.get(number)
            if run is None:  # pruned while this chunk ran
                continue
            self._handle(run, member)
            if member["state"] == "running" and number not in group.members:
                pruned.append(number)
        if pruned and group.members and group.future is not None:
            group.actor.drop.remote(pruned)
        if group.future is None and group.members:  # (never expected) the actor lost them
            self._actor_died(group, RuntimeError("the actor returned no result for its trials"))
            return
        if not group.members:
            self._release(group)

    def _handle(self, run: Running, result: dict[str, Any]) -> None:
        """One trial's part of a chunk: metrics, pruning, checkpoint, end."""
        trial, actor = run.trial, run.actor
        pruned = False
        for report in result["reports"]:
            step = report["step"]
            if step > run.last_logged:
                run.tracker.log_metrics(step, report)
                run.last_logged = step
            loss = report["loss"]
            run.row.step, run.row.loss = step, loss
            if step not in run.reported and loss == loss:
                trial.report(loss, step)
                run.reported.add(step)
                if trial.should_prune():
                    pruned = True
        if result["checkpoint"] is not None:
            # The metrics up to the checkpoint must be in MLflow before it can be resumed
            # from, or a crash would leave a gap; the learner is already on its next chunk.
            run.tracker.flush()
            write_atomic(
                sweep_store.checkpoint_path(self.state_dir, self.name, run.number),
                result["checkpoint"],
            )
            step = checkpoint_step(result["checkpoint"])
            trial.set_user_attr("checkpoint_step", step)
        if result["state"] == "failed":  # e.g. its checkpoint refused by the actor
            self._finish(run, "FAIL", None, result["reason"])
        elif result["state"] == "done":
            summary = result["summary"]
            metric = self.spec.objective.metric
            value = summary.get(metric)
            trial.set_user_attr("steps_done", summary["steps"])
            run.tracker.log_metrics(
                summary["steps"],
                {
                    "final_loss": summary["final_loss"],
                    "final_steps_per_sec": summary["steps_per_sec"],
                },
            )
            if value is None or value != value:
                self._finish(run, "FAIL", None, f"objective {metric} is not a number")
            else:
                self._finish(run, "COMPLETE", float(value))
        elif result["state"] == "diverged":
            trial.set_user_attr("steps_done", result["summary"]["steps"])
            self._finish(run, "FAIL", None, f"diverged: {result['summary']['reason']}")
        elif pruned:
            trial.set_user_attr("steps_done", run.row.step)
            self._finish(run, "PRUNED", None, f"pruned at step {run.row.step}")
        else:
            self.table.update(run.row)
        if result["checkpoint"] is not None:
            self._emit("checkpoint", run.number, step, actor)

    def _emit(self, kind: str, number: int, step: int = 0, actor: Any = None) -> None:
        if self.on_event is not None:
            self.on_event(SweepEvent(kind, number, frozenset(self.running), step, actor))

    # -- the loop ---------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict[str, Any]:
        import optuna
        import ray

        # Ray's start (processes) and MLflow's (imports, store migrations) overlap: the stores
        # are opened in a thread while this one starts Ray and the actors.
        opened: dict[str, Any] = {}

        def open_stores() -> None:
            try:
                opened["stores"] = self._open(resume)
            except (ValueError, KeyError) as error:
                opened["error"] = error
            except Exception as error:  # noqa: BLE001 - an unreachable or broken store
                opened["error"] = ValueError(
                    f"cannot open the sweep's stores (Optuna {self.optuna_url}, MLflow "
                    f"{self.tracking_uri}): {type(error).__name__}: {error}"
                )

        opener = threading.Thread(target=open_stores, name="open-stores")
        opener.start()
        try:
            self._start_ray()
            for _ in range(self.workers):
                self.idle.append(self._new_actor())
        finally:
            opener.join()
        if "error" in opened:
            if self.started_ray:
                ray.shutdown()
            raise opened["error"]
        study, parent = opened["stores"]
        status = "FAILED"
        try:
            if resume:
                for frozen in study.get_trials(deepcopy=False):
                    if frozen.state != optuna.trial.TrialState.RUNNING:
                        continue
                    attrs = frozen.user_attrs
                    trial = optuna.trial.Trial(study, frozen._trial_id)
                    refused = ""
                    try:
                        checkpoint = self._checkpoint_bytes(frozen.number)
                    except checkpoint_file.CheckpointError as error:
                        checkpoint, refused = None, str(error)
                    # A driver killed inside ``_begin`` leaves a trial without its settings
                    # (suggesting again returns the values Optuna already holds) or without
                    # the id of the MLflow run it had just opened (found by its tag).
                    if "estimator" in attrs:
                        estimator, settings = attrs["estimator"], attrs["settings"]
                    else:
                        estimator, settings = spec_.suggest(self.spec, trial)
                        trial.set_user_attr("estimator", estimator)
                        trial.set_user_attr("settings", settings)
                        trial.set_user_attr("seed", self.spec.seed + frozen.number)
                    run_id = attrs.get("mlflow_run_id") or child_run(
                        self.tracking_uri,
                        study.user_attrs["mlflow_experiment_id"],
                        study.user_attrs["mlflow_parent_run_id"],
                        frozen.number,
                    )
                    if run_id is not None and "mlflow_run_id" not in attrs:
                        trial.set_user_attr("mlflow_run_id", run_id)
                    self._begin(
                        study,
                        trial,
                        estimator,
                        settings,
                        run_id,
                        checkpoint,
                        # the file's own step: a driver killed between writing it and
                        # recording its step in Optuna leaves the attribute behind
                        checkpoint_step(checkpoint),
                        set(frozen.intermediate_values),
                    )
                    run = self.running.get(frozen.number)
                    if refused and run is not None:  # only this trial fails; the others go on
                        self.queue.remove(run)
                        self._finish(run, "FAIL", None, refused)
            while True:
                self._fill()
                while len(self.groups) < self.workers and not self.queue:
                    asked = len(study.get_trials(deepcopy=False))
                    if asked >= self.spec.trials:
                        break
                    # up to one pack's worth; those that cannot share a pack wait their turn
                    for _ in range(min(self.spec.pack, self.spec.trials - asked)):
                        trial = study.ask()
                        estimator, settings = spec_.suggest(self.spec, trial)
                        self._begin(study, trial, estimator, settings, None, None, 0, set())
                    self._fill()
                if not self.running:
                    break
                futures = {g.future: g for g in self.groups if g.future is not None}
                ready, _ = ray.wait(list(futures), num_returns=1, timeout=0.5)
                for future in ready:
                    group = futures[future]
                    group.future = None
                    if group not in self.groups:
                        continue
                    try:
                        result = ray.get(future)
                    except ray.exceptions.RayActorError as error:
                        self._actor_died(group, error)
                        continue
                    except ray.exceptions.RayTaskError as task_error:
                        cause = task_error.cause
                        try:  # a failed start is the real cause of a failed first advance
                            ray.get(group.start_future)
                        except ray.exceptions.RayTaskError as start_error:
                            cause = start_error.cause
                        except ray.exceptions.RayActorError as actor_error:
                            self._actor_died(group, actor_error)
                            continue
                        for run in list(group.members.values()):
                            self._finish(run, "FAIL", None, f"error: {cause!r}"[:500])
                        self._release(group)
                        continue
                    self._handle_pack(group, result)
                self.table.draw()
            self.table.draw(force=True)
            summary = sweep_summary(study, self.spec.objective.direction)
            parent.log_metrics(0, {f"best_{e}": v["value"] for e, v in summary["best"].items()})
            parent.log_metrics(0, {f"trials_{k.lower()}": v for k, v in summary["states"].items()})
            status = "FINISHED"
            return summary
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            for run in list(self.running.values()):
                run.tracker.close("KILLED")
            parent.close(status)
            if self.started_ray:
                ray.shutdown()
            else:  # on a shared instance, give the actors' resources back
                for actor in self.actors:
                    ray.kill(actor)


def checkpoint_step(checkpoint: bytes | None) -> int:
    """Steps done in a checkpoint (0 for none), from its header alone: trials are packed by
    it."""
    if checkpoint is None:
        return 0
    return checkpoint_file.read_header(checkpoint, "received from an actor").step


def _last_line(error: Exception) -> str:
    """The most telling line of a Ray error (its root cause comes last)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def settings_for_display(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in ("log_every",)}


def sweep_summary(study, direction: str) -> dict[str, Any]:
    """Counts per state and the best complete trial per estimator."""
    states: dict[str, int] = {}
    best: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
        if t.state.name != "COMPLETE" or t.value is None:
            continue
        estimator = t.user_attrs.get("estimator", t.params.get("estimator", "?"))
        current = best.get(estimator)
        better = current is None or (
            t.value < current["value"] if direction == "minimize" else t.value > current["value"]
        )
        if better:
            best[estimator] = {
                "value": t.value,
                "trial": t.number,
                "settings": t.user_attrs.get("settings", {}),
                "seed": t.user_attrs.get("seed"),
            }
    return {"states": states, "best": best}
