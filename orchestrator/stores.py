"""The stores of one sweep, and the only code that writes them.

- The sweep record ``DIR/sweeps/NAME.json`` (``sweep_store``) is the one home of the sweep's
  metadata: its spec, the Optuna storage URL, the MLflow tracking URI, the MLflow experiment
  and parent run ids and its creation time. Every command reads them there, ``resume``
  included. The Optuna study holds trials only; the parent run's params and tags are a view
  of the spec for the MLflow UI, written once and never read back.
- The Optuna study: trials are asked and told here; each trial's user attrs (``estimator``,
  ``settings``, ``seed``, ``mlflow_run_id``, ``pack``, ``retries``, ``checkpoint_step``,
  ``steps_done``, ``fail_reason`` or ``reason``) and intermediate values (for pruning).
- MLflow: the sweep's parent run and one child run per trial (tag ``optuna_trial_number``).
- Checkpoints ``DIR/checkpoints/NAME/trial-N.pt`` (``checkpoint_file``'s format), written
  atomically, read back with their header, length and checksum verified, never deserialized.

One driver at a time writes them: ``open`` takes the sweep's lease (``sweep_lease``) before
anything else, ``close`` gives it back.

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
import time
from dataclasses import dataclass
from typing import Any

from rnnsweep.algorithms import checkpoint_file
from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.orchestrator import metric_journal, sweep_store
from rnnsweep.orchestrator import spec as spec_
from rnnsweep.orchestrator.store_outage import Outage, StoreOutage
from rnnsweep.orchestrator.sweep_lease import SweepLease
from rnnsweep.orchestrator.tracking import Tracker, child_run, client

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
        self.lease = SweepLease(state_dir, self.name)
        self.mlflow_outage = Outage("MLflow", storage.outage_limit)
        self.optuna_outage = Outage("Optuna", storage.outage_limit)
        self.journal_dir = metric_journal.directory(state_dir, self.name)

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

    def open(self, resume: bool) -> None:
        """Take the sweep's lease, then create its study, parent run and record, or
        (``resume``) open them; a failure gives the lease back."""
        self.lease.acquire()
        try:
            self._open(resume)
        except BaseException:
            self.lease.release()
            raise

    def _open(self, resume: bool) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = spec_.make_sampler(self.spec, self.spec.seed)
        pruner = self.pruner if self.pruner is not None else spec_.make_pruner(self.spec)
        if resume:
            _, record = sweep_store.read_record(self.state_dir, self.name)
            self.optuna_url = sweep_store.optuna_url(record["optuna_storage"])
            self.tracking_uri = record["tracking_uri"]
            self.parent_run_id = record["mlflow_parent_run_id"]
            self.experiment_id = record["mlflow_experiment_id"]
            self.study = self._optuna(
                optuna.load_study,
                study_name=self.name,
                storage=self.optuna_url,
                sampler=sampler,
                pruner=pruner,
            )
            # The sampler again from the spec's seed would draw the first trials' parameter
            # sets again: it continues from a seed of its own, past the trials already asked.
            asked = len(self.study.get_trials(deepcopy=False))
            self.study.sampler = spec_.make_sampler(self.spec, self.spec.seed + asked)
            self.parent = self._tracker(run_id=self.parent_run_id)
            # the reports a driver stopped by an outage journaled (its trials' own journals
            # are replayed as their runs reopen; these are the others')
            for run_id in metric_journal.runs(self.journal_dir):
                self.mlflow_outage.call(
                    metric_journal.replay,
                    client(self.tracking_uri),
                    run_id,
                    metric_journal.path(self.journal_dir, run_id),
                )
            return
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
        self.study = optuna.create_study(
            study_name=self.name,
            storage=self.optuna_url,
            direction=self.spec.objective.direction,
            sampler=sampler,
            pruner=pruner,
        )
        spec = self.spec.to_dict()
        self.parent = self._tracker(
            run_name=self.name,
            tags={
                "rnnsweep.sweep": self.name,
                "optuna.study": self.name,
                "optuna.storage": self.optuna_url,
            },
        )
        self.parent.log_params({k: v for k, v in spec.items() if k not in ("search", "storage")})
        self.parent.set_tags({"search_space": json.dumps(spec["search"])})
        self.parent_run_id = self.parent.run_id
        self.experiment_id = self.parent.experiment_id
        sweep_store.write_record(
            self.state_dir,
            self.name,
            {
                "name": self.name,
                "spec": spec,
                "optuna_storage": self.optuna_url,
                "tracking_uri": self.tracking_uri,
                "mlflow_parent_run_id": self.parent_run_id,
                "mlflow_experiment_id": self.experiment_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )

    def close(self, status: str, summary: dict[str, Any] | None = None) -> None:
        """Close the parent run (``status`` as MLflow says it), with the summary's metrics,
        and give the lease back."""
        try:
            if self.parent is None:
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
            self.lease.release()

    def summary(self) -> dict[str, Any]:
        """``sweep_summary`` of the study (its read waits out an outage)."""
        return self._optuna(sweep_summary, self.study, self.spec.objective.direction)

    # -- trials ------------------------------------------------------------------------------

    def asked(self) -> int:
        """Trials asked of Optuna so far (finished or not)."""
        return len(self._optuna(self.study.get_trials, deepcopy=False))

    def ask(self) -> tuple[Any, str, dict[str, Any]]:
        """A new trial and its suggested ``(trial, estimator, settings)`` (suggesting again
        returns the values Optuna already holds, so the suggestions are retried as one)."""
        before = {t.number for t in self._optuna(self.study.get_trials, deepcopy=False)}
        trial = self._optuna(self._ask_once, before)
        estimator, settings = self._optuna(spec_.suggest, self.spec, trial)
        return trial, estimator, settings

    def _ask_once(self, before: set[int]) -> Any:
        """``study.ask()``, or, when an attempt cut short by an outage had already created
        its trial (new since ``before``, RUNNING, without attributes), that trial."""
        import optuna

        for frozen in self.study.get_trials(deepcopy=False):
            if (
                frozen.number not in before
                and frozen.state == optuna.trial.TrialState.RUNNING
                and not frozen.user_attrs
            ):
                return optuna.trial.Trial(self.study, frozen._trial_id)
        return self.study.ask()

    def unfinished(self) -> list[Unfinished]:
        """The trials a killed driver left RUNNING. A driver killed while starting one left
        it without its settings (suggesting again returns the values Optuna already holds) or
        without the id of the MLflow run it had just opened (found by its tag)."""
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
            # record_settings writes three attributes, one transaction each: a driver killed
            # between them leaves some, and only all three make the trial's settings.
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
            found.append(
                Unfinished(trial, estimator, settings, run_id, checkpoint, refused, reported)
            )
        return found

    def seed(self, number: int) -> int:
        return self.spec.seed + number

    def record_settings(self, trial: Any, estimator: str, settings: dict[str, Any]) -> None:
        self._optuna(trial.set_user_attr, "estimator", estimator)
        self._optuna(trial.set_user_attr, "settings", settings)
        self._optuna(trial.set_user_attr, "seed", self.seed(trial.number))

    def open_run(
        self, trial: Any, estimator: str, settings: dict[str, Any], run_id: str | None
    ) -> Tracker:
        """The trial's MLflow child run: a new one (``run_id`` None, params logged) or its
        own again. Its id is recorded on the trial by ``record_run``."""
        number = trial.number
        tracker = self._tracker(
            run_name=f"trial-{number}-{estimator}",
            run_id=run_id,
            parent_run_id=self.parent_run_id,
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

    def record_run(self, trial: Any, tracker: Tracker) -> None:
        self._optuna(trial.set_user_attr, "mlflow_run_id", tracker.run_id)

    def report(self, trial: Any, step: int, loss: float) -> bool:
        """An intermediate value (for pruning); whether the pruner stops the trial now."""
        self._optuna(trial.report, loss, step)
        return self._optuna(trial.should_prune)

    def record_pack(self, trial: Any, numbers: list[int]) -> None:
        self._optuna(trial.set_user_attr, "pack", numbers)  # the trials it shares an actor with

    def record_retries(self, trial: Any, retries: int) -> None:
        self._optuna(trial.set_user_attr, "retries", retries)

    def record_steps(self, trial: Any, steps: int) -> None:
        self._optuna(trial.set_user_attr, "steps_done", steps)

    def end(
        self, trial: Any, tracker: Tracker, state: str, value: float | None, reason: str = ""
    ) -> None:
        """Record a trial's end (``COMPLETE``, ``FAIL``, ``PRUNED``): MLflow, then Optuna."""
        import optuna

        if reason:
            key = "fail_reason" if state == "FAIL" else "reason"
            self._optuna(trial.set_user_attr, key, reason)
            tracker.set_tags({"reason": reason})
        tracker.set_tags({"optuna_state": state})
        tracker.close(MLFLOW_STATUS[state])
        # skip_if_finished: a tell whose commit landed before the connection was lost
        self._optuna(
            self.study.tell,
            trial.number,
            value if state == "COMPLETE" else None,
            state=getattr(optuna.trial.TrialState, state),
            skip_if_finished=True,
        )

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
        header and recorded on the trial."""
        step = checkpoint_step(data)
        write_atomic(sweep_store.checkpoint_path(self.state_dir, self.name, trial.number), data)
        self._optuna(trial.set_user_attr, "checkpoint_step", step)
        return step


def checkpoint_step(checkpoint: bytes | None) -> int:
    """Steps done in a checkpoint (0 for none), from its header alone: trials are packed by
    it."""
    if checkpoint is None:
        return 0
    return checkpoint_file.read_header(checkpoint, "received from an actor").step


def sweep_summary(study: Any, direction: str) -> dict[str, Any]:
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
