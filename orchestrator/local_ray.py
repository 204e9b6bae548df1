"""The private local Ray instance a driver starts when no ``RAY_ADDRESS`` names a cluster.

It listens on 127.0.0.1 only: ``start`` sets Ray's single-machine switch
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's default on macOS and Windows), under which the
node's IP is the loopback address, so that the GCS, raylet, object manager, worker, metrics and
agent servers all bind there. Token authentication stays as Ray sets it (on by default for a
new local instance; ``RAY_AUTH_MODE`` is left alone).

It dies with its driver: ``start`` also starts a reaper, a small process in a session of its
own that reads a pipe from the driver. When the pipe closes (the driver ended in any way,
``kill -9`` included), the reaper kills every process of the instance, found by its session
directory (on their command line or among their open files: Ray's agents rename themselves),
within about a second. Ray's own reaper misses its dashboard and runtime-env agents. Linux
(``/proc``); elsewhere the reaper finds nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start(num_cpus: int, **init_args: Any) -> subprocess.Popen:
    """``ray.init`` a private instance bound to 127.0.0.1; returns its reaper (``stop``
    closes it)."""
    previous = os.environ.get(SINGLE_MACHINE)
    os.environ[SINGLE_MACHINE] = "0"  # for the processes Ray starts
    import ray
    from ray._private import ray_constants

    # read when ray is first imported, which may have been before this call
    cluster, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        # "local": a private instance, never one that happens to run on this machine.
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **init_args)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster
        if previous is None:
            os.environ.pop(SINGLE_MACHINE, None)
        else:
            os.environ[SINGLE_MACHINE] = previous
    return subprocess.Popen(
        [sys.executable, "-m", __name__, context.address_info["session_dir"], str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # neither a Ctrl-C nor Ray's own group kill reaches it
    )


def stop(reaper: subprocess.Popen) -> None:
    """After ``ray.shutdown()``: the reaper kills what is left of the instance and exits."""
    reaper.stdin.close()
    try:
        reaper.wait(timeout=30)
    except subprocess.TimeoutExpired:
        reaper.kill()


def session_processes(session_dir: str, spare: frozenset[int] = frozenset()) -> list[int]:
    """Pids (but this one's and ``spare``) whose command line or open files name
    ``session_dir``."""
    found = []
    root = os.path.realpath(session_dir)
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) in spare or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().decode(errors="replace")
            files = _open_files(entry)
        except OSError:  # gone, or a zombie
            continue
        if root in cmdline or session_dir in cmdline or any(f.startswith(root) for f in files):
            found.append(int(entry))
    return found


def _open_files(pid: str) -> list[str]:
    files = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            files.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return files


def reap(session_dir: str, driver: int, seconds: float = 5.0) -> None:
    """SIGKILL the instance's processes but its ``driver`` (which holds files there too, and
    may be exiting normally) until none is left twice running (a raylet may be starting a
    worker), for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        pids = session_processes(session_dir, frozenset({driver}))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        quiet = 0 if pids else quiet + 1
        time.sleep(0.1)


def _main(session_dir: str, driver: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):  # until the driver's end of the pipe closes
        pass
    reap(session_dir, driver)


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
