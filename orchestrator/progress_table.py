"""The live table of a sweep's trials: number, estimator, key parameters, progress, loss,
best so far and state. On a terminal it is redrawn in place about once a second; in a log,
one line is printed whenever a trial changes state."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class TrialRow:
    number: int
    estimator: str
    params: dict[str, Any]
    steps: int
    step: int = 0
    loss: float | None = None
    state: str = "RUNNING"
    note: str = ""


def _short(params: dict[str, Any], width: int = 34) -> str:
    parts = []
    for key, value in params.items():
        if key == "estimator":
            continue
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "~"


@dataclass
class ProgressTable:
    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    rows: dict[int, TrialRow] = field(default_factory=dict)
    best: float | None = None
    note: str = ""  # the waiting line, if any
    status: str = ""  # e.g. "tracking store unavailable, retrying (12 s): MLflow: ..."
    _last_draw: float = 0.0
    _lines: int = 0
    _status_printed: float = 0.0

    def __post_init__(self) -> None:
        self.tty = self.stream.isatty()

    def waiting(self, line: str) -> None:
        """A line above the table while trials wait (e.g. "waiting for resources: ..."); in
        a log, printed once each time it changes. ``""`` clears it."""
        if line == self.note:
            return
        self.note = line
        if line and not self.tty:
            self.stream.write(line + "\n")
            self.stream.flush()

    def update(self, row: TrialRow, changed_state: bool = False) -> None:
        self.rows[row.number] = row
        if changed_state and not self.tty:
            self.stream.write(self._line(row) + "\n")
            self.stream.flush()

    def store_status(self, text: str) -> None:
        """A line about the stores ("" while they are available): in the header on a
        terminal; in a log, when it starts, every 10 s while it lasts, and when it ends."""
        if not self.tty:
            now = time.monotonic()
            if text and (not self.status or now - self._status_printed >= 10.0):
                self.stream.write(text + "\n")
                self._status_printed = now
            elif not text and self.status:
                self.stream.write("tracking store available again\n")
            self.stream.flush()
        changed = text != self.status
        self.status = text
        if changed:
            self.draw(force=True)

    def _line(self, r: TrialRow) -> str:
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        best = f"{self.best:.4f}" if self.best is not None else "-"
        return (
            f"{r.number:>5} {r.estimator:<18} {_short(r.params):<34} {r.step:>9}/{r.steps:<9} "
            f"{loss:>8} {best:>8} {r.state:<9} {r.note}"
        )

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 1.0:
            return
        self._last_draw = now
        done = sum(r.state not in ("RUNNING", "RESTARTING", "QUEUED") for r in self.rows.values())
        status = f"  {self.status}" if self.status else ""
        header = (
            f"trials {done}/{self.total} finished{status}\n"
            + (f"{self.note}\n" if self.note else "")
            + f"{'trial':>5} {'estimator':<18} {'params':<34} {'step/total':>19} "
            f"{'loss':>8} {'best':>8} state"
        )
        rows = sorted(self.rows.values(), key=lambda r: r.number)[-30:]
        text = "\n".join([header] + [self._line(r) for r in rows])
        if self._lines:
            self.stream.write(f"\x1b[{self._lines}F\x1b[J")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._lines = text.count("\n") + 1
