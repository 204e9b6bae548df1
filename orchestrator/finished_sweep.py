"""Whether a sweep has nothing left to run, read without Ray, Optuna, MLflow or torch.

``resume`` asks this first, so that a finished sweep answers at once: those imports and Ray's
start cost seconds to tens of seconds. It reads the sweep's record, its lease row and the
states of its trials (Optuna's ``studies`` and ``trials`` tables, read with SQLAlchemy as the
lease is: Optuna's own ``load_study`` checks the schema's migrations, about a second). Anything
short of a clean finish (a half-created sweep, a lease a driver holds or never released, a
metric journal to replay, a trial in any state but COMPLETE, PRUNED or FAIL, fewer trials than
the spec asks) or a database that reads otherwise than expected leaves the answer to the
driver, which finishes what is left.
"""

from __future__ import annotations

from typing import Any

from rnnsweep.orchestrator import metric_journal, sweep_store
from rnnsweep.orchestrator.sweep_lease import read_holder

FINISHED = frozenset({"COMPLETE", "PRUNED", "FAIL"})


def nothing_to_resume(state_dir: str, record: dict[str, Any]) -> dict[str, int] | None:
    """The sweep's trial count per state (``{"COMPLETE": 3, "PRUNED": 1}``) when ``resume``
    would have nothing to do, else ``None``. Its lease must have been released: the last
    driver then ended through its clean-up, which closes the MLflow parent run."""
    import sqlalchemy as sa

    if record.get("state") == "creating":
        return None
    url = sweep_store.study_url(record)
    try:
        holder = read_holder(url, record["name"])
        if holder is None or holder.token:  # never leased here, or a driver holds or left it
            return None
        if metric_journal.runs(metric_journal.directory(state_dir, record["name"])):
            return None
        states = trial_states(url, record["name"])
    except sa.exc.SQLAlchemyError:
        return None
    if sum(states.values()) < record["spec"]["trials"] or not FINISHED.issuperset(states):
        return None
    return states


def trial_states(url: str, name: str) -> dict[str, int]:
    """Count per state (Optuna's ``TrialState`` names) of study ``name``'s trials in the
    Optuna database at ``url`` (a SQLAlchemy URL); reads only."""
    import sqlalchemy as sa

    studies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
    trials = sa.table("trials", sa.column("study_id"), sa.column("state"))
    query = (
        sa.select(trials.c.state, sa.func.count())
        .select_from(trials.join(studies, trials.c.study_id == studies.c.study_id))
        .where(studies.c.study_name == name)
        .group_by(trials.c.state)
    )
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {str(state): int(count) for state, count in connection.execute(query)}
    finally:
        engine.dispose()
