"""A driver subprocess's Ray workers stopped (SIGSTOP) while a test acts on the running sweep:
no trial can step, let alone end, however fast the machine steps (CI's ran a 40000-step trial
to its end before the test had looked at the driver). The driver itself keeps running: its
heartbeat, its lease and its signal handling work while its trials stand still."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from ray_processes import ray_processes

from rnnsweep.orchestrator import sweep_store


def workers(temp_root: str, prefix: bytes = b"ray::") -> list[int]:
    """The Ray worker processes (``ray::...``: the trials' actors) of the instance under
    ``temp_root``, those whose command line starts with ``prefix``."""
    found = []
    for pid in ray_processes(temp_root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().startswith(prefix):
                    found.append(pid)
        except OSError:
            continue
    return found


def send(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def freeze_when(
    proc: subprocess.Popen, temp_root: str, ready: Callable[[], bool], what: str
) -> list[int]:
    """Until ``ready()`` holds for the sweep of the driver ``proc`` (its Ray under
    ``temp_root``); returns the driver's Ray workers, stopped (SIGSTOP). The workers run 0.1 s
    at a time and are stopped while ``ready`` looks; the caller continues them
    (``send(pids, signal.SIGCONT)``) or kills them."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.1)
        pids = workers(temp_root)
        send(pids, signal.SIGSTOP)
        if proc.poll() is not None:
            send(pids, signal.SIGCONT)
            pytest.fail(f"the driver ended before {what}:\n{proc.stdout.read()}")
        if ready():
            return pids
        send(pids, signal.SIGCONT)
    pytest.fail(f"the sweep did not reach {what} in 300 s")


def trial_states(state_dir: str, name: str = "t") -> list[tuple[str, int]]:
    """``(state, checkpoint_step)`` of each trial once the sweep is created (the record is
    written first, marked ``creating``, before the study exists), else ``[]``."""
    if not os.path.exists(sweep_store.record_path(state_dir, name)):
        return []
    record = sweep_store.read_record(state_dir, name, creating=True)[1]
    if record.get("state") == "creating":
        return []
    trials = sweep_store.load_study(record).get_trials()
    return [(t.state.name, t.user_attrs.get("checkpoint_step", 0)) for t in trials]


def freeze_with_checkpointed_trials(
    proc: subprocess.Popen, state_dir: str, temp_root: str, trials: int = 2, name: str = "t"
) -> list[int]:
    """``freeze_when`` each of ``trials`` running trials of sweep ``name`` has a checkpoint."""

    def ready() -> bool:
        states = trial_states(state_dir, name)
        return sum(state == "RUNNING" and step > 0 for state, step in states) == trials

    return freeze_when(proc, temp_root, ready, f"{trials} checkpointed running trials")
