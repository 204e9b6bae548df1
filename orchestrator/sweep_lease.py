"""The single-writer lease of a sweep, kept in the sweep's own Optuna database.

Table ``rnnsweep_lease`` (created beside Optuna's tables if missing), one row per sweep:
``sweep`` (primary key), ``host`` and ``pid`` of the driver holding it, ``started`` and
``heartbeat`` (seconds since the epoch on the database's clock, so that drivers on two
machines sharing one PostgreSQL compare one clock), ``beats`` (renewals so far) and
``token`` (the holder's random id; empty once released). Every change is a compare-and-set:
a new row is an INSERT (the primary key lets one of two racing drivers in), a takeover an
UPDATE ``WHERE token = <read> AND beats = <read>``, a renewal or release an UPDATE ``WHERE
token = <mine>``; so two drivers never both hold it.

A driver's heartbeat thread renews the lease every ``min(5 s, timeout / 4)``. The lease is
free when it was released, when its heartbeat is older than the timeout (the sweep's
``lease_timeout``: the holder hung, or died on another machine), or when its holder is on
this host and its pid is not running (a killed driver never makes ``resume`` wait). Otherwise
``acquire`` raises ``LeaseHeld`` (exit 3) naming the holder, its heartbeat's age and how long
until the lease may be taken over. A driver whose lease was taken over learns so at its next
renewal (``lost``) and stops writing. Read-only commands only read the row (``read_holder``).

A stop request (``rnnsweep stop``, from any machine reaching the database) is a row of table
``rnnsweep_stop``: ``sweep``, the ``token`` of the holder asked to stop (so that a later
driver of the sweep is not stopped by it), ``by`` (who asked) and ``requested``. The holder's
heartbeat thread reads it at each renewal and sets ``stop_requested``; the driver then stops
as on Ctrl-C.

SQLAlchemy is imported inside the functions: the CLI imports this module for ``LeaseHeld``.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any

TABLE = "rnnsweep_lease"
STOP_TABLE = "rnnsweep_stop"
HEARTBEAT_SECONDS = 5.0


class LeaseHeld(ValueError):
    """Another live driver holds the sweep (the CLI exits 3)."""


def this_host() -> str:
    return socket.gethostname()


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def duration_text(seconds: float) -> str:
    """``12 s``, ``3 min``, ``2.5 h``: an age as people say it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Holder:
    """The lease row of a sweep as read now. ``age``: seconds since its last heartbeat."""

    host: str
    pid: int
    token: str
    beats: int
    age: float

    def free_because(self, timeout: float) -> str:
        """Why the lease may be taken (a phrase), or ``""`` while its holder drives the sweep.
        (A dead holder's pid reused by another process on its host reads as alive: its lease
        then frees itself at the timeout.)"""
        if not self.token:
            return "released"
        if self.age > timeout:
            return f"its heartbeat is {duration_text(self.age)} old, past the {timeout:g} s timeout"
        if self.host == this_host() and not pid_running(self.pid):
            return f"pid {self.pid} is no longer running on this host"
        return ""

    def who(self) -> str:
        return f"pid {self.pid} on {self.host}"


# The tokens of the leases this process holds: a lease row naming this process with another
# token was left by a driver of this process that stopped without releasing it (a full disk).
_LIVE_TOKENS: set[str] = set()


def held(name: str, holder: Holder, timeout: float) -> LeaseHeld:
    """The refusal a second driver of sweep ``name`` gets while ``holder`` drives it."""
    wait = max(1.0, timeout - holder.age)
    return LeaseHeld(
        f"sweep {name!r} is being driven by {holder.who()} (heartbeat "
        f"{duration_text(holder.age)} ago); stop that driver, or if it is gone (another "
        f"machine), its lease can be taken over in {wait:.0f} s (lease_timeout {timeout:g} s): "
        "try again then"
    )


