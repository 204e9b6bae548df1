"""The machine a benchmark ran on, printed beside its ratios."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict[str, object]:
    """``{"cpu", "cores", "threads"}``: the CPU model, its core count and the threads used."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads}
