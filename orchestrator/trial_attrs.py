"""Several user attributes of one Optuna trial written in one storage transaction.

Optuna 5.0's public API writes one attribute per call, each its own transaction (a commit
per key: most of a near-instant trial's store time), and its RDB storage reads the trial
back before each key's upsert. On SQLite and PostgreSQL (what sweeps use), ``set_user_attrs``
reads the trial once, checks that it may still be updated, and upserts every key in one
multi-row ``INSERT ... ON CONFLICT DO UPDATE``, in one session it then commits: the keys
land together or not at all, in two statements whatever their number. Any other RDB engine
gets Optuna's own upsert per key in that session; any other storage one public
``set_trial_user_attr`` call per key. The stored rows are the same either way (key, JSON
value), as every reader (``status``, ``best``, ``report``) sees them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any


def set_user_attrs(trial: Any, attrs: Mapping[str, Any]) -> None:
    """Write ``attrs`` on ``trial`` (an ``optuna.trial.Trial``) in one transaction where the
    storage allows it; the trial's own view (``trial.user_attrs``) follows."""
    if not attrs:
        return
    backend = _rdb(trial.storage)
    cached = hasattr(trial, "_trial_id") and hasattr(trial, "_cached_frozen_trial")
    private = _private_api() if backend is not None and cached else None
    if private is None:  # another storage, or an Optuna without these internals
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    models, scoped_session = private
    model = models.TrialUserAttributeModel
    insert = _upsert(backend.engine.name)
    with scoped_session(backend.scoped_session, True) as session:
        if insert is None:
            for key, value in attrs.items():
                backend._set_trial_attr_without_commit(session, model, trial._trial_id, key, value)
        else:
            row = models.TrialModel.find_or_raise_by_id(trial._trial_id, session)
            backend.check_trial_is_updatable(trial._trial_id, row.state)
            rows = [
                {"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in attrs.items()
            ]
            statement = insert(model).values(rows)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[model.trial_id, model.key],
                    set_={"value_json": statement.excluded.value_json},
                )
            )
    trial._cached_frozen_trial.user_attrs.update(attrs)


def _upsert(engine: str) -> Any:
    """The engine's ``insert`` with ``on_conflict_do_update`` (SQLite from 3.24, PostgreSQL),
    or None."""
    if engine == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert
    if engine == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert

        return insert
    return None


def _private_api() -> tuple[Any, Any] | None:
    """Optuna's RDB models and session helper (private: None where a release moved them)."""
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:
        return None
    return models, _create_scoped_session


def _rdb(storage: Any) -> Any:
    """The ``RDBStorage`` behind ``storage`` (Optuna wraps it in a cache), or None."""
    from optuna.storages import RDBStorage

    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, RDBStorage) and hasattr(backend, "_set_trial_attr_without_commit"):
        return backend
    return None
