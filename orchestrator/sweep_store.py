"""Where a sweep's state lives, and opening it.

A sweep ``NAME`` in state directory ``DIR`` has a record ``DIR/sweeps/NAME.json`` (its resolved
spec, Optuna storage URL, MLflow tracking URI, experiment and parent run ids: the one home of
the sweep's metadata), an Optuna study named ``NAME`` (SQLite ``DIR/optuna.db`` by default,
PostgreSQL on a cluster), an MLflow experiment named ``NAME`` (SQLite ``DIR/mlflow.db`` by
default) and checkpoints under ``DIR/checkpoints/NAME/``. Every command finds sweep state
through here; the driver writes it through ``stores``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rnnsweep.algorithms.atomic_file import write_atomic
from rnnsweep.orchestrator import sweep_name, url_secrets
from rnnsweep.orchestrator.state_dir import resolve as resolve_state_dir

# The default tracking URI has one home, tracking.py; the name stays importable from here.
from rnnsweep.orchestrator.tracking import default_tracking_uri  # noqa: F401


def record_path(state_dir: str, name: str) -> str:
    """``DIR/sweeps/NAME.json``; ``ValueError`` if ``name`` breaks ``sweep_name``'s rules
    (every command taking NAME gets here before touching a file)."""
    sweep_name.check(name)
    return os.path.join(state_dir, "sweeps", f"{name}.json")


def checkpoint_dir(state_dir: str, name: str) -> str:
    sweep_name.check(name)
    return os.path.join(state_dir, "checkpoints", name)


def checkpoint_path(state_dir: str, name: str, trial: int) -> str:
    return os.path.join(checkpoint_dir(state_dir, name), f"trial-{trial}.pt")


def optuna_url(url: str) -> str:
    """Optuna's SQLAlchemy URL: plain ``postgresql://`` goes through psycopg2, the driver
    installed with the project (SQLAlchemy 2.1 would otherwise look for psycopg 3)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def default_optuna_url(state_dir: str) -> str:
    return f"sqlite:///{os.path.join(state_dir, 'optuna.db')}"




def write_record(state_dir: str, name: str, record: dict[str, Any]) -> None:
    write_atomic(record_path(state_dir, name), json.dumps(record, indent=2).encode())


def read_record(
    state_dir: str | None, name: str, creating: bool = False
) -> tuple[str, dict[str, Any]]:
    """``(state_dir, record)`` of sweep ``name``; ``ValueError`` naming what is missing, or
    (unless ``creating``) that the sweep is half-created (``"state": "creating"``, see
    ``stores``)."""
    state_dir = resolve_state_dir(state_dir)
    path = record_path(state_dir, name)
    if not os.path.exists(path):
        known = (
            sorted(
                f[:-5] for f in os.listdir(os.path.join(state_dir, "sweeps")) if f.endswith(".json")
            )
            if os.path.isdir(os.path.join(state_dir, "sweeps"))
            else []
        )
        hint = f"; sweeps there: {', '.join(known)}" if known else ""
        raise ValueError(f"no sweep named {name!r} in state directory {state_dir}{hint}")
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"sweep record {path} is unreadable: {error}") from None
    problem = record_problem(record)
    if problem:
        raise ValueError(f"sweep record {path} is not a sweep record: {problem}")
    if record.get("state") == "creating" and not creating:
        raise ValueError(half_created(name, state_dir))
    return state_dir, record


# what every sweep record holds from its creation on (``stores.SweepStores._new_record``)
RECORD_KEYS = {"name": str, "spec": dict, "optuna_storage": str, "tracking_uri": str}


def record_problem(record: Any) -> str:
    """What makes ``record`` (a file's JSON) no sweep record, or ``""``."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a mapping"
    for key, kind in RECORD_KEYS.items():
        if not isinstance(record.get(key), kind):
            what = "missing" if key not in record else f"not a {kind.__name__}"
            return f"its {key!r} is {what}"
    return ""


def half_created(name: str, state_dir: str) -> str:
    """The message for a sweep whose driver stopped while creating it, with the fix."""
    return (
        f"sweep {name!r} was left half-created by a driver that stopped while creating it; "
        f"`rnnsweep resume {name} --state-dir {state_dir}` finishes it"
    )


def recorded_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec as the record holds it: its storage URLs with any password redacted."""
    storage = {
        k: url_secrets.redact(v) if isinstance(v, str) else v for k, v in spec["storage"].items()
    }
    return json.loads(json.dumps({**spec, "storage": storage}))


def study_url(record: dict[str, Any]) -> str:
    """The URL to connect to the sweep's Optuna database with (the record's, redacted, with its
    password from memory or the environment: ``url_secrets.connectable``)."""
    return url_secrets.connectable(optuna_url(record["optuna_storage"]))


def load_study(record: dict[str, Any]):
    """The sweep's study; its storage URL as the record holds it, its password (if any) from
    ``PGPASSWORD`` or ``~/.pgpass`` (``url_secrets``). ``ValueError`` if it cannot be opened."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = optuna_url(record["optuna_storage"])
    try:
        return optuna.load_study(study_name=record["name"], storage=url_secrets.connectable(url))
    except KeyError:
        where = url_secrets.redact(url)
        raise ValueError(f"no study named {record['name']!r} in {where}") from None
    except Exception as error:  # noqa: BLE001 - an unreachable store, a refused password
        where = f"the Optuna study at {url_secrets.redact(url)}"
        raise ValueError(open_error(where, error)) from None


def open_error(what: str, error: BaseException) -> str:
    """One line: ``what`` (its URLs redacted) cannot be opened, and why; no password in it."""
    reason = (str(error).strip().splitlines() or [""])[0]
    return url_secrets.scrub(f"cannot open {what}: {type(error).__name__}: {reason}")
