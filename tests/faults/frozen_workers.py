"""A driver subprocess's Ray workers stopped (SIGSTOP) while a test acts on the running sweep:
no trial can step, let alone end, however fast the machine steps (CI's ran a 40000-step trial
to its end before the test had looked at the driver). The driver itself keeps running: its
heartbeat, its lease and its signal handling work while its trials stand still."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import record_checks
from ray_processes import ray_processes

from rnnsweep.orchestrator import sweep_store


def workers(temp_root: str) -> list[int]:
    """The Ray worker processes (``ray::...``: the trials' actors) of the instance under
    ``temp_root``."""
    found = []
    for pid in ray_processes(temp_root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().startswith(b"ray::"):
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


def freeze_with_checkpointed_trials(
    proc: subprocess.Popen, state_dir: str, temp_root: str, trials: int = 2, name: str = "t"
) -> list[int]:
    """Until the driver ``proc`` has recorded a checkpoint of each of its ``trials`` running
    trials of sweep ``name``; returns the driver's Ray workers, stopped (SIGSTOP). The workers
    run 0.1 s at a time and are stopped while the study is read; the caller continues them
    (``send(pids, signal.SIGCONT)``) or kills them."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.1)
        pids = workers(temp_root)
        send(pids, signal.SIGSTOP)
        if proc.poll() is not None:
            send(pids, signal.SIGCONT)
            pytest.fail(f"the driver ended first:\n{proc.stdout.read()}")
        record = record_checks.created_record(state_dir, name)
        if record is not None:
            study = sweep_store.load_study(record)
            checkpointed = [
                t
                for t in study.get_trials()
                if t.state.name == "RUNNING" and t.user_attrs.get("checkpoint_step", 0) > 0
            ]
            if len(checkpointed) == trials:
                return pids
        send(pids, signal.SIGCONT)
    pytest.fail(f"{trials} trials were not all checkpointed in 300 s")
