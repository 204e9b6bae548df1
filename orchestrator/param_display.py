"""How the live table and ``rnnsweep status`` show trials' parameters: the keys whose values
differ between trials first (what the search varies), then those all trials share, each
value in full (floats as Python's shortest exact repr) or, in a narrow column, to 3 digits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HIDDEN = ("estimator", "log_every")  # a column of its own; the same for every trial


def key_order(all_params: Iterable[dict[str, Any]]) -> list[str]:
    """Every key of ``all_params`` (one dict per trial): those whose value differs between
    the trials, or that some trials lack, first; then the shared ones; each group in order of
    first appearance. With fewer than two trials nothing differs."""
    seen: dict[str, list[Any]] = {}
    count = 0
    for params in all_params:
        count += 1
        for key, value in params.items():
            if key not in HIDDEN:
                seen.setdefault(key, []).append(value)
    differs = [
        k
        for k, values in seen.items()
        if len(values) < count or any(v != values[0] for v in values)
    ]
    return differs + [k for k in seen if k not in differs]


def format_params(params: dict[str, Any], order: list[str], full: bool = True) -> str:
    """``key=value`` pairs of ``params`` in ``order`` (then any key ``order`` lacks);
    ``full``: exact values, else floats to 3 significant digits."""
    keys = [k for k in order if k in params] + [
        k for k in params if k not in order and k not in HIDDEN
    ]
    parts = []
    for key in keys:
        value = params[key]
        if isinstance(value, float) and not full:
            parts.append(f"{key}={value:.3g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)
