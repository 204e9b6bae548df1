"""MLflow tracking that never blocks a learner.

``Tracker`` wraps one MLflow run. Metrics are queued by ``log_metrics`` (a dict of values at
one step) and written by a background thread in batches (``MlflowClient.log_batch``, at most
1000 values per call), so a learner only pays for appending to a queue; a new run's params
and queued tags go with the writer's next batch (a sweep's driver never waits on them; one
``log_batch`` holds them with the last metrics when they fit). A new run's params wait at
most ``PARAMS_WAIT`` for that batch, then go alone: a short run (a near-instant trial) writes
its params, metrics and end tags in one call, a long one shows its params within a second.
``close(status)`` drains the queue and terminates the run. A run can be resumed by id:
metrics then continue at the steps that follow, never duplicating one already written
(``resume_step``).

Given an ``Outage`` and a journal folder (sweeps), a tracker rides out an unavailable store:
its calls wait and retry with backoff (``store_outage``), and the writer keeps the reports it
cannot write yet in memory, up to ``BUFFER`` of them, spilling them to the run's journal
(``metric_journal``) beyond that and whenever ``flush`` asks for them to be durable; the
journal is replayed, in order, once the store is back, at ``close``, or when the run is
opened again by id.

The default store is SQLite in the state directory (MLflow 3 refuses its old file store);
``MLFLOW_TRACKING_URI`` overrides it, ``--tracking-uri`` overrides both.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from rnnsweep.orchestrator import metric_journal, output_path, url_secrets
from rnnsweep.orchestrator.store_outage import FIRST_DELAY, MAX_DELAY, Outage, Patient, unavailable
from rnnsweep.orchestrator.ui_view import KIND_TAG, MODEL_TRAINING
from rnnsweep.orchestrator.url_secrets import redact

BATCH = 1000
BATCH_TAGS = 100  # MLflow's limit per log_batch call, and that of params
PARAMS_WAIT = 1.0  # s: a new run's params go with its first batch, or alone by then
BUFFER = 1000  # reports kept in memory while the store is unavailable, beyond: the journal


def default_tracking_uri(state_dir: str) -> str:
    """The tracking URI when none is given, for ``rnnsweep run`` and sweeps alike (its one
    home): ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<absolute state_dir>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{os.path.abspath(os.path.join(state_dir, 'mlflow.db'))}"


@functools.lru_cache(maxsize=8)
def client(uri: str):
    """One ``MlflowClient`` per URI and process (creating one opens, and on first use
    migrates, the store). ``uri`` may be redacted (``url_secrets``)."""
    import logging

    from mlflow.tracking import MlflowClient

    from rnnsweep.orchestrator.url_secrets import connectable

    # MLflow's SQLite store logs its schema migrations at INFO on first use; keep stderr clean.
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It also logs every database error with its traceback before raising it to the caller,
    # which names it in one line (a full or read-only store: ``environment_fault``).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        path = uri.removeprefix("sqlite:///")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if not os.path.exists(path):
            # created here (SQLite takes an empty file as a new database), so that a
            # read-only or full directory fails now, naming the file, rather than after
            # MLflow's ten connection retries (about two minutes)
            open(path, "ab").close()
    return MlflowClient(tracking_uri=connectable(uri))


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a local SQLite store live beside it (``<dir>/artifacts/<experiment>``),
    not in ``./mlruns`` of whatever directory a command ran in; servers choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    directory = os.path.dirname(uri.removeprefix("sqlite:///"))
    return "file://" + os.path.join(os.path.abspath(directory), "artifacts", experiment)


def experiment_id(mlflow_client, name: str, artifact_location: str | None = None) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        # model training, not GenAI: MLflow's own kind tag (see ui_view)
        return mlflow_client.create_experiment(
            name, artifact_location=artifact_location, tags={KIND_TAG: MODEL_TRAINING}
        )
    except Exception:  # noqa: BLE001 - created concurrently by another process
        return mlflow_client.get_experiment_by_name(name).experiment_id


find_experiment = experiment_id  # (``Tracker`` takes an ``experiment_id`` argument)


