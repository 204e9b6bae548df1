"""The stores of one sweep, and the only code that writes them.

- The sweep record ``DIR/sweeps/NAME.json`` (``sweep_store``) is the one home of the sweep's
  metadata: its spec, the Optuna storage URL, the MLflow tracking URI (both with any password
  redacted, ``url_secrets``: it comes from memory or the environment), the MLflow experiment
  and parent run ids and its creation time. Every command reads them there, ``resume``
  included. The Optuna study holds trials only; the parent run's params and tags are a view
  of the spec for the MLflow UI, written once and never read back.
- The Optuna study: trials are asked and told here; each trial's user attrs (``estimator``,
  ``settings``, ``seed``, ``mlflow_run_id``, ``pack``, ``retries``, ``checkpoint_step``,
  ``steps_done``, ``fail_reason`` or ``reason``, ``pruned_at_step``) and intermediate values
  (for pruning; a pruned trial's value is its last one, as Optuna records it).
- MLflow: the sweep's parent run and one child run per trial (tag ``optuna_trial_number``).
- Checkpoints ``DIR/checkpoints/NAME/trial-N.pt`` (``checkpoint_file``'s format), written
  atomically, read back with their header, length and checksum verified, never deserialized.

A sweep is created record first: the record, marked ``"state": "creating"`` with a random
``creation_id``, then the study, the MLflow experiment, the parent run (tagged
``rnnsweep.creation``), then the record again with the run's ids, marked ``created``. A driver
killed anywhere in between leaves a record that ``resume`` (or ``launch`` of the same spec)
finishes: each step finds what an earlier attempt made. A creation that fails before the study
exists removes its record (nothing else was made).

One driver at a time writes them: ``take_lease`` takes the sweep's single-writer lease, a
row kept in the sweep's Optuna database (``sweep_lease``, so that drivers on two machines
sharing one PostgreSQL exclude each other), before anything else is opened; ``close`` gives
it back. A takeover of a stale lease is logged as a tag of the parent run
(``rnnsweep.lease_takeover.<UTC time>``).

A store that is unavailable (a locked SQLite file, a stopped PostgreSQL, an unreachable server)
is waited for: every Optuna and MLflow call retries with backoff (``store_outage``), reports
MLflow cannot take yet go to the run's journal (``metric_journal``, replayed when the store is
back and on ``resume``), and past ``storage.outage_limit`` seconds ``StoreOutage`` stops the
driver as Ctrl-C would.

A trial's end goes to MLflow first (its queue drained, the run closed), then to Optuna: a
driver killed in between leaves a RUNNING trial that ``resume`` redoes from its last
checkpoint, never a finished trial with metrics missing.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rnnsweep.algorithms import checkpoint_file
from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.orchestrator import (
    continuation,
    estimator_split,
    metric_journal,
    search_space,
    sweep_store,
    tracking,
    trial_attrs,
)
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.store_outage import Outage, StoreOutage
from rnnsweep.orchestrator.sweep_lease import SweepLease
from rnnsweep.orchestrator.tracking import Tracker, child_run, client
from rnnsweep.orchestrator.url_secrets import connectable, redact, remember

# The steps of a sweep's creation, in order, each reported to ``open``'s ``on_stage``.
CREATION_STAGES = ("record", "study", "experiment", "parent_run")
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}


@dataclass
class Unfinished:
    """A trial that a killed driver left RUNNING, as ``resume`` takes it up again."""

    trial: Any  # optuna.trial.Trial
    estimator: str
    settings: dict[str, Any]
    run_id: str | None  # its MLflow child run, if one was opened
    checkpoint: bytes | None  # its last checkpoint, verified
    refused: str  # why its checkpoint was refused, or ""
    reported: set[int]  # steps already reported to Optuna
    restarted: str = ""  # why it restarts from step 0 in a new run (--restart-broken), or ""
    seed: int | None = None  # its recorded seed (a continuation's is its origin's)


class SweepStores:
    """Opens (``open``) and writes one sweep's Optuna study, MLflow runs, record and
    checkpoints. ``pruner``: an Optuna pruner in place of the spec's."""

    def __init__(self, spec: Any, state_dir: str, pruner: Any = None) -> None:
        self.spec, self.state_dir, self.name = spec, state_dir, spec.name
        storage = spec.storage
        self.optuna_url = sweep_store.optuna_url(
            storage.optuna or sweep_store.default_optuna_url(state_dir)
        )
        self.tracking_uri = storage.mlflow or sweep_store.default_tracking_uri(state_dir)
        self.pruner = pruner
        self.parent_run_id = ""
        self.experiment_id = ""
        self.study: Any = None
        self.parent: Tracker | None = None
        self.space: list[dict[str, Any]] | None = None  # a finite space's sets ([]: infinite)
        self.exhausted: int | None = None  # trials that tried every set of a finite space
        self.lease: SweepLease | None = None
        self.takeover = ""  # whose stale lease ``take_lease`` took over, and why
        self.mlflow_outage = Outage("MLflow", storage.outage_limit)
        self.optuna_outage = Outage("Optuna", storage.outage_limit)
        self.journal_dir = metric_journal.directory(state_dir, self.name)
        self._originals: set[int] | None = None  # the trials ``asked`` counts, by number

    def _tracker(self, **kwargs: Any) -> Tracker:
        return Tracker(
            self.tracking_uri,
            self.name,
            outage=self.mlflow_outage,
            journal_dir=self.journal_dir,
            **kwargs,
        )

    def _optuna(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """An Optuna call, retried while its storage is unavailable."""
        return self.optuna_outage.call(function, *args, **kwargs)

    # -- outages -----------------------------------------------------------------------------

    def outages(self) -> list[Outage]:
        return [self.mlflow_outage, self.optuna_outage]

    def check_outage(self) -> str:
        """What to show while a store is unavailable ("" when none is); ``StoreOutage`` once
        one has been for ``storage.outage_limit`` seconds (MLflow's writer threads see it
        first: the driver keeps stepping while their reports are journaled)."""
        for outage in self.outages():
            if outage.seconds() > 0 or outage.given_up:
                if outage.on_wait is not None:  # shown even when it is time to stop
                    outage.on_wait(outage)
                outage.check()
                return outage.describe()
        return ""

    # -- the sweep ---------------------------------------------------------------------------

    def take_lease(self, resume: bool) -> None:
        """Take the sweep's lease in its Optuna database (``LeaseHeld`` if a live driver
        holds it); ``open`` comes next."""
        import sqlalchemy as sa

        from rnnsweep.orchestrator.environment_fault import EnvironmentFault, describe, store_name

        if resume:
            _, record = sweep_store.read_record(self.state_dir, self.name, creating=True)
            self.optuna_url = sweep_store.study_url(record)
        else:
            tracking.check_store(self.tracking_uri)  # before the lease makes anything
        self.lease = SweepLease(self.optuna_url, self.name, self.spec.lease_timeout)
        try:
            self.takeover = self.lease.acquire()
        except sa.exc.SQLAlchemyError as error:
            fault = describe(error, {"Optuna store": store_name(self.optuna_url)})
            if fault is not None:
                raise EnvironmentFault(f"{fault}; fix it, then run the command again") from None
            first = str(error).splitlines()[0]
            given = "the spec's storage.optuna, " if self.spec.storage.optuna else ""
            raise ValueError(
                f"cannot take the lease of sweep {self.name!r} in {given}"
                f"{redact(self.optuna_url)}: {first}"
            ) from None

    def open(self, resume: bool, on_stage: Callable[[str], None] | None = None) -> None:
        """Create the sweep's record, study and parent run, or (``resume``) open them (or
        finish a half-created sweep), under the lease ``take_lease`` took; a failure gives the
        lease back. ``on_stage(stage)`` is called after each step of a creation
        (``CREATION_STAGES``)."""
        try:
            self._open(resume, on_stage or (lambda stage: None))
            if self.takeover and self.parent is not None:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                self.parent.set_tags({f"rnnsweep.lease_takeover.{stamp}": self.takeover})
        except BaseException:
            self.release_lease()
            raise

    def release_lease(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def stop_requested(self) -> str:
        """Who asked this driver to stop (``rnnsweep stop``, read by the lease's heartbeat)."""
        return self.lease.stop_requested if self.lease is not None else ""

    def lease_lost(self) -> str:
        """Whose takeover of the lease this driver found at its last heartbeat (or ``""``)."""
        return self.lease.lost if self.lease is not None else ""

    def _open(self, resume: bool, on_stage: Callable[[str], None]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if not resume:
            record = self._new_record()
            on_stage("record")
            try:
                self._create(record, on_stage)
            except BaseException as error:
                # A failure (a store refusing a write) undoes this launch, so that the same
                # command succeeds once the cause is fixed; an interrupt or a kill leaves a
                # half-created sweep that ``resume`` finishes.
                if isinstance(error, Exception):
                    self._undo_create()
                if self.study is None:
                    os.remove(sweep_store.record_path(self.state_dir, self.name))
                raise
            return
        _, record = sweep_store.read_record(self.state_dir, self.name, creating=True)
        # the record's URLs are redacted: the password comes from memory or the environment
        self.optuna_url = sweep_store.study_url(record)
        self.tracking_uri = connectable(record["tracking_uri"])
        if record.get("state") == "creating":  # a driver stopped while creating the sweep
            self._create(record, on_stage)
            return
        self.parent_run_id = record["mlflow_parent_run_id"]
        self.experiment_id = record["mlflow_experiment_id"]
        self.study = self._optuna(
            optuna.load_study, study_name=self.name, storage=self.optuna_url, pruner=self._pruner()
        )
        self._seed_sampler()
        self.parent = self._tracker(run_id=self.parent_run_id)
        remember(self.optuna_url)  # both opened: in-process readers of the record may use them
        remember(self.tracking_uri)
        # the reports a driver stopped by an outage journaled (its trials' own journals are
        # replayed as their runs reopen; these are the others')
        for run_id in metric_journal.runs(self.journal_dir):
            self.mlflow_outage.call(
                metric_journal.replay,
                client(self.tracking_uri),
                run_id,
                metric_journal.path(self.journal_dir, run_id),
            )

    def _new_record(self) -> dict[str, Any]:
        """Check that the stores can take a new sweep (creating nothing), then write its
        record, marked ``creating``."""
        import optuna

        if os.path.exists(sweep_store.record_path(self.state_dir, self.name)):
            sweep_store.read_record(self.state_dir, self.name)  # says if it is half-created
            raise ValueError(
                f"sweep {self.name!r} already exists in {self.state_dir}; continue it with "
                f"`rnnsweep resume {self.name}`"
            )
        tracking.check_store(self.tracking_uri)
        try:
            optuna.load_study(study_name=self.name, storage=self.optuna_url)
            exists = True
        except KeyError:
            exists = False
        if exists:
            raise ValueError(
                f"sweep {self.name!r} already exists in {redact(self.optuna_url)} "
                f"without a record in {self.state_dir}; launch it with --name NEW_NAME"
            )
        record = {
            "name": self.name,
            "state": "creating",
            "creation_id": uuid.uuid4().hex,
            "spec": sweep_store.recorded_spec(self.spec.to_dict()),
            "optuna_storage": redact(self.optuna_url),
            "tracking_uri": redact(self.tracking_uri),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        sweep_store.write_record(self.state_dir, self.name, record)
        return record

    def _create(self, record: dict[str, Any], on_stage: Callable[[str], None]) -> None:
        """Create what the record (marked ``creating``) names and is not there yet: the
        study, the MLflow experiment, the parent run (found by the record's
        ``creation_id``); then mark the record ``created``. Each step is idempotent, so a
        driver killed at any point leaves a sweep that ``resume`` (or ``launch`` of the same
        spec) finishes."""
        import optuna

        try:
            self.study = optuna.load_study(
                study_name=self.name, storage=self.optuna_url, pruner=self._pruner()
            )
        except KeyError:
            self.study = optuna.create_study(
                study_name=self.name,
                storage=self.optuna_url,
                direction=self.spec.objective.direction,
                pruner=self._pruner(),
            )
        self._seed_sampler()
        on_stage("study")
        uri = self.tracking_uri
        experiment = tracking.experiment_id(
            tracking.client(uri), self.name, tracking.artifact_location(uri, self.name)
        )
        on_stage("experiment")
        spec = record["spec"]
        self.parent = self._tracker(
            run_name=self.name,
            run_id=tracking.parent_run(uri, experiment, record["creation_id"]),
            tags={
                "rnnsweep.sweep": self.name,
                "rnnsweep.creation": record["creation_id"],
                "optuna.study": self.name,
                "optuna.storage": redact(self.optuna_url),
            },
        )
        self.parent.log_params({k: v for k, v in spec.items() if k not in ("search", "storage")})
        self.parent.set_tags({"search_space": json.dumps(spec["search"])})
        self.parent_run_id = self.parent.run_id
        self.experiment_id = self.parent.experiment_id
        on_stage("parent_run")
        remember(self.optuna_url)  # both opened: in-process readers of the record may use them
        remember(self.tracking_uri)
        record = {
            **record,
            "state": "created",
            "mlflow_parent_run_id": self.parent_run_id,
            "mlflow_experiment_id": self.experiment_id,
        }
        sweep_store.write_record(self.state_dir, self.name, record)

    def _pruner(self) -> Any:
        return self.pruner if self.pruner is not None else spec_.make_pruner(self.spec)

    def _seed_sampler(self) -> None:
        """The spec's sampler, seeded from the sweep's seed and the trials asked so far: a
        resumed sampler draws anew instead of replaying the suggestions of the first run."""
        asked = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = spec_.make_sampler(self.spec, sampler_seed(self.spec.seed, asked))

    def _undo_create(self) -> None:
        """Best effort: remove the study and parent run of a launch that failed half-way."""
        import optuna

        for undo in (
            lambda: optuna.delete_study(study_name=self.name, storage=self.optuna_url),
            lambda: self.parent is not None and self.parent.client.delete_run(self.parent.run_id),
        ):
            try:
                undo()
            except Exception:  # noqa: BLE001 - the store is what failed; its message matters
                pass
        self.study, self.parent = None, None

    def places(self) -> dict[str, str]:
        """Where this sweep writes, as messages name it (no password)."""
        from rnnsweep.orchestrator.environment_fault import store_name

        return {
            "Optuna store": store_name(self.optuna_url),
            "MLflow store": store_name(self.tracking_uri),
            "checkpoints": sweep_store.checkpoint_dir(self.state_dir, self.name),
        }

    def close(self, status: str, summary: dict[str, Any] | None = None) -> None:
        """Close the parent run (``status`` as MLflow says it), with the summary's metrics,
        and give the lease back; a driver whose lease was taken over writes nothing more."""
        try:
            if self.parent is None or self.lease_lost():
                return
            if summary is not None:
                best = {f"best_{e}": v["value"] for e, v in summary["best"].items()}
                self.parent.log_metrics(0, best)
                states = {f"trials_{k.lower()}": v for k, v in summary["states"].items()}
                self.parent.log_metrics(0, states)
            self.parent.close(status)
        except StoreOutage:
            pass  # stopped for it: the run is left RUNNING, its journal for ``resume``
        finally:
            self.release_lease()

    def summary(self) -> dict[str, Any]:
        """``sweep_summary`` of the study (its read waits out an outage)."""
        return self._optuna(
            sweep_summary, self.study, self.spec.objective.direction, self.spec.estimators
        )

    # -- trials ------------------------------------------------------------------------------

    def asked(self) -> int:
        """Trials asked of Optuna so far (finished or not; continuations are not asked):
        counted once from the study, then kept by ``ask`` (the only writer of new trials while
        the lease is held), so that the loop's turns do not read every trial."""
        if self._originals is None:
            every = self._optuna(self.study.get_trials, deepcopy=False)
            self._originals = {t.number for t in continuation.originals(every)}
        return len(self._originals)

    def ask(self) -> tuple[Any, str, dict[str, Any]]:
        """A new trial and its suggested ``(trial, estimator, settings)``. In a finite search
        space (``search_space``) it takes a parameter set tried the fewest times: every set
        once before any twice; past that, ``exhausted`` holds the number of trials that tried
        them all, and the repeats run with new seeds (each trial's seed is its own)."""
        import optuna

        if self.space is None:
            self.space = search_space.parameter_sets(self.spec) or []
        self.asked()
        split = estimator_split.splits(self.spec)
        trials: list[Any] = []
        waiting = False
        if self.space or split:  # (the plain case needs no trial list: Optuna's ask pops a
            # WAITING trial a killed driver left)
            every = self._optuna(self.study.get_trials, deepcopy=False)
            trials = continuation.originals(every)  # samples of their own
            waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
        assigned = None  # the estimator the split gives this trial (estimator_split)
        if split and not waiting:
            assigned = estimator_split.next_estimator(
                self.spec.estimators, self.spec.trials, trials
            )
        if self.space and not waiting:  # (a killed driver may have left one enqueued)
            tried = Counter(search_space.key(t.params) for t in trials if t.params)
            if min(tried[search_space.key(p)] for p in self.space) > 0 and self.exhausted is None:
                # (split: an estimator with fewer sets repeats them before the others are done)
                self.exhausted = len(self.space) if assigned is None else len(trials)
            mine = [p for p in self.space if assigned in (None, p["estimator"])]
            fewest = min(tried[search_space.key(p)] for p in mine)
            candidates = [p for p in mine if tried[search_space.key(p)] == fewest]
            draw = random.Random(sampler_seed(self.spec.seed, len(trials)))
            self._optuna(self.study.enqueue_trial, draw.choice(candidates))
        elif assigned is not None:
            self._optuna(self.study.enqueue_trial, {"estimator": assigned})
        # suggesting again returns the values Optuna already holds: retried as one
        attempts: list[int] = []
        trial = self._optuna(self._ask_once, attempts)
        self._originals.add(trial.number)
        estimator, settings = self._optuna(spec_.suggest, self.spec, trial)
        return trial, estimator, settings

    def _ask_once(self, attempts: list[int]) -> Any:
        """``study.ask()``, or, when an attempt cut short by an outage had already created
        its trial (RUNNING, without attributes, none of the trials ``asked`` counts), that
        trial; the trial list is read on such retries only."""
        import optuna

        attempts.append(1)
        if len(attempts) == 1:
            return self.study.ask()
        before = self._originals or set()
        for frozen in self.study.get_trials(deepcopy=False):
            if (
                frozen.number not in before
                and frozen.state == optuna.trial.TrialState.RUNNING
                and not frozen.user_attrs
            ):
                return optuna.trial.Trial(self.study, frozen._trial_id)
        return self.study.ask()

    def unfinished(self, restart_broken: bool = False) -> list[Unfinished]:
        """The trials a killed driver left RUNNING. A driver killed while starting one left
        it without its settings (suggesting again returns the values Optuna already holds) or
        without the id of the MLflow run it had just opened (found by its tag).

        A trial whose checkpoint is refused (unreadable, truncated, corrupt, another format)
        or missing (it had one: ``checkpoint_step`` > 0) fails with the reason; with
        ``restart_broken`` it restarts from step 0 instead (``_restart``)."""
        import optuna

        found = []
        for frozen in self.study.get_trials(deepcopy=False):
            if frozen.state != optuna.trial.TrialState.RUNNING:
                continue
            attrs = frozen.user_attrs
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            refused = ""
            try:
                checkpoint = self.read_checkpoint(frozen.number)
            except checkpoint_file.CheckpointError as error:
                checkpoint, refused = None, str(error)
            had = attrs.get("checkpoint_step", 0)
            if checkpoint is None and not refused and had > 0:
                refused = (
                    f"checkpoint {self.checkpoint_name(frozen.number)} is missing (the trial "
                    f"had reached step {had})"
                )
            # a driver killed before ``record_run`` left none of them (one transaction); one
            # of an earlier version may have left some: only all three make the settings
            if all(key in attrs for key in ("estimator", "settings", "seed")):
                estimator, settings = attrs["estimator"], attrs["settings"]
            else:
                estimator, settings = spec_.suggest(self.spec, trial)
                self.record_settings(trial, estimator, settings)
            run_id = attrs.get("mlflow_run_id") or child_run(
                self.tracking_uri,
                self.experiment_id,
                self.parent_run_id,
                frozen.number,
            )
            if run_id is not None and "mlflow_run_id" not in attrs:
                self._optuna(trial.set_user_attr, "mlflow_run_id", run_id)
            reported = set(frozen.intermediate_values)
            restarted = ""
            if refused and restart_broken:
                restarted = f"{refused}; restarted from step 0 (resume --restart-broken)"
                self._restart(trial, run_id, restarted)
                refused, run_id = "", None
            elif refused:  # the trial fails now: the hint says what would have restarted it
                refused += (
                    "; a resume with --restart-broken restarts such a trial from step 0 instead; "
                    f"`rnnsweep extend {self.name} --trials +1` adds a trial in its place"
                )
            found.append(
                Unfinished(
                    trial,
                    estimator,
                    settings,
                    run_id,
                    checkpoint,
                    refused,
                    reported,
                    restarted,
                    attrs.get("seed"),
                )
            )
        return found

    def _restart(self, trial: Any, run_id: str | None, why: str) -> None:
        """Set a trial with a broken checkpoint to start again from step 0: its checkpoint
        file (if any) moved aside to ``trial-N.pt.broken``, ``checkpoint_step`` 0, ``why`` in
        its ``restarted`` attr, and its MLflow run tagged and deleted (MLflow's soft delete:
        hidden, kept in the store), so that the new run the driver opens holds each step
        once. Optuna keeps the intermediate values already reported (same settings and seed;
        they are not reported twice)."""
        path = sweep_store.checkpoint_path(self.state_dir, self.name, trial.number)
        if os.path.exists(path):
            os.replace(path, path + ".broken")
        trial.set_user_attr("checkpoint_step", 0)
        trial.set_user_attr("restarted", why)
        if run_id is not None:
            old = tracking.client(self.tracking_uri)
            old.set_tag(run_id, "rnnsweep.replaced", why)
            old.set_terminated(run_id, status="KILLED")
            old.delete_run(run_id)

    def seed(self, number: int) -> int:
        return self.spec.seed + number

    def record_settings(self, trial: Any, estimator: str, settings: dict[str, Any]) -> None:
        self.record(trial, self._settings_attrs(trial, estimator, settings))

    def _settings_attrs(
        self, trial: Any, estimator: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        return {"estimator": estimator, "settings": settings, "seed": self.seed(trial.number)}

    def open_run(
        self, trial: Any, estimator: str, settings: dict[str, Any], run_id: str | None
    ) -> Tracker:
        """The trial's MLflow child run: a new one (``run_id`` None; its params go to its
        writer thread) or its own again (any params it lacks written now). Its id is recorded
        on the trial by ``record_run``."""
        number = trial.number
        return self._tracker(
            run_name=f"trial-{number}-{estimator}",
            run_id=run_id,
            parent_run_id=self.parent_run_id,
            tags={
                "optuna_trial_number": number,
                "estimator": estimator,
                "rnnsweep.sweep": self.name,
                "optuna.study": self.name,
            },
            experiment_id=self.experiment_id or None,
            params={
                "estimator": estimator,
                "task": self.spec.task,
                "cell": self.spec.cell,
                "hidden": self.spec.hidden,
                "steps": self.spec.steps,
                "trial": number,
                **settings,
            },
        )

    def record_run(
        self, trial: Any, tracker: Tracker, settings: tuple[str, dict[str, Any]] | None = None
    ) -> None:
        """The trial's MLflow run id, with its ``(estimator, settings)`` and seed if given (one
        transaction: a driver killed before it leaves the trial for ``unfinished``)."""
        attrs = self._settings_attrs(trial, *settings) if settings is not None else {}
        self.record(trial, {**attrs, "mlflow_run_id": tracker.run_id})

    def report(self, trial: Any, step: int, loss: float) -> bool:
        """An intermediate value (for pruning); whether the pruner stops the trial now (never,
        without a pruner: its trial is not read back)."""
        import optuna

        self._optuna(trial.report, loss, step)
        if isinstance(self.study.pruner, optuna.pruners.NopPruner):
            return False
        return self._optuna(trial.should_prune)

    def node_attrs(self, tracker: Tracker, node: dict[str, str]) -> dict[str, str]:
        """The Ray node a trial (re)started on (a retried trial may move): MLflow tags
        ``ray_node_id``, ``ray_node_ip``, queued with the run's next batch (an MLflow outage
        never stalls the driver here); returns the same as Optuna user attrs, for the caller
        to write with the trial's next ones (``record``)."""
        tags = {"ray_node_id": node["node_id"], "ray_node_ip": node["node_ip"]}
        tracker.queue_tags(tags)
        return tags

    def record(self, trial: Any, attrs: dict[str, Any]) -> None:
        """A trial's user attrs, written together in one transaction (``trial_attrs``): its
        settings and run id, and while it runs ``checkpoint_step``, ``timing`` (the seconds
        it has run, its steps/s and when: ``status``), ``retries``, ``pack`` (the trials it
        shares an actor with), its node (``node_attrs``)."""
        self._optuna(trial_attrs.set_user_attrs, trial, attrs)

    def end(
        self,
        trial: Any,
        tracker: Tracker,
        state: str,
        value: float | None,
        reason: str = "",
        attrs: dict[str, Any] | None = None,
        checkpoint: bytes | None = None,
    ) -> None:
        """Record a trial's end (``COMPLETE``, ``FAIL``, ``PRUNED``): MLflow (its queue drained,
        the run closed), then ``checkpoint`` (its last, if the chunk that ended it sent one:
        kept once every metric before it is in MLflow, so that it needs no flush of its own),
        then Optuna. ``attrs``: user attrs of its end (``steps_done``, ``timing``, ...),
        written in one transaction with the reason and ``pruned_at_step``."""
        import optuna

        attrs = dict(attrs or {})
        tags = {"optuna_state": state}
        if reason:
            attrs["fail_reason" if state == "FAIL" else "reason"] = reason
            tags["reason"] = reason
        if state == "PRUNED":
            attrs.update(self._record_pruned(trial, tracker))
        tracker.queue_tags(tags)  # written with its last metrics as ``close`` drains them
        tracker.close(MLFLOW_STATUS[state])
        if checkpoint is not None:
            self.write_checkpoint(trial, checkpoint)  # its step is in ``attrs``
        self.record(trial, attrs)
        # skip_if_finished: a tell whose commit landed before the connection was lost
        self._optuna(
            self.study.tell,
            trial.number,
            value if state == "COMPLETE" else None,
            state=getattr(optuna.trial.TrialState, state),
            skip_if_finished=True,
        )

    def _record_pruned(self, trial: Any, tracker: Tracker) -> dict[str, Any]:
        """A pruned trial's last intermediate value (Optuna's tell makes it the trial's value)
        and its step: MLflow metrics ``pruned_loss`` and ``pruned_at_step`` at that step;
        returns its user attr ``pruned_at_step`` (none without a value)."""
        frozen = self._optuna(self.study._storage.get_trial, trial._trial_id)
        step = frozen.last_step
        if step is None:
            return {}
        value = frozen.intermediate_values[step]
        tracker.log_metrics(step, {"pruned_loss": value, "pruned_at_step": step})
        return {"pruned_at_step": step}

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint_name(self, number: int) -> str:
        """How messages name trial ``number``'s checkpoint: its file and the trial."""
        path = sweep_store.checkpoint_path(self.state_dir, self.name, number)
        return checkpoint_file.describe(path, number)

    def read_checkpoint(self, number: int) -> bytes | None:
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
                f"checkpoint {self.checkpoint_name(number)} is unreadable: {error.strerror}"
            ) from None
        checkpoint_file.check(data, self.checkpoint_name(number))
        return data

    def write_checkpoint(self, trial: Any, data: bytes) -> int:
        """Keep a checkpoint an actor sent (atomically); returns its step, read from its
        header, for the caller to record as the trial's ``checkpoint_step`` (the file is what
        ``resume`` reads)."""
        step = checkpoint_step(data)
        write_atomic(sweep_store.checkpoint_path(self.state_dir, self.name, trial.number), data)
        return step


def sampler_seed(seed: int, asked: int) -> int:
    """The sampler's seed once ``asked`` trials exist: the sweep's own at launch, then one
    drawn from both (``numpy.random.SeedSequence``), so that no two (re)starts share one."""
    if asked == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**64, asked]).generate_state(1)[0])


def checkpoint_step(checkpoint: bytes | None) -> int:
    """Steps done in a checkpoint (0 for none), from its header alone: trials are packed by
    it."""
    if checkpoint is None:
        return 0
    return checkpoint_file.read_header(checkpoint, "received from an actor").step


def sweep_summary(study: Any, direction: str, estimators: Sequence[str] = ()) -> dict[str, Any]:
    """Counts per state, the best complete trial per estimator (``best``: only those with one)
    and, in ``estimators``, one entry per estimator: the spec's (``estimators``, in order),
    then any other a trial names, each ``{"states": {STATE: count}, "best": best or None}``,
    so that an estimator without a complete trial is listed with what became of its trials."""
    states: dict[str, int] = {}
    best: dict[str, dict[str, Any]] = {}
    per: dict[str, dict[str, int]] = {name: {} for name in estimators}
    trials = study.get_trials(deepcopy=False)
    # a trial another continued (extend --steps) is counted once, as its continuation: its
    # own value was measured at fewer steps
    old_budget = continuation.superseded(trials)
    for t in trials:
        if t.number in old_budget:
            continue
        states[t.state.name] = states.get(t.state.name, 0) + 1
        estimator = t.user_attrs.get("estimator", t.params.get("estimator", "?"))
        counts = per.setdefault(estimator, {})
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
        if t.state.name != "COMPLETE" or t.value is None:
            continue
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
    return {
        "states": states,
        "best": best,
        "estimators": {e: {"states": c, "best": best.get(e)} for e, c in per.items()},
    }
