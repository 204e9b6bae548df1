"""``rnnsweep delete NAME``: remove a sweep: its MLflow runs (parent and children; the
experiment too when nothing else is left in it), its Optuna study, its lease rows, checkpoints,
metric journal and record, after the user types the name (or ``--yes``).

A driver holding the sweep refuses it (``LeaseHeld``, exit 3). The deletion runs under the
sweep's lease, so that no driver starts meanwhile. Each step tolerates what an earlier, broken
off ``delete`` already removed, and the record goes last: running ``delete`` again finishes
it. MLflow's deletion is its own (runs and experiment marked deleted, out of every view;
the experiment renamed ``NAME (deleted <UTC time>)`` first, so that a new sweep of the name gets
a fresh one); ``mlflow gc`` purges them for good.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

from rnnsweep.orchestrator import metric_journal, sweep_store


def delete_command(args) -> int:
    from rnnsweep.orchestrator.sweep_commands import _lease_timeout, _refuse_if_driven

    state_dir, record = sweep_store.read_record(args.state_dir, args.name, creating=True)
    name = record["name"]
    _refuse_if_driven(record)  # before asking: a live driver makes the question moot
    print(_plan(state_dir, record))
    if not args.yes:
        try:
            typed = input(f"type the sweep's name ({name}) to delete it: ")
        except EOFError:
            typed = ""
        if typed.strip() != name:
            print(f"rnnsweep delete: not deleted (expected {name!r}); --yes skips the question",
                  file=sys.stderr)
            return 1
    from rnnsweep.orchestrator.sweep_lease import SweepLease, forget

    url = sweep_store.study_url(record)
    lease = SweepLease(url, name, _lease_timeout(record))
    lease.acquire()  # LeaseHeld if a driver started since the question
    try:
        runs = _delete_mlflow(record)
        studies = _delete_study(record)
        for folder in (
            sweep_store.checkpoint_dir(state_dir, name),
            metric_journal.directory(state_dir, name),
        ):
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        lease.release()
    forget(url, name)
    os.remove(sweep_store.record_path(state_dir, name))
    print(f"deleted sweep {name!r}: {runs} MLflow run(s), {studies} Optuna study, its "
          "checkpoints, journal and record")
    return 0


def _plan(state_dir: str, record: dict[str, Any]) -> str:
    name = record["name"]
    return (
        f"sweep {name!r} in {state_dir}: its Optuna study {name!r} "
        f"({sweep_store.url_secrets.redact(record['optuna_storage'])}), its MLflow parent and "
        f"child runs ({sweep_store.url_secrets.redact(record['tracking_uri'])}), checkpoints "
        f"{sweep_store.checkpoint_dir(state_dir, name)}, journal and record will be deleted"
    )


def _delete_mlflow(record: dict[str, Any]) -> int:
    """Mark the sweep's parent run and its children deleted, then its experiment if no other
    run is left in it; returns the number of runs deleted."""
    from mlflow.entities import ViewType

    from rnnsweep.orchestrator import tracking

    client = tracking.client(record["tracking_uri"])
    experiment = record.get("mlflow_experiment_id")
    if not experiment:  # half-created: the experiment is named after the sweep, if made
        found = client.get_experiment_by_name(record["name"])
        if found is None:
            return 0
        experiment = found.experiment_id
    parent = record.get("mlflow_parent_run_id") or (
        record.get("creation_id")
        and tracking.parent_run(record["tracking_uri"], experiment, record["creation_id"])
    )
    deleted = 0
    if parent:
        children: list[str] = []
        token = None
        while True:
            page = client.search_runs(
                [experiment],
                f"tags.mlflow.parentRunId = '{parent}'",
                run_view_type=ViewType.ALL,
                max_results=1000,
                page_token=token,
            )
            children += [run.info.run_id for run in page]
            token = page.token
            if not token:
                break
        for run_id in [*children, parent]:
            if client.get_run(run_id).info.lifecycle_stage != "deleted":
                client.delete_run(run_id)
                deleted += 1
    left = client.search_runs([experiment], "", run_view_type=ViewType.ACTIVE_ONLY, max_results=1)
    if not left and client.get_experiment(experiment).lifecycle_stage != "deleted":
        # renamed first: a later launch of the name would restore a deleted experiment of
        # that name, and with it the runs deleted here
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        client.rename_experiment(experiment, f"{record['name']} (deleted {stamp})")
        client.delete_experiment(experiment)
    return deleted


def _delete_study(record: dict[str, Any]) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.delete_study(study_name=record["name"], storage=sweep_store.study_url(record))
    except KeyError:  # never made, or deleted by an earlier delete
        return 0
    return 1
