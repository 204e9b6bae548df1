"""A reader that leaves early (``rnnsweep settings | head -1``) ends the command quietly with
exit 141 (128 + SIGPIPE, as a shell reports a tool SIGPIPE killed), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_reader_that_leaves_early_gets_no_traceback():
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first write: every write fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rnnsweep.orchestrator.cli", "settings"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
