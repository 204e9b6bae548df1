"""Find and kill the processes of one Ray instance, told apart by its temporary directory."""

from __future__ import annotations

import os
import signal
import time


def ray_processes(temp_root: str) -> list[int]:
    """Pids of processes started for the Ray instance whose temp dir is under ``temp_root``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().decode(errors="replace")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().decode(errors="replace")
        except OSError:
            continue
        if (
            temp_root in cmdline
            or f"RAY_TMPDIR={temp_root}\0" in environ
            or _has_open_file(entry, temp_root)
        ):
            found.append(int(entry))
    return found


def _has_open_file(pid: str, root: str) -> bool:
    """Ray's agents rename themselves and drop the environment, but keep their logs open."""
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}").startswith(root)
            for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


def wait_until_gone(temp_root: str, seconds: float) -> list[int]:
    """Poll until no process of the instance under ``temp_root`` is left, or ``seconds`` pass;
    returns those still alive (empty when all are gone)."""
    deadline = time.monotonic() + seconds
    while True:
        alive = ray_processes(temp_root)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
