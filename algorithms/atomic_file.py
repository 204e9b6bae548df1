"""Atomic file replacement: the project's one way to write a file that others may read.

``write_atomic(path, data)`` writes ``data`` to a temporary file in the same directory, flushes
it to disk (``fsync``), renames it over ``path`` (``os.replace``, atomic on POSIX and Windows)
and syncs the directory, so that a reader, or a machine that loses power, sees the old file or
the new one, never part of one. A failure leaves the old file as it was and no temporary file;
an ``OSError`` (a full disk, a read-only file system) names ``path``.
It lives in ``algorithms/`` because checkpoints are written there and ``orchestrator/`` may
import ``algorithms/`` (never the reverse).
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` (creating its directory) in one step."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.filename is None:  # e.g. ENOSPC from write()
            raise OSError(error.errno, error.strerror, path) from error
        raise
    try:  # the rename itself survives a power loss once the directory is synced
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