def _table(metadata: Any) -> Any:
    import sqlalchemy as sa

    return sa.Table(
        TABLE,
        metadata,
        sa.Column("sweep", sa.String(512), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started", sa.Double, nullable=False),
        sa.Column("heartbeat", sa.Double, nullable=False),
        sa.Column("beats", sa.Integer, nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
    )


def _stop_table(metadata: Any) -> Any:
    import sqlalchemy as sa

    return sa.Table(
        STOP_TABLE,
        metadata,
        sa.Column("sweep", sa.String(512), primary_key=True),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("by", sa.String(512), nullable=False),
        sa.Column("requested", sa.Double, nullable=False),
    )


def _now(dialect: str) -> Any:
    """The database's clock in seconds since the epoch, as an SQL expression."""
    import sqlalchemy as sa

    if dialect == "sqlite":
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)")
    if dialect == "postgresql":
        return sa.literal_column("extract(epoch from clock_timestamp())")
    if dialect in ("mysql", "mariadb"):
        return sa.literal_column("unix_timestamp(now(6))")
    import time

    return sa.literal(time.time())  # an unknown database: this machine's clock


def _engine(url: str) -> Any:
    import os

    import sqlalchemy as sa

    engine_url = sa.engine.make_url(url)
    if engine_url.get_backend_name() == "sqlite" and engine_url.database:
        # SQLite creates the file, not its folder (a new state directory)
        os.makedirs(os.path.dirname(os.path.abspath(engine_url.database)), exist_ok=True)
    return sa.create_engine(url, pool_pre_ping=True)


def _read(connection: Any, table: Any, name: str) -> Holder | None:
    import sqlalchemy as sa

    age = (_now(connection.dialect.name) - table.c.heartbeat).label("age")
    row = connection.execute(
        sa.select(table.c.host, table.c.pid, table.c.token, table.c.beats, age).where(
            table.c.sweep == name
        )
    ).first()
    if row is None:
        return None
    return Holder(row.host, row.pid, row.token, row.beats, max(0.0, float(row.age)))


def read_holder(url: str, name: str) -> Holder | None:
    """Sweep ``name``'s lease row in the database at ``url`` (``None``: no row, or no table:
    no driver of this version ever ran it); reads only, creates nothing."""
    import sqlalchemy as sa

    engine = _engine(url)
    try:
        if not sa.inspect(engine).has_table(TABLE):
            return None
        with engine.connect() as connection:
            return _read(connection, _table(sa.MetaData()), name)
    finally:
        engine.dispose()


class SweepLease:
    """The lease of sweep ``name`` in the database at ``url`` (a SQLAlchemy URL).

    ``acquire()`` takes it (or raises ``LeaseHeld``) and starts the heartbeat thread;
    ``release()`` stops it and marks the row released. ``lost`` says, once the heartbeat
    found the lease taken over, by whom (else ``""``)."""

    def __init__(self, url: str, name: str, timeout: float) -> None:
        import sqlalchemy as sa

        self.url, self.name, self.timeout = url, name, timeout
        self.token = ""
        self.lost = ""
        self.stop_requested = ""  # who asked this driver to stop (``rnnsweep stop``)
        self.engine: Any = None
        self.table = _table(sa.MetaData())
        self.stop_table = _stop_table(self.table.metadata)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str:
        """Take the lease; returns ``""``, or a line saying whose lease was taken over and why
        (for the driver's output and the sweep's MLflow parent run)."""
        self.engine = _engine(self.url)
        try:
            self._create_table()
            note = self._take()
        except BaseException:
            self.engine.dispose()
            raise
        self._stop.clear()
        interval = min(HEARTBEAT_SECONDS, self.timeout / 4)
        self._thread = threading.Thread(
            target=self._beat, args=(interval,), name="sweep-lease", daemon=True
        )
        self._thread.start()
        return note

    def _create_table(self) -> None:
        import sqlalchemy as sa

        try:
            self.table.metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.SQLAlchemyError:  # created at the same moment by another driver
            if not sa.inspect(self.engine).has_table(TABLE):
                raise

    def _take(self) -> str:
        import sqlalchemy as sa

        table, dialect = self.table, self.engine.dialect.name
        token = secrets.token_hex(16)
        mine = {
            "host": this_host(),
            "pid": os.getpid(),
            "started": _now(dialect),
            "heartbeat": _now(dialect),
            "beats": 0,
            "token": token,
        }
        for _ in range(10):
            with self.engine.connect() as connection:
                holder = _read(connection, table, self.name)
            if holder is None:
                try:
                    with self.engine.begin() as connection:
                        connection.execute(sa.insert(table).values(sweep=self.name, **mine))
                except sa.exc.IntegrityError:  # another driver inserted it first: read again
                    continue
                self.token = token
                _LIVE_TOKENS.add(token)
                return ""
            why = holder.free_because(self.timeout)
            if not why and holder.host == this_host() and holder.pid == os.getpid():
                if holder.token not in _LIVE_TOKENS:
                    why = "an earlier driver in this process stopped without releasing it"
            if not why:
                raise held(self.name, holder, self.timeout)
            with self.engine.begin() as connection:
                taken = connection.execute(
                    sa.update(table)
                    .where(
                        table.c.sweep == self.name,
                        table.c.token == holder.token,
                        table.c.beats == holder.beats,
                    )
                    .values(**mine)
                ).rowcount
            if taken == 1:
                self.token = token
                _LIVE_TOKENS.add(token)
                if not holder.token:
                    return ""
                return (
                    f"took over the lease of sweep {self.name!r} from {holder.who()}: {why}"
                )
        raise LeaseHeld(f"sweep {self.name!r}: its lease changed hands 10 times while taken")

    def _beat(self, interval: float) -> None:
        import sqlalchemy as sa

        table = self.table
        while not self._stop.wait(interval):
            try:
                with self.engine.begin() as connection:
                    renewed = connection.execute(
                        sa.update(table)
                        .where(table.c.sweep == self.name, table.c.token == self.token)
                        .values(
                            heartbeat=_now(connection.dialect.name), beats=table.c.beats + 1
                        )
                    ).rowcount
                    holder = _read(connection, table, self.name) if renewed == 0 else None
            except sa.exc.SQLAlchemyError:
                continue  # the database is unreachable for now: try at the next beat
            if renewed == 0:
                by = holder.who() if holder is not None and holder.token else "nobody"
                self.lost = f"the lease of sweep {self.name!r} was taken over by {by}"
                return
            self._read_stop_request()

    def _read_stop_request(self) -> None:
        """Set ``stop_requested`` if ``rnnsweep stop`` asked this holder (read apart from the
        renewal, so that a failed read never undoes it)."""
        import sqlalchemy as sa

        stop = self.stop_table
        try:
            with self.engine.connect() as connection:
                mine = (stop.c.sweep == self.name) & (stop.c.token == self.token)
                asked = connection.execute(sa.select(stop.c.by).where(mine)).first()
        except sa.exc.SQLAlchemyError:
            return  # read again at the next beat
        if asked is not None:
            self.stop_requested = asked.by

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released (its heartbeat: the last moment
        a driver was seen); a lost lease is left to its new holder."""
        import sqlalchemy as sa

        if self.engine is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if self.token and not self.lost:
                table = self.table
                with self.engine.begin() as connection:
                    connection.execute(
                        sa.update(table)
                        .where(table.c.sweep == self.name, table.c.token == self.token)
                        .values(token="", heartbeat=_now(connection.dialect.name))
                    )
                    stop = self.stop_table
                    connection.execute(
                        sa.delete(stop).where(stop.c.sweep == self.name, stop.c.token == self.token)
                    )
        except sa.exc.SQLAlchemyError as error:  # it frees itself once its heartbeat is stale
            print(
                f"the lease of sweep {self.name!r} was not released ({type(error).__name__}: "
                f"{str(error).splitlines()[0]}); "
                f"another driver may take it over in {self.timeout:g} s",
                file=sys.stderr,
            )
        finally:
            _LIVE_TOKENS.discard(self.token)
            self.token = ""
            self.engine.dispose()
            self.engine = None


def request_stop(url: str, name: str, timeout: float, by: str) -> Holder | None:
    """Ask the driver holding sweep ``name``'s lease to stop (a row of ``rnnsweep_stop`` for
    its token; ``by`` says who asked); returns that holder, or ``None`` when no live driver
    holds the lease (nothing asked)."""
    import sqlalchemy as sa

    engine = _engine(url)
    try:
        if not sa.inspect(engine).has_table(TABLE):
            return None
        metadata = sa.MetaData()
        table, stop = _table(metadata), _stop_table(metadata)
        try:
            stop.create(engine, checkfirst=True)
        except sa.exc.SQLAlchemyError:  # created at the same moment by another command
            if not sa.inspect(engine).has_table(STOP_TABLE):
                raise
        with engine.begin() as connection:
            holder = _read(connection, table, name)
            if holder is None or holder.free_because(timeout):
                return None
            connection.execute(sa.delete(stop).where(stop.c.sweep == name))
            connection.execute(
                sa.insert(stop).values(
                    sweep=name,
                    token=holder.token,
                    by=by[:512],
                    requested=_now(connection.dialect.name),
                )
            )
        return holder
    finally:
        engine.dispose()


def forget(url: str, name: str) -> None:
    """Remove sweep ``name``'s lease row and stop requests (``rnnsweep delete``, once its
    lease is released)."""
    import sqlalchemy as sa

    engine = _engine(url)
    try:
        inspector = sa.inspect(engine)
        metadata = sa.MetaData()
        tables = [
            make(metadata)
            for make, table_name in ((_table, TABLE), (_stop_table, STOP_TABLE))
            if inspector.has_table(table_name)
        ]
        with engine.begin() as connection:
            for table in tables:
                connection.execute(sa.delete(table).where(table.c.sweep == name))
    finally:
        engine.dispose()
