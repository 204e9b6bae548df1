"""Riding out a store that is briefly unavailable: a locked SQLite file, a stopped PostgreSQL,
an unreachable MLflow server.

``unavailable(error)`` tells such an outage (found anywhere in the error's chain of causes)
from a refused request. ``Outage`` keeps one store's outage clock: ``call`` retries a call
with exponential backoff while the store is unavailable and raises ``StoreOutage`` once it
has been so for ``limit`` seconds (the sweep's ``storage.outage_limit``); from then on every
call raises at once, so that a driver stopping for the outage does not wait again.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

FIRST_DELAY, MAX_DELAY = 0.5, 15.0  # seconds between attempts: doubled after each failure
SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


class StoreOutage(Exception):
    """A store was unavailable for longer than the sweep's outage limit."""


def _outage_kind(error: BaseException) -> bool | None:
    """True: an outage; False: a real error; None: this link of the chain does not say."""
    if isinstance(error, sqlite3.OperationalError):  # also "no such table": a real error
        return any(text in str(error) for text in SQLITE_BUSY)
    name = type(error).__name__
    try:
        import psycopg2

        if isinstance(error, psycopg2.OperationalError | psycopg2.InterfaceError):
            return True  # refused, reset or shut down connections (AdminShutdown, ...)
    except ImportError:
        pass
    try:
        import sqlalchemy.exc

        if isinstance(error, sqlalchemy.exc.DisconnectionError | sqlalchemy.exc.TimeoutError):
            return True
    except ImportError:
        pass
    module = type(error).__module__.split(".")[0]
    if module in ("requests", "urllib3") and ("Connection" in name or "Timeout" in name):
        return True
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if name == "MlflowException" and getattr(error, "error_code", "") in (
        "TEMPORARILY_UNAVAILABLE",
        "SERVICE_UNAVAILABLE",
    ):
        return True
    return None


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the store is unavailable for now (worth waiting for), judged
    by the innermost link of its cause chain that says (a locked SQLite file inside MLflow's
    ``TEMPORARILY_UNAVAILABLE`` is an outage, a missing table inside it is not)."""
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and all(link is not seen for seen in chain):
        chain.append(link)
        link = link.__cause__ or link.__context__
    for link in reversed(chain):
        kind = _outage_kind(link)
        if kind is not None:
            return kind
    return False


def reason(error: BaseException) -> str:
    """A short, secret-free reason: the first line of the innermost error (URLs are not
    part of the driver errors we see: ``connection to server at "host", port ... failed``)."""
    link = error
    while link.__cause__ is not None or link.__context__ is not None:
        link = link.__cause__ or link.__context__  # type: ignore[assignment]
    text = str(link).strip().splitlines()[0] if str(link).strip() else type(link).__name__
    return text[:100]


class Outage:
    """One store's outage clock (shared by the threads that write the store).

    ``on_wait(outage)``: called after each failed attempt of ``call`` (before it waits, or
    gives up), in its caller's thread."""

    def __init__(self, store: str, limit: float) -> None:
        self.store, self.limit = store, limit
        self.on_wait: Callable[[Outage], None] | None = None
        self._since: float | None = None
        self._reason = ""
        self.given_up = False
        self._lock = threading.Lock()

    def seconds(self) -> float:
        """How long the store has been unavailable (0: it is not)."""
        with self._lock:
            return 0.0 if self._since is None else time.monotonic() - self._since

    def failed(self, error: BaseException, started: float) -> float:
        """Note an attempt begun at ``started`` (``time.monotonic()``) that failed: the store
        has been unavailable since then at least (a locked SQLite file is waited for inside
        the attempt). Returns the outage's length so far."""
        with self._lock:
            if self._since is None:
                self._since = started
            self._reason = reason(error)
            return time.monotonic() - self._since

    def recovered(self) -> None:
        with self._lock:
            self._since = None

    def describe(self) -> str:
        return (
            f"tracking store unavailable, retrying ({self.seconds():.0f} s): "
            f"{self.store}: {self._reason}"
        )

    def check(self) -> None:
        """``StoreOutage`` if the store has been unavailable for ``limit`` seconds."""
        seconds = self.seconds()
        if self.given_up or seconds >= self.limit:
            self.given_up = True
            raise StoreOutage(
                f"the {self.store} store was unavailable for {seconds:.0f} s "
                f"(storage.outage_limit {self.limit:g} s): {self._reason}"
            )

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, retried with backoff while the store is unavailable;
        ``StoreOutage`` past the limit; any other error is raised as it is."""
        delay = FIRST_DELAY
        while True:
            if self.given_up:
                self.check()
            started = time.monotonic()
            try:
                result = function(*args, **kwargs)
            except Exception as error:
                if not unavailable(error):
                    raise
                seconds = self.failed(error, started)
                if self.on_wait is not None:  # first: an attempt may have waited past the limit
                    self.on_wait(self)
                self.check()
                time.sleep(min(delay, max(0.05, self.limit - seconds)))
                delay = min(2 * delay, MAX_DELAY)
                continue
            self.recovered()
            return result


class Patient:
    """``target`` (an ``MlflowClient``) whose method calls wait out an outage
    (``Outage.call``)."""

    def __init__(self, target: Any, outage: Outage) -> None:
        self._target, self._outage = target, outage

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute
        return functools.partial(self._outage.call, attribute)
