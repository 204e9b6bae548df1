"""SIGTERM, what schedulers (Slurm, Kubernetes, systemd) and ``kill`` send, stops a sweep's
driver as Ctrl-C does: ``KeyboardInterrupt`` in the main thread, so that the runs end KILLED,
the lease is released and the resume command is printed."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM raise ``KeyboardInterrupt`` until the returned function is called (which
    puts the previous handler back). Call it after ``ray.init``, which installs its own
    SIGTERM handler (``sys.exit``). Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)
