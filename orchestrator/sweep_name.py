"""The rules of a sweep's name, checked wherever a name enters: the spec (``name``, ``launch
--name``) and every command taking NAME (through ``sweep_store.record_path``).

A name becomes a file name (``DIR/sweeps/NAME.json``, ``DIR/checkpoints/NAME/``), an Optuna
study name and an MLflow experiment name: at most ``MAX_LENGTH`` characters, letters, digits,
``-``, ``_`` and ``.`` only, and neither ``.`` nor ``..`` (which name folders, not files).
"""

from __future__ import annotations

import re

MAX_LENGTH = 100
PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


def problem(name: object) -> str:
    """What is wrong with ``name`` (``""`` if nothing), in one short line: the value is cut,
    so that a 5000-character name does not fill the terminal."""
    if not isinstance(name, str) or not name:
        return f"must be a non-empty string, got {_shown(name)}"
    if len(name) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters, got {len(name)}: {_shown(name)}"
    if not PATTERN.fullmatch(name):
        return f"must use letters, digits, '-', '_' and '.' only, got {_shown(name)}"
    if name in (".", ".."):
        return f"must not be {name!r}"
    return ""


def check(name: object) -> str:
    """``name`` if it is a valid sweep name; ``ValueError`` naming the problem otherwise."""
    wrong = problem(name)
    if wrong:
        raise ValueError(f"sweep name {wrong}")
    return name  # type: ignore[return-value]


def _shown(value: object, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"
