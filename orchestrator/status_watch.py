"""``rnnsweep status --watch``: the status redrawn every few seconds until the sweep is
finished. On a terminal the screen is cleared and redrawn in place; in a log (not a terminal)
each refresh prints a new block, under a line with the time; with ``--json``, one JSON object
per line. Ctrl-C ends it with exit 0."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def watch(
    render: Callable[[], tuple[str, bool]],
    interval: float,
    stream: TextIO | None = None,
    json_lines: bool = False,
) -> int:
    """Print ``render()``'s text every ``interval`` seconds until it says the sweep is
    finished (its second item) or Ctrl-C; returns the exit status, 0. ``json_lines``: the
    text is one JSON object, printed alone on its line each time (for ``jq``)."""
    stream = stream or sys.stdout
    tty = stream.isatty() and not json_lines
    try:
        while True:
            text, finished = render()
            stamp = time.strftime("%H:%M:%S")
            end = "sweep finished" if finished else f"every {interval:g} s, Ctrl-C stops"
            if json_lines:
                stream.write(text + "\n")
            elif tty:
                stream.write(f"\x1b[H\x1b[J-- {stamp} ({end})\n{text}\n")  # as watch(1)
            else:
                stream.write(f"-- {stamp} ({end})\n{text}\n\n")
            stream.flush()
            if finished:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        stream.write("\n")
        return 0
