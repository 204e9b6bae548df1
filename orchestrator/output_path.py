"""Where a command will write, checked before it does any work.

A file or folder given on the command line (``run --checkpoint``, ``--summary-json``, ``best
-o``, ``compare --out``, ``report --out``) is checked at the start, so that a path that cannot
be written costs no compute and leaves nothing behind (no half-written output, no MLflow run
left open). A path that is the wrong kind of thing is bad input (``ValueError``: exit 2); a
folder the machine will not let us write in is the machine's fault (``EnvironmentFault``).
Missing parent folders are fine: the writers create them.
"""

from __future__ import annotations

import os


def nearest_folder(path: str) -> str:
    """The closest existing ancestor of ``path`` (its folder, or the folder above that...)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return folder


def check_writable_folder(folder: str, path: str) -> None:
    """``EnvironmentFault`` naming ``path`` if the existing ``folder`` cannot be written."""
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    if read_only or not os.access(folder, os.W_OK | os.X_OK):
        from rnnsweep.orchestrator.environment_fault import EnvironmentFault

        cause = "it is on a read-only file system" if read_only else "permission denied"
        raise EnvironmentFault(f"cannot write {path}: {cause}")


def file_target(path: str, flag: str) -> None:
    """``path`` can be written as a file: not a folder, under a folder we can write in."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder; give a file's path")
    folder = nearest_folder(path)
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: {folder} is not a folder")
    check_writable_folder(folder, path)


def folder_target(path: str, flag: str) -> None:
    """``path`` can be a folder to write files in: an existing folder, or creatable."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"{flag} {path}: exists and is not a folder")
        check_writable_folder(path, path)
        return
    folder = nearest_folder(path)
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: {folder} is not a folder")
    check_writable_folder(folder, path)
