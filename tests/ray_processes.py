"""Find and kill the processes of one Ray instance, told apart by its temporary directory, and
list the TCP ports they listen on."""

from __future__ import annotations

import os
import signal
import socket
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


def listening(pids: list[int]) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every TCP socket in LISTEN state that one of ``pids`` holds
    (from ``/proc``: the socket inodes among its open files, looked up in its ``net/tcp{,6}``)."""
    found = []
    for pid in pids:
        table = _listen_table(pid)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in table:
                found.append((pid, *table[link[8:-1]]))
    return found


def _listen_table(pid: int) -> dict[str, tuple[str, int]]:
    """Socket inode -> (address, port) of the LISTEN sockets in ``pid``'s network namespace."""
    table = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{name}") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            table[fields[9]] = (socket.inet_ntop(family, words), int(port, 16))
    return table
