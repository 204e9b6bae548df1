"""A subprocess a test talks to while it runs (``rnnsweep ui``, ``status --watch``, a driver,
a Ray cluster script): its stdout is read line by line by a thread into a queue, its stderr
collected by another (or merged into stdout), so that every wait on it has a deadline and a
failure can show what the process printed."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from typing import Any

_END = None  # put on the queue once stdout is closed


class ServedProcess:
    """``subprocess.Popen(args, text=True, **popen)`` with stdout (and stderr, unless
    ``merge_stderr``) piped and read by threads. ``stdin=subprocess.PIPE`` may be passed for
    a process that takes commands. Use as a context manager: ``close`` on exit."""

    def __init__(self, args: list[str], *, merge_stderr: bool = False, **popen: Any) -> None:
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            text=True,
            **popen,
        )
        self.lines: list[str] = []  # every stdout line read so far
        self._errors: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True)]
        if not merge_stderr:
            self._readers.append(threading.Thread(target=self._read_stderr, daemon=True))
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(_END)

    def _read_stderr(self) -> None:
        self._errors.extend(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """What the process printed so far: stdout, then stderr (when kept apart)."""
        text = "".join(self.lines)
        return f"{text}\nstderr:\n{self.stderr()}" if self._readers[1:] else text

    def stderr(self) -> str:
        return "".join(self._errors)

    def next_line(self, seconds: float, what: str = "a line") -> str:
        """The next stdout line not yet taken, without its newline; ``AssertionError`` (with
        the output) if none comes within ``seconds`` or stdout ends first."""
        try:
            line = self._queue.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(
                f"{self._name()} printed no {what} within {seconds:g} s:\n{self.output()}"
            ) from None
        if line is _END:
            self._queue.put(_END)  # a later call sees the end too
            raise AssertionError(
                f"{self._name()} ended (exit {self.proc.wait()}) before {what}:\n{self.output()}"
            )
        return line.rstrip("\r\n")

    def wait_for(self, text: str, seconds: float) -> str:
        """The next stdout line containing ``text`` (lines before it are taken)."""
        deadline = time.monotonic() + seconds
        while True:
            line = self.next_line(max(0.0, deadline - time.monotonic()), f"a line with {text!r}")
            if text in line:
                return line

    def stop(self, signum: int = signal.SIGINT, seconds: float = 120) -> int:
        """Send ``signum`` (SIGINT: Ctrl-C) and wait up to ``seconds`` for the exit code."""
        self.proc.send_signal(signum)
        return self.wait(seconds)

    def wait(self, seconds: float) -> int:
        """The exit code; stdout and stderr are read to their end meanwhile (a child that
        kept them open is waited for 10 s at most)."""
        code = self.proc.wait(timeout=seconds)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def close(self) -> None:
        """Kill the process (its group, when it leads one) if it still runs, and reap it."""
        if self.proc.poll() is None:
            try:
                if os.getpgid(self.proc.pid) == self.proc.pid:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=60)

    def _name(self) -> str:
        return f"`{' '.join(self.proc.args[-6:])}`"

    def __enter__(self) -> ServedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
