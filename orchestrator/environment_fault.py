"""Faults of the machine, not of the input or the code: a full disk, a read-only state
directory, a database locked by another program, the driver out of memory.

``describe(error, stores)`` reads an exception's chain (``__cause__``/``__context__``) and
returns one line naming the cause and the path, or ``None`` when the error is not such a fault.
``stores`` names the places a sweep writes (``{"Optuna store": path, "MLflow store": path,
...}``): SQLite's own messages name no file, so the store is told by the package that raised
(Optuna's or MLflow's frames in the traceback). ``EnvironmentFault`` carries that line to the
command line, which prints it and exits ``EXIT_ENVIRONMENT`` (74) without a traceback.

``trial_reason(cause)`` is the reason a trial fails with when its learner raised inside an
actor (out of memory, recursion too deep, or any other error): one line, for Optuna's
``fail_reason`` and the MLflow run's ``reason`` tag.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping

EXIT_ENVIRONMENT = 74  # sysexits' EX_IOERR: fix the machine, then resume

# SQLite's words (sqlite3.OperationalError, wrapped by SQLAlchemy, Optuna and MLflow)
_SQLITE = (
    ("database or disk is full", "is on a full disk"),
    ("attempt to write a readonly database", "is read-only"),
    ("database is locked", "is locked by another program"),
    ("unable to open database file", "cannot be opened (a missing or read-only directory?)"),
    ("disk i/o error", "had a disk I/O error"),
)
_ERRNO = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "the disk failed (I/O error)",
}


class EnvironmentFault(Exception):
    """The sweep stopped because of the machine (message: one line naming the path and the
    cause); what was recorded is kept, and ``resume`` continues once the cause is fixed."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _raised_in(error: BaseException) -> set[str]:
    """The top-level packages whose code is in the tracebacks of ``error``'s chain."""
    packages = set()
    for link in _chain(error):
        tb = link.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            for name in ("optuna", "mlflow", "sqlalchemy"):
                if f"{os.sep}{name}{os.sep}" in filename:
                    packages.add(name)
            tb = tb.tb_next
    return packages


def _store(error: BaseException, stores: Mapping[str, str]) -> str:
    """Which of ``stores`` a database error came from (by the package that raised it)."""
    raised = _raised_in(error)
    package = "optuna" if "optuna" in raised else "mlflow" if "mlflow" in raised else ""
    for label, path in stores.items():
        if package and label.lower().startswith(package):
            return f"{label} {path}"
    named = [f"{label} {path}" for label, path in stores.items() if "store" in label]
    return " or ".join(named) or "a database"


def store_name(url: str) -> str:
    """How messages name a store: a SQLite file by its path, a server without its password."""
    from rnnsweep.orchestrator.url_secrets import redact

    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else redact(url)


def describe(error: BaseException, stores: Mapping[str, str]) -> str | None:
    """One line naming the path and the cause if ``error`` is a fault of the machine."""
    for link in _chain(error):
        if isinstance(link, MemoryError):
            return f"out of memory ({str(link) or 'MemoryError'})"
        if isinstance(link, RuntimeError) and "can't allocate memory" in str(link):
            # torch's CPU allocator: "...: you tried to allocate N bytes. Error code 12 ..."
            first = str(link).strip().splitlines()[0]
            return f"out of memory ({first.split('DefaultCPUAllocator: ')[-1]})"
        if isinstance(link, OSError) and link.errno in _ERRNO:
            path = link.filename or ", ".join(stores.values())
            return f"cannot write {path}: {_ERRNO[link.errno]} ({link.strerror})"
    for link in _chain(error):
        text = str(link).lower()
        for words, cause in _SQLITE:
            if words in text:
                return f"{_store(error, stores)} {cause} ({words})"
    return None


def trial_reason(cause: BaseException) -> str:
    """Why a trial failed when its learner raised ``cause`` in an actor: one line."""
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if (
        isinstance(cause, MemoryError)
        or "can't allocate memory" in first
        or "out of memory" in first.lower()
    ):
        what = first.split("DefaultCPUAllocator: ")[-1] if first else "MemoryError"
        return f"out of memory in the learner: {what}"[:500]
    if isinstance(cause, RecursionError):
        return f"recursion too deep in the learner: {first}"[:500]
    return f"error: {type(cause).__name__}: {first}"[:500]
