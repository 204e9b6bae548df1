"""The live table of a sweep's trials: number, estimator, parameters (those that differ
between trials first), progress, loss, objective, wall time, steps/s, ETA and state, under a
header with the finished count, the best objective and the sweep's ETA (``sweep_eta``). On a
terminal it is redrawn in place about once a second; in a log, one line is printed whenever a
trial changes state (parameters in full), and the header line every 30 s and at the end.

After a resume the table is first seeded with the trials earlier drivers finished
(``row_from_trial``), so that its counts and best are the sweep's, not this process's."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from rnnsweep.orchestrator.param_display import format_params, key_order
from rnnsweep.orchestrator.progress import format_duration
from rnnsweep.orchestrator.sweep_eta import Remaining, sweep_eta, trial_eta

ENDED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class TrialRow:
    """One trial's line. Times are ``time.monotonic()`` seconds of this driver;
    ``wall_before`` is what earlier drivers ran it for, ``rate_before`` their last rate."""

    number: int
    estimator: str
    params: dict[str, Any]
    steps: int
    step: int = 0
    loss: float | None = None
    state: str = "RUNNING"
    note: str = ""
    value: float | None = None  # the objective, once COMPLETE
    wall_before: float = 0.0
    rate_before: float | None = None
    started: float | None = None  # first RUNNING in this driver
    start_step: int = 0
    ended: float | None = None
    continues: int | None = None  # the trial it continues (extend --steps): that row leaves

    def start(self, now: float) -> None:
        if self.started is None:
            self.started, self.start_step = now, self.step

    def end(self, now: float) -> None:
        if self.ended is None:
            self.ended = now

    def wall(self, now: float) -> float:
        """Seconds it has run, in every driver."""
        if self.started is None:
            return self.wall_before
        return self.wall_before + ((self.ended or now) - self.started)

    def rate(self, now: float) -> float | None:
        """Steps per wall-clock second since it started in this driver (else as recorded)."""
        if self.started is not None:
            seconds = (self.ended or now) - self.started
            if self.step > self.start_step and seconds > 0:
                return (self.step - self.start_step) / seconds
        return self.rate_before

    def eta(self, now: float) -> float | None:
        if self.state in ENDED:
            return 0.0
        return trial_eta(self.steps - self.step, self.rate(now))

    def timing(self, now: float) -> dict[str, Any]:
        """What the stores record as its ``timing`` attr (``status`` reads it): seconds run,
        steps/s, and when (Unix time)."""
        return {"wall_s": self.wall(now), "steps_per_sec": self.rate(now), "at": time.time()}


def row_from_trial(trial: Any, steps: int) -> TrialRow:
    """A row for an Optuna trial (``FrozenTrial``) an earlier driver finished."""
    attrs = trial.user_attrs
    timing = attrs.get("timing") or {}
    done = attrs.get("steps_done")
    if done is None:
        done = max(trial.intermediate_values, default=0)
    last = trial.intermediate_values.get(max(trial.intermediate_values, default=-1))
    reason = attrs.get("fail_reason") or attrs.get("reason") or ""
    return TrialRow(
        trial.number,
        attrs.get("estimator") or trial.params.get("estimator") or "?",
        dict(attrs.get("settings", trial.params)),
        steps,
        step=done,
        loss=last,
        state=trial.state.name,
        note=reason[:60],
        value=trial.value if trial.state.name == "COMPLETE" else None,
        wall_before=timing.get("wall_s", 0.0),
        rate_before=timing.get("steps_per_sec"),
        continues=attrs.get("continues"),
    )


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


@dataclass
class ProgressTable:
    """``total`` trials of ``steps`` each; ``objective``: the spec's (metric, direction);
    ``slots``: trials that run at once (workers × pack), for the sweep's ETA."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    objective: tuple[str, str] = ("objective", "minimize")
    slots: int = 1
    steps: int = 0
    rows: dict[int, TrialRow] = field(default_factory=dict)
    best: float | None = None
    best_trial: int | None = None
    note: str = ""  # the waiting line, if any
    status: str = ""  # e.g. "tracking store unavailable, retrying (12 s): MLflow: ..."
    _last_draw: float = 0.0
    _lines: int = 0
    _status_printed: float = 0.0
    _header_printed: float = 0.0

    def __post_init__(self) -> None:
        self.tty = self.stream.isatty()

    def seed(self, rows: list[TrialRow]) -> None:
        """The trials earlier drivers finished (on resume): counted and in the best, and in a
        log summed up in one header line."""
        for row in rows:
            self._keep(row)
        if rows and not self.tty:
            self._print_header()

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
        now = time.monotonic()
        if row.state == "RUNNING":
            row.start(now)
        elif row.state in ENDED:
            row.end(now)
        self._keep(row)
        if changed_state and not self.tty:
            self.stream.write(self._log_line(row) + "\n")
            self.stream.flush()

    def _keep(self, row: TrialRow) -> None:
        self.rows[row.number] = row
        if row.continues is not None and self.rows.pop(row.continues, None) is not None:
            # its continuation stands for it (as in `status`): counted once, best recomputed
            self.best = self.best_trial = None
            for kept in self.rows.values():
                self._take_best(kept)
        self._take_best(row)

    def _take_best(self, row: TrialRow) -> None:
        if row.state == "COMPLETE" and row.value is not None:
            best = self.best
            if best is None or (row.value < best if self.minimize else row.value > best):
                self.best, self.best_trial = row.value, row.number

    @property
    def minimize(self) -> bool:
        return self.objective[1] == "minimize"

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

    def finished(self) -> int:
        return sum(r.state in ENDED for r in self.rows.values())

    def eta(self, now: float) -> float | None:
        """The sweep's ETA in seconds (``sweep_eta``'s rule); ``None`` while unknown."""
        left = [  # the ended ones with 0 steps left: their rates count
            Remaining(
                0 if r.state in ENDED else r.steps - r.step,
                r.rate(now),
                r.estimator,
                r.state == "RUNNING",
            )
            for r in self.rows.values()
        ]
        left += [Remaining(self.steps)] * max(0, self.total - len(self.rows))
        return sweep_eta(left, self.slots)

    def header(self, now: float) -> str:
        """``trials 2/4 finished · best final_loss (minimize) 0.1234, trial 1 · sweep ETA
        1:05``."""
        metric, direction = self.objective
        best = (
            f"{self.best:.4f}, trial {self.best_trial}" if self.best is not None else "none yet"
        )
        status = f"  {self.status}" if self.status else ""
        return (
            f"trials {self.finished()}/{self.total} finished · best {metric} ({direction}) "
            f"{best} · sweep ETA {_duration(self.eta(now))}{status}"
        )

    def _print_header(self) -> None:
        self._header_printed = time.monotonic()
        self.stream.write(self.header(self._header_printed) + "\n")
        self.stream.flush()

    def _order(self) -> list[str]:
        return key_order(r.params for r in self.rows.values())

    def _log_line(self, r: TrialRow) -> str:
        """A trial's line in a log, labelled, its parameters in full (differing first)."""
        now = time.monotonic()
        rate = r.rate(now)
        parts = [
            f"trial {r.number} {r.estimator} {r.state}",
            f"step {r.step}/{r.steps}",
            f"loss {r.loss:.4f}" if r.loss is not None else "",
            f"{self.objective[0]} {r.value:.4f}" if r.value is not None else "",
            f"wall {format_duration(r.wall(now))}" if r.started or r.wall_before else "",
            f"{rate:.1f} steps/s" if rate else "",
            f"ETA {format_duration(r.eta(now))}" if r.eta(now) is not None else "",
            format_params(r.params, self._order()),
            f"({r.note})" if r.note else "",
        ]
        return "  ".join(p for p in parts if p)

    def _line(self, r: TrialRow, order: list[str]) -> str:
        now = time.monotonic()
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        value = f"{r.value:.4f}" if r.value is not None else "-"
        mark = "*" if r.number == self.best_trial else " "
        rate = r.rate(now)
        params = format_params(r.params, order, full=False)
        if len(params) > 40:
            params = params[:39] + "…"  # the differing keys come first: the rest is cut
        return (
            f"{r.number:>5} {r.estimator:<18} {params:<40} {r.step:>9}/{r.steps:<9} "
            f"{loss:>8} {value:>10}{mark} {_duration(r.wall(now)):>8} "
            f"{f'{rate:.1f}' if rate else '-':>8} {_duration(r.eta(now)):>8} {r.state:<9} "
            f"{r.note}"
        ).rstrip()

    def draw(self, force: bool = False) -> None:
        """Redraw on a terminal (at most once a second unless ``force``); in a log, the
        header line every 30 s, and when ``force``d."""
        now = time.monotonic()
        if not self.tty:
            if force or now - self._header_printed >= 30.0:
                self._print_header()
            return
        if not force and now - self._last_draw < 1.0:
            return
        self._last_draw = now
        head = (
            f"{self.header(now)}\n"
            + (f"{self.note}\n" if self.note else "")
            + f"{'trial':>5} {'estimator':<18} {'params':<40} {'step':>9}/{'total':<9} "
            f"{'loss':>8} {self.objective[0][:10]:>10}  {'wall':>8} {'steps/s':>8} {'ETA':>8} "
            "state"
        )
        order = self._order()
        rows = sorted(self.rows.values(), key=lambda r: r.number)[-30:]
        text = "\n".join([head] + [self._line(r, order) for r in rows])
        if self._lines:
            self.stream.write(f"\x1b[{self._lines}F\x1b[J")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._lines = text.count("\n") + 1
