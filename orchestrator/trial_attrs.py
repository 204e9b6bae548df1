"""Several user attributes of one Optuna trial written in one storage transaction.

Optuna 5.0's public API writes one attribute per call, each its own transaction (a commit
per key: most of a near-instant trial's store time). Its RDB storage (SQLite, PostgreSQL:
what sweeps use) upserts an attribute inside a session it then commits; ``set_user_attrs``
runs those upserts in one session, so that the keys land together or not at all. Any other
storage gets one public ``set_trial_user_attr`` call per key. The stored rows are the same
either way (key, JSON value), as every reader (``status``, ``best``, ``report``) sees them.
"""

from __future__ import annotations

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
    with scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            backend._set_trial_attr_without_commit(
                session, models.TrialUserAttributeModel, trial._trial_id, key, value
            )
    trial._cached_frozen_trial.user_attrs.update(attrs)


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
