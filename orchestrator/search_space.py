"""The parameter sets of a finite search space, so that a sweep never tries one twice.

A space is finite when every key a trial can be given is categorical or an integer (the
estimator itself is a categorical). ``parameter_sets`` lists its sets by walking ``suggest``
down every branch, so conditional keys (per estimator, per optimizer) count exactly as a trial
gets them. Such a space is searched without repeats (``stores.SweepStores.ask``): each new
trial takes a set not tried yet, drawn with the sweep's seed; the sampler is bypassed there,
because over a handful of discrete sets it mostly proposes sets already tried. Once every set
is tried the driver says so ("search space exhausted after N trials") and the trials left
repeat the sets, fewest-tried first, each under its own seed (seed replicates).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# Larger spaces are left to the sampler (a repeat is then unlikely and its listing costly).
LIMIT = 100_000


def key(params: dict[str, Any]) -> str:
    """A parameter set as one comparable string (as ``tests/faults/record_checks`` does)."""
    return json.dumps(params, sort_keys=True, default=str)


class _Branch(Exception):
    def __init__(self, count: int) -> None:
        self.count = count


class _Infinite(Exception):
    pass


class _Walker:
    """A stand-in for an Optuna trial: answers the first suggestions from ``path`` (an index
    per suggestion) and stops with ``_Branch`` at the first one past it."""

    def __init__(self, path: tuple[int, ...]) -> None:
        self.path, self.params = path, {}

    def _pick(self, name: str, count: int, value: Callable[[int], Any]) -> Any:
        depth = len(self.params)
        if depth == len(self.path):
            raise _Branch(count)
        self.params[name] = value(self.path[depth])
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices = list(choices)
        return self._pick(name, len(choices), choices.__getitem__)

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        count = (high - low) // step + 1
        if count > LIMIT:
            raise _Infinite
        return self._pick(name, count, lambda i: low + i * step)

    def suggest_float(self, *args: Any, **kwargs: Any) -> float:
        raise _Infinite


def parameter_sets(spec: Any) -> list[dict[str, Any]] | None:
    """Every parameter set a trial of ``spec`` (a ``SweepSpec``) can get, as Optuna records
    them (``trial.params``); ``None`` if the space is not finite or has over ``LIMIT``."""
    from rnnsweep.orchestrator.spec import suggest

    found: list[dict[str, Any]] = []
    paths: list[tuple[int, ...]] = [()]
    while paths:
        path = paths.pop()
        walker = _Walker(path)
        try:
            suggest(spec, walker)  # type: ignore[arg-type]
        except _Branch as branch:
            paths.extend(path + (i,) for i in reversed(range(branch.count)))
        except _Infinite:
            return None
        else:
            found.append(walker.params)
        if len(found) + len(paths) > LIMIT:
            return None
    return found
