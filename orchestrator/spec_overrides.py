"""``launch SPEC --set key=value``: dotted overrides of a sweep spec's keys.

``apply_overrides(data, ["trials=40", "search.lr.high=1e-2"])`` returns a copy of the spec
``data`` (as read from YAML) with each key path set. A path's keys are checked against the
spec's schema (``spec_models``) as they are walked: an unknown key gets a did-you-mean and
names the ``--set`` it came from. The keys under ``fixed``, ``task_settings`` and
``search.<key>`` are the settings table's and are checked, with the values, when the result is
validated as a whole (``spec.load_spec_dict``). Values are YAML (``1e-2`` is a number, ``[uoro,
rtrl]`` a list, ``null`` removes the key)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import yaml

from rnnsweep.algorithms.settings import did_you_mean
from rnnsweep.orchestrator import spec_models
from rnnsweep.orchestrator.spec_file import SpecError

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# Sections whose keys are settings (checked by spec.py against the task and estimators).
_FREE_SECTIONS = ("fixed", "task_settings", "search")


class OverrideError(SpecError):
    """A ``--set`` that names no key of the spec, or is not ``key=value``."""


def parse_value(text: str) -> Any:
    """``"1e-2"`` -> ``0.01``, ``"[uoro, rtrl]"`` -> a list, ``"tpe"`` -> ``"tpe"``: YAML, with
    numbers in exponent form read as numbers (YAML 1.1 reads ``1e-2`` as a string)."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _known(path: tuple[str, ...]) -> tuple[str, ...] | None:
    """The keys allowed under ``path`` (``None``: any key, checked later by ``spec.py``)."""
    if path and path[0] in _FREE_SECTIONS and not (path[0] == "search" and len(path) == 2):
        return None
    return spec_models._known(path) or None


def _section_text(path: tuple[str, ...]) -> str:
    return "at top level" if not path else f"in {'.'.join(path)}"


def apply_overrides(data: Mapping[str, Any], pairs: list[str]) -> dict[str, Any]:
    """``data`` with every ``KEY.PATH=VALUE`` of ``pairs`` set, in order (a later one wins);
    ``OverrideError`` naming the first ``--set`` whose key the schema does not know."""
    out = copy.deepcopy(dict(data))
    for pair in pairs:
        key, sep, text = pair.partition("=")
        parts = tuple(part.strip() for part in key.split("."))
        if not sep or not all(parts):
            raise OverrideError(
                f"--set expects KEY=VALUE (KEY dotted: search.lr.high), got {pair!r}"
            )
        node: dict[str, Any] = out
        for depth, part in enumerate(parts):
            here = parts[:depth]
            known = _known(here)
            if known is not None and part not in known:
                hint = did_you_mean(part, known) or f" (known: {', '.join(known)})"
                raise OverrideError(
                    f"--set {pair}: unknown key {part!r} {_section_text(here)}{hint}",
                    ".".join(parts),
                )
            if depth == len(parts) - 1:
                break
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise OverrideError(
                    f"--set {pair}: {'.'.join(parts[: depth + 1])} is "
                    f"{spec_models.describe(child)}, not a mapping",
                    ".".join(parts),
                )
            node = child
        value = parse_value(text)
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


def overrides_text(pairs: list[str]) -> str:
    """One line for ``--dry-run``: the overrides applied, as given."""
    return "overrides (--set): " + ", ".join(pairs)


def blame(error: SpecError, pairs: list[str]) -> SpecError:
    """``error`` (the spec with overrides failed to validate) naming the ``--set`` it concerns:
    the last one at its key path, else at a sibling key (``search.lr.high`` made
    ``search.lr.low`` wrong), else all of them."""
    at = error.key or ""
    keys = [(pair, pair.partition("=")[0].strip()) for pair in reversed(pairs)]
    for pair, key in keys:
        if at and (at == key or at.startswith((key + ".", key + "[")) or key.startswith(at + ".")):
            return SpecError(f"--set {pair}: {error}", error.key)
    for pair, key in keys:
        if at and "." in key and key.rpartition(".")[0] == at.rpartition(".")[0]:
            return SpecError(f"--set {pair}: {error}", error.key)
    return SpecError(f"{error} (with --set {', '.join(pairs)})", error.key)
