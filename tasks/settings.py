"""Checks of task settings: each returns the coerced value or raises ``ValueError`` naming
the task and the key (settings may come from YAML, so ints and floats are checked by value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def integer_setting(
    task: str, key: str, value: Any, low: int | None = None, high: int | None = None
) -> int:
    """An integer in ``[low, high]`` (a float with an integral value is accepted)."""
    ok = not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    )
    if ok:
        value = int(value)
        ok = (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = " and ".join(
            f"{op} {bound}" for op, bound in ((">=", low), ("<=", high)) if bound is not None
        )
        raise ValueError(
            f"{task}: setting {key!r} must be an integer{' ' + bounds if bounds else ''}, "
            f"got {value!r}"
        )
    return value


def real_setting(
    task: str,
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """A finite real in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if ok:
        value = float(value)
        ok = math.isfinite(value)
        if low is not None:
            ok = ok and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and value <= high
    if not ok:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            parts.append(f"<= {high}")
        bounds = " and ".join(parts)
        raise ValueError(
            f"{task}: setting {key!r} must be a finite number{' ' + bounds if bounds else ''}, "
            f"got {value!r}"
        )
    return value


def choice_setting(task: str, key: str, value: Any, options: Sequence[str]) -> str:
    """One of ``options``."""
    if value not in options:
        raise ValueError(
            f"{task}: setting {key!r} must be one of {', '.join(options)}, got {value!r}"
        )
    return value
