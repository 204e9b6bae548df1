"""The private local Ray instance a driver starts when no ``RAY_ADDRESS`` names a cluster.

It listens on 127.0.0.1 only: ``start`` sets Ray's single-machine switch
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's default on macOS and Windows), under which the
node's IP is the loopback address, so that the GCS, raylet, object manager, worker, metrics and
agent servers all bind there.

Token authentication is on, set up once and quietly (``token_auth``): left unset,
``RAY_AUTH_MODE`` makes Ray turn it on for each new local instance with a warning every time,
and write the token world-readable. ``start`` sets it to ``token`` (unless the user set it) and
keeps the token in ``~/.ray/auth_token``, mode 0600, created (or narrowed) the first time with
one line saying so. The token itself is never read, printed or recorded here. A cluster named
by ``RAY_ADDRESS`` never comes here: its own auth mode applies.

Its workers run at the ordinary priority (Ray's ``worker_niceness`` 0, where Ray's default is
nice 15): they host learners, which are the work itself, and a worker at nice 15 on a busy
machine (another job, the driver's own start-up) can take tens of seconds to import torch
before the actor's first trial, under every nice-0 process there. On a cluster named by
``RAY_ADDRESS`` the actor takes nice 0 itself once it starts (``actors.LearnerHost``).

It dies with its driver: ``start`` also starts a reaper, a small process in a session of its
own that reads a pipe from the driver. When the pipe closes (the driver ended in any way,
``kill -9`` included), the reaper kills every process of the instance, found by its session
directory (on their command line or among their open files: Ray's agents rename themselves),
within about a second. Ray's own reaper misses its dashboard and runtime-env agents. Linux
(``/proc``); elsewhere the reaper finds nothing.

At the end of a command run from the console (``cli.entry`` sets ``exit_follows``), the
instance is left to its reaper (``leave_to_reaper``: SIGKILL to every process of it, not
waited for) and the process ends at once: ``ray.shutdown()`` would send each of Ray's
processes SIGTERM and give it up to a second to exit (1-1.5 s in all on 2 cores). A sweep's
record is complete before: the stores close first. In-process callers (tests, notebooks) keep
``ray.shutdown()``.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
exit_follows = False  # the process ends right after its command (``cli.entry``)
left_to_reaper = False  # ``leave_to_reaper`` ran: the process must end without Ray's atexit
AUTH_MODE = "RAY_AUTH_MODE"
# Where Ray looks for the token before ~/.ray/auth_token: the user's own choice, left alone.
TOKEN_SOURCES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def start(num_cpus: int, **init_args: Any) -> subprocess.Popen:
    """``ray.init`` a private instance bound to 127.0.0.1; returns its reaper (``stop``
    closes it)."""
    said = token_auth()
    if said:
        print(said, file=sys.stderr)
    previous = os.environ.get(SINGLE_MACHINE)
    os.environ[SINGLE_MACHINE] = "0"  # for the processes Ray starts
    import ray
    from ray._private import ray_constants

    # read when ray is first imported, which may have been before this call
    cluster, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        # "local": a private instance, never one that happens to run on this machine.
        context = ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _system_config={"worker_niceness": 0},
            **init_args,
        )
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


def token_auth() -> str:
    """Turn Ray's token authentication on for this process and the processes Ray starts
    (``RAY_AUTH_MODE=token``, unless the user set the mode), and make sure of the token file;
    returns the line to say when the file was created or narrowed (``""`` afterwards)."""
    if AUTH_MODE not in os.environ:
        os.environ[AUTH_MODE] = "token"  # kept: the processes Ray starts later read it too
        # ``import ray`` cached the mode it found; read it again, as Ray's own default
        # (``authentication_token_setup._enable_token_auth``) does before it warns. A private
        # call: should a later Ray lack it, the only loss is Ray's warning coming back.
        try:
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):
            pass
    if os.environ[AUTH_MODE].lower() != "token" or any(os.environ.get(k) for k in TOKEN_SOURCES):
        return ""
    return secure_token_file(token_path())


def token_path() -> str:
    """``~/.ray/auth_token``: where Ray reads (and would generate) the token."""
    return os.path.join(os.path.expanduser("~"), ".ray", "auth_token")


def secure_token_file(path: str) -> str:
    """Create the token file at ``path`` (mode 0600, a random 256-bit hex token, as Ray's own
    generator makes) or narrow an existing one to 0600; returns the line that says so, or
    ``""`` when it was already private (or cannot be changed: Ray then says what fails). The
    token is written whole or not at all (linked into place), so a launch starting beside this
    one never reads a partial token, and a token in use is never replaced."""
    said = f"set up Ray token authentication for local sweeps: {path} (mode 0600)"
    try:
        if not os.path.exists(path):
            folder = os.path.dirname(path)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, draft = tempfile.mkstemp(dir=folder, prefix=".auth_token.")  # mode 0600
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32))
                os.link(draft, path)
                return said
            except FileExistsError:  # created meanwhile by another launch
                pass
            finally:
                os.unlink(draft)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077 == 0:
            return ""
        os.chmod(path, 0o600)
        return f"{said}; it was readable by others (mode {mode:04o})"
    except OSError:  # a read-only home, another user's file
        return ""


def leave_to_reaper(reaper: subprocess.Popen) -> None:
    """Instead of ``ray.shutdown()`` when the process ends next: close the reaper's pipe, so
    that it kills every process of the instance, and do not wait for it. The caller must
    then end with ``os._exit``: Ray's atexit shutdown would wait on the killed processes."""
    global left_to_reaper
    reaper.stdin.close()
    left_to_reaper = True


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