def child_run(uri: str, experiment: str, parent_run_id: str, trial_number: int) -> str | None:
    """The id of the child run a sweep opened for an Optuna trial, if it has one."""
    runs = client(uri).search_runs(
        [experiment],
        f"tags.mlflow.parentRunId = '{parent_run_id}' "
        f"and tags.optuna_trial_number = '{trial_number}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def parent_run(uri: str, experiment: str, creation_id: str) -> str | None:
    """The id of the parent run a sweep's creation (``creation_id``, from its record) opened,
    if it got that far: a driver killed before recording the id leaves it to be found."""
    runs = client(uri).search_runs(
        [experiment], f"tags.`rnnsweep.creation` = '{creation_id}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def check_store(uri: str) -> None:
    """``ValueError`` (one line) if MLflow cannot use the tracking store ``uri``; creates
    nothing. A SQLite file that does not exist yet is not opened (opening creates it): its
    folder must be creatable. A file store (``file://`` or a bare path) is refused as MLflow 3
    refuses it, unless ``MLFLOW_ALLOW_FILE_STORE`` opts in; any other store is asked for one
    experiment."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if os.path.exists(path):
            return
        folder = output_path.nearest_folder(path)
        if not os.path.isdir(folder):
            raise ValueError(f"MLflow tracking URI {uri!r}: {folder} is not a directory")
        output_path.check_writable_folder(folder, path)
        return
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1"):
            return
        raise ValueError(
            f"MLflow tracking URI {redact(uri)!r} is a file store, which MLflow 3 refuses: "
            "use a database such as sqlite:///PATH/mlflow.db (`mlflow migrate-filestore` "
            "converts an old store)"
        )
    if scheme in ("http", "https"):
        _check_reachable(uri, scheme)
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure makes the store unusable
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"MLflow tracking URI {redact(uri)!r} is unusable: "
            f"{type(error).__name__}: {url_secrets.scrub(first)[:300]}"
        ) from None


def _check_reachable(uri: str, scheme: str, seconds: float = 5.0) -> None:
    """``ValueError`` at once if nothing listens at a tracking server's address (MLflow's own
    client would retry with backoff for minutes before saying so)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as error:  # a port that is not a number, or out of range
        raise ValueError(f"MLflow tracking URI {redact(uri)!r}: {error}") from None
    try:
        socket.create_connection((parts.hostname or "", port), timeout=seconds).close()
    except OSError as error:
        raise ValueError(
            f"MLflow tracking URI {redact(uri)!r} is unreachable: {error.strerror or error}"
        ) from None


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


class Tracker:
    """One MLflow run, written from a background thread. ``outage`` and ``journal_dir``
    (together): wait out an unavailable store, journaling what cannot be written yet.
    ``experiment_id``: the experiment's id when the caller knows it (not looked up by name).
    ``params``: a new run's go to the writer (the caller does not wait on them); a reopened
    run's are written now, those it lacks only (a driver killed before its writer wrote
    them leaves them to be written when the run is reopened)."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        outage: Outage | None = None,
        journal_dir: str | None = None,
        experiment_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        from mlflow.entities import Param, RunTag

        self.uri = uri
        # opening the store reads its schema: an outage can begin here too
        self._raw = client(uri) if outage is None else outage.call(client, uri)
        self._outage = outage
        self.client = self._raw if outage is None else Patient(self._raw, outage)
        if run_id is None:
            # as strings: a tracking server (REST) refuses other values, a SQL store casts them
            all_tags = {k: str(v) for k, v in (tags or {}).items()}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            experiment_id = experiment_id or find_experiment(
                self.client, experiment, artifact_location(uri, experiment)
            )
            run = self.client.create_run(
                experiment_id,
                tags=all_tags,
                run_name=run_name,
            )
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
        else:
            run = self.client.get_run(run_id)
            self.run_id = run_id
            self.experiment_id = run.info.experiment_id
        self._journal = (
            metric_journal.path(journal_dir, self.run_id) if journal_dir is not None else None
        )
        self._journaled = False
        # a reopened run: per key, the last step MLflow has (read on first use); values at
        # or before it are not logged again (e.g. a trial's final metrics, logged before a
        # driver stopped, then computed again from its last checkpoint)
        self._floor: dict[str, int] | None = None if run_id is None else {}
        if run_id is not None:
            # before resume_step: the steps a journal holds count as written
            self._replay()
            self.client.update_run(run_id, status="RUNNING")
            if tags:
                self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self._queue: queue.Queue = queue.Queue()
        self._tags: dict[str, str] = {}  # queue_tags: written with the next batch
        self._params: list[Any] = []  # a new run's params: written with the next batch
        self._tags_lock = threading.Lock()
        self._params_due = 0.0  # when a new run's params are written without waiting further
        if params and run_id is None:
            self._params = [Param(k, v) for k, v in flat_params(params).items()]
            self._params_due = time.monotonic() + PARAMS_WAIT
        elif params:
            self.log_params(params)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._writer, name="mlflow-writer", daemon=True)
        self._thread.start()

    def resume_step(self, key: str = "loss") -> int:
        """The last step already written for ``key`` (-1 if none)."""
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flat_params(params).items()]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def queue_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags the writer sets with its next batch (at the latest at the next ``flush`` or
        ``close``): the caller never waits on the store. While it is unavailable they wait
        in memory (a later value of a key replaces an earlier one)."""
        with self._tags_lock:
            self._tags.update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, step: int, values: Mapping[str, Any]) -> None:
        """Queue numeric values at ``step`` (non-numeric and non-finite ones are skipped, and
        in a reopened run those at a step MLflow already has for their key)."""
        stamp = int(time.time() * 1000)
        clean = {
            k: float(v)
            for k, v in values.items()
            if isinstance(v, int | float)
            and not isinstance(v, bool)
            and v == v
            and abs(v) != float("inf")
        }
        if self._floor is not None:
            for key in list(clean):
                if key not in self._floor:
                    history = self.client.get_metric_history(self.run_id, key)
                    self._floor[key] = max((m.step for m in history), default=-1)
                if step <= self._floor[key]:
                    del clean[key]
            if not clean:
                return
        self._queue.put((step, stamp, clean))

    # -- the writer thread ---------------------------------------------------------------------

    def _take(self, pending: list, retry_at: float) -> tuple[list[threading.Event], bool]:
        """Move queued reports to ``pending``, up to a flush (its event is returned) or the
        stop marker, gathering for 0.2 s; waits for the first until ``retry_at`` when there
        is work to retry, or until a new run's params are due, else for ever."""
        acks: list[threading.Event] = []
        waiting = pending or self._journaled
        due = [retry_at] if waiting else []
        stopped = self._error is not None or (self._outage is not None and self._outage.given_up)
        if self._params and not stopped:  # (after a failed try: when it is retried)
            due.append(max(self._params_due, retry_at))
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        try:
            item = self._queue.get(timeout=timeout) if timeout != 0.0 else self._queue.get_nowait()
        except queue.Empty:
            return acks, False
        while True:
            if item is None:
                return acks, True
            if isinstance(item, threading.Event):
                acks.append(item)
                return acks, False
            pending.append(item)
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                return acks, False

    def _write(self, pending: list) -> None:
        """The journal (if any) then ``pending``, in that order, with the queued tags and
        params (``log_batch`` is one transaction; a batch written again with its stamps is
        not duplicated by MLflow)."""
        from mlflow.entities import Metric, RunTag

        if self._journaled:
            metric_journal.replay(self._raw, self.run_id, self._journal, BATCH)
            self._journaled = False
        metrics = [
            Metric(key, value, stamp, step)
            for step, stamp, values in pending
            for key, value in values.items()
        ]
        with self._tags_lock:
            tags, self._tags = self._tags, {}
            params, self._params = self._params, []
        try:
            # the tags and params go with the last metrics when they fit: one transaction
            tag_list = [RunTag(k, v) for k, v in tags.items()]
            fits = len(tag_list) <= BATCH_TAGS and len(params) <= BATCH_TAGS
            chunks = [metrics[i : i + BATCH] for i in range(0, len(metrics), BATCH)]
            last = chunks.pop() if chunks and fits else []
            for chunk in chunks:
                self._raw.log_batch(self.run_id, metrics=chunk)
            for i in range(0, max(len(tag_list), len(params), len(last) > 0), BATCH_TAGS):
                self._raw.log_batch(
                    self.run_id,
                    metrics=last if i == 0 else [],
                    params=params[i : i + BATCH_TAGS],
                    tags=tag_list[i : i + BATCH_TAGS],
                )
        except Exception:
            with self._tags_lock:  # kept for the next try; newer values win
                self._tags = {**tags, **self._tags}
                self._params = params + self._params
            raise

    def _writer(self) -> None:
        pending: list = []
        retry_at, delay = 0.0, FIRST_DELAY  # while the store is unavailable
        while True:
            acks, stop = self._take(pending, retry_at)
            try:
                given_up = self._outage is not None and self._outage.given_up
                started = time.monotonic()
                work = pending or self._journaled or self._tags or self._params
                if work and started >= retry_at and not given_up:
                    try:
                        self._write(pending)
                        pending, retry_at, delay = [], 0.0, FIRST_DELAY
                        if self._outage is not None:
                            self._outage.recovered()
                    except Exception as error:  # noqa: BLE001 - kept for close
                        if self._journal is None or self._outage is None or not unavailable(error):
                            self._error, pending = error, []
                        else:
                            self._outage.failed(error, started)
                            retry_at = time.monotonic() + delay
                            delay = min(2 * delay, MAX_DELAY)
                durable = acks or stop or len(pending) >= BUFFER
                if pending and self._journal is not None and durable:
                    # the store is unavailable: what must be durable goes to the journal
                    metric_journal.append(self._journal, pending)
                    self._journaled, pending = True, []
            except Exception as error:  # noqa: BLE001 - e.g. the journal unwritable
                self._error = error
            finally:
                for ack in acks:
                    ack.set()
            if stop:
                return

    def flush(self) -> None:
        """Block until everything queued so far is durable: written to MLflow, or (the store
        unavailable) appended to the run's journal, which is replayed once it is back; raises
        the writer's error if a batch failed otherwise, so that no checkpoint follows a gap."""
        done = threading.Event()
        self._queue.put(done)
        done.wait()
        if self._error is not None:  # not an outage: a refused batch, an unwritable journal
            raise self._error

    def _replay(self) -> None:
        """Write the run's journal to MLflow now (waiting out an outage)."""
        if self._journal is not None and os.path.exists(self._journal):
            replay = metric_journal.replay
            if self._outage is None:
                replay(self._raw, self.run_id, self._journal, BATCH)
            else:
                self._outage.call(replay, self._raw, self.run_id, self._journal, BATCH)
        self._journaled = False

    def close(self, status: str = "FINISHED") -> None:
        """Drain the queue (and the journal) and terminate the run; ``StoreOutage`` past the
        outage limit leaves the run's journal for ``resume``."""
        self._queue.put(None)
        self._thread.join()
        if self._journaled:
            self._replay()
        self.client.set_terminated(self.run_id, status=status)
        if self._error is not None:
            raise RuntimeError(f"MLflow logging failed: {self._error}")

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)
