"""The entry type of the settings table, and checks of task settings.

A ``Setting`` declares one key once: name, type, default, bounds or choices, the estimators it
applies to, a one-line doc, and whether members of one pack may differ in it. The learner,
optimizer, estimator, Kalman, probe and run keys are declared in
``rnnsweep.algorithms.settings``, each task's keys by the task itself (``tasks/`` imports nothing
of ``algorithms/``, so the type lives here), the sweep-level keys in
``rnnsweep.orchestrator.sweep_settings``. ``Setting.check`` coerces a value (YAML gives
``3.0`` for an integer written ``3.0``) or raises ``ValueError`` naming the key.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}


@dataclass(frozen=True)
class Setting:
    """One key of the settings table.

    ``default`` ``None`` with ``nullable`` False means "derived" (``derived`` says how);
    ``estimators`` ``None``: every estimator; ``group`` fixes the optimizers a key applies to
    (``gradient``: sgd and adam, ``adam``: adam, ``kalman``: the filter) and its scope
    (``task:NAME``, ``sweep``, ``run`` for the ``LearnerSpec`` fields); ``per_member`` ``None``:
    one value per sweep (not a member's). ``sweep_default`` is set where a sweep's default
    differs from ``rnnsweep run``'s, ``why`` says why. ``resume_safe``: ``run --resume CK --set``
    may change it mid-run (the state a checkpoint holds does not depend on it).
    """

    name: str
    type: type
    default: Any
    doc: str
    group: str = "learner"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    estimators: tuple[str, ...] | None = None
    per_member: bool | None = False
    derived: str = ""
    sweep_default: Any = None
    why: str = ""
    resume_safe: bool = False

    # -- description --------------------------------------------------------------------------

    @property
    def type_name(self) -> str:
        name = "path" if self.group.startswith("task") and self.nullable else None
        return name or TYPE_NAMES[self.type]

    def bounds_text(self) -> str:
        """``>= 1``, ``in [0, 1)``, ``one of a, b``, or ``""`` (unbounded)."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        low = high = ""
        if self.low is not None:
            low = f"{'>' if self.low_open else '>='} {_bound(self.low)}"
        if self.high is not None:
            high = f"{'<' if self.high_open else '<='} {_bound(self.high)}"
        if low and high:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{_bound(self.low)}, {_bound(self.high)}{right}"
        return low or high or ""

    def requirement(self) -> str:
        """What a valid value is, e.g. ``an integer >= 1`` or ``a finite number in [0, 1)``."""
        if self.choices:
            return self.bounds_text()
        kind = {
            int: "an integer",
            float: "a finite number",
            bool: "true or false",
            str: "a file path or null" if self.nullable else "a string",
        }[self.type]
        bounds = self.bounds_text()
        return f"{kind} {bounds}" if bounds else kind

    def default_text(self) -> str:
        if self.default is None and not self.nullable:
            return self.derived or "-"
        return _num(self.default) if self.default is not None else "null"

    # -- checking -----------------------------------------------------------------------------

    def problem(self, value: Any) -> str | None:
        """``None`` when ``value`` is valid, else what it must be: the type and bounds for a
        value of the wrong type, the bounds alone for one out of them."""
        if value is None and (self.nullable or self.default is None):
            return None
        if self.choices:
            if value in self.choices:
                return None
            if not isinstance(value, str):
                return self.requirement()
            return self.requirement() + did_you_mean(value, [str(c) for c in self.choices])
        if not self._type_ok(value):
            return self.requirement()
        if self.type in (int, float):
            v = float(value)
            bad_low = self.low is not None and (v <= self.low if self.low_open else v < self.low)
            bad_high = self.high is not None and (
                v >= self.high if self.high_open else v > self.high
            )
            if bad_low or bad_high:
                return self.bounds_text()
        return None

    def check(self, value: Any, prefix: str = "") -> Any:
        """``value`` coerced to the key's type; ``ValueError`` naming the key otherwise."""
        problem = self.problem(value)
        if problem:
            raise ValueError(f"{prefix}setting {self.name!r} must be {problem}, got {value!r}")
        return self.coerce(value)

    def coerce(self, value: Any) -> Any:
        if value is None:
            return None
        if self.type is int:
            return int(value)
        if self.type is float:
            return float(value)
        if self.type is str and self.nullable:
            return os.fspath(value)
        return value

    def _type_ok(self, value: Any) -> bool:
        if self.type is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.type is int:
            return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if self.type is float:
            return isinstance(value, int | float) and math.isfinite(value)
        if self.nullable:
            return isinstance(value, str | os.PathLike)
        return isinstance(value, str)

    def to_dict(self) -> dict[str, Any]:
        """A plain (JSON-able) row: what ``rnnsweep settings --json`` prints."""
        return {
            "name": self.name,
            "type": self.type_name,
            "default": self.default,
            "derived": self.derived or None,
            "bounds": self.bounds_text() or None,
            "group": self.group,
            "applies_to": list(self.estimators) if self.estimators is not None else "all",
            "pack": {True: "per-member", False: "pack-shared", None: "per sweep"}[self.per_member],
            "doc": self.doc,
            **({"sweep_default": self.sweep_default, "why": self.why} if self.why else {}),
        }


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """`` (did you mean 'lr'?)`` for the closest option, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _bound(value: float) -> str:
    """``0.001``, ``1e-08``; an integer bound in full (``4294967295``, not ``4.29497e+09``)."""
    if isinstance(value, int):
        return str(value)
    return f"{value:g}"


def _num(value: Any) -> str:
    """``1e-08``, ``0.001``, ``1.0``: floats stay recognisable as floats."""
    if isinstance(value, float):
        text = f"{value:g}"
        return text if any(c in text for c in ".ein") else text + ".0"
    return str(value)


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
