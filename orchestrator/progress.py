"""A live progress line for long work: bar, step/total, loss, rate, ETA.

On a terminal the line is redrawn in place; otherwise (logs, CI) one line is printed each time
another tenth of the work is done, so that logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLine:
    def __init__(self, total: int, label: str = "", stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.start_step: int | None = None
        self.last_tenth = -1

    def update(self, step: int, **fields: float | str) -> None:
        if self.start_step is None:
            self.start_step = step
            self.start = time.monotonic()
        done = step / self.total if self.total else 1.0
        elapsed = time.monotonic() - self.start
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        if step >= self.total:
            eta = 0.0  # done, however fast (a first report at the end has no rate yet)
        else:
            eta = (self.total - step) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * min(1.0, done))
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()]
        line = (
            f"{self.label}[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
            f"{100 * done:3.0f}%  {'  '.join(parts)}  ETA {format_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
        elif int(10 * done) > self.last_tenth:
            self.last_tenth = int(10 * done)
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
