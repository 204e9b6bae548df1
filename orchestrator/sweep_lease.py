"""The single-writer lease of a sweep: at most one driver writes a sweep's stores at a time.

The lease is an exclusive ``flock`` on ``DIR/sweeps/NAME.lease``, taken before the stores are
opened and held until the driver ends. The operating system drops it when the holder's
process ends in any way (``kill -9`` included), so a killed driver never blocks ``resume``;
a second ``launch`` or ``resume`` of the same sweep while one runs exits 2, naming the
holder (pid, host, since when) recorded in the file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import IO

from rnnsweep.orchestrator import sweep_store


def lease_path(state_dir: str, name: str) -> str:
    return os.path.join(os.path.dirname(sweep_store.record_path(state_dir, name)), f"{name}.lease")


class SweepLease:
    """``acquire()`` takes the lease of sweep ``name`` or raises ``ValueError`` naming its
    holder; ``release()`` gives it back (also done by the OS when the process ends)."""

    def __init__(self, state_dir: str, name: str) -> None:
        self.path = lease_path(state_dir, name)
        self.name = name
        self.handle: IO[str] | None = None

    def acquire(self) -> None:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            try:
                who = json.loads(holder)
                by = f"pid {who['pid']} on {who['host']} since {who['since']}"
            except (ValueError, KeyError, TypeError):
                by = "another process"
            raise ValueError(
                f"sweep {self.name!r} is being driven by {by} ({self.path}); wait for it to "
                "end or stop it, then resume"
            ) from None
        handle.seek(0)
        handle.truncate()
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        handle.write(json.dumps(holder))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file drops the lock
            self.handle = None
