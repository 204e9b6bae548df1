"""``rnnsweep ARGS`` as a process of its own (a driver a test signals, kills or stops), with
its Ray instance under a private temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rnnsweep_process(args: list[str], temp_root: str) -> subprocess.Popen:
    """Started in a new session (``os.killpg(proc.pid, ...)`` reaches all it starts), its Ray
    under ``temp_root`` (``RAY_TMPDIR``; never a cluster named by ``RAY_ADDRESS``), stdout and
    stderr merged into ``proc.stdout``."""
    env = {**os.environ, "RAY_TMPDIR": temp_root}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "rnnsweep.orchestrator.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
