"""``rnnsweep settings``: the settings table, as text or JSON.

Rows come from the three declarations of the table: ``rnnsweep.algorithms.settings.TABLE``
(run, learner, optimizer, Kalman, probe and estimator keys), each task's declared settings,
and ``rnnsweep.orchestrator.sweep_settings.SWEEP_TABLE``. Text: one line per key
(name, type, default, bounds or choices, where it applies, per-member or pack-shared), its doc
on the next, then the defaults a task documents for it (``TASK_DEFAULTS``); ``--json``: a
list of ``Setting.to_dict()`` rows (with ``by_task`` where a task sets the key).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from rnnsweep.algorithms.settings import (
    RULES,
    SETTINGS,
    TABLE,
    applies,
    default_optimizer,
    did_you_mean,
    task_default_text,
    unknown_estimator,
    where,
)
from rnnsweep.orchestrator.sweep_settings import SWEEP_TABLE
from rnnsweep.tasks.registry import task_names, task_setting_entries
from rnnsweep.tasks.settings import Setting

SECTIONS = (
    ("run", "run (flags of `rnnsweep run`; top-level keys of a sweep)"),
    ("optimizer", "learner"),
    ("learner", None),
    ("gradient", "gradient steps (sgd, adam)"),
    ("adam", "adam"),
    ("kalman", "Kalman filter (the *-kalman rules, or optimizer kalman)"),
    ("probe", "probe (a sweep's probe section: probe.every, ...)"),
    ("estimator", "estimator hyperparameters"),
)
USAGE = """\
Settings reach a learner through `rnnsweep run --set KEY=VALUE` (run keys: their own flags)
or a sweep spec (`fixed:`, `search:`, `task_settings:`, `probe:`, and the top-level keys).
A per-member key may differ between trials stepped together in one pack (`pack: N`); a
pack-shared one splits them into different packs."""


def entries(task: str | None = None) -> list[Setting]:
    """Every row of the table (only ``task``'s settings when a task is named)."""
    tasks = [task] if task else task_names()
    rows = list(TABLE)
    for name in tasks:
        rows += task_setting_entries(name)
    return rows + list(SWEEP_TABLE)


def select(
    rows: list[Setting], keys: list[str], estimator: str | None, optimizer: str | None
) -> list[Setting]:
    """The rows named by ``keys`` (all when none), that apply to ``estimator``/``optimizer``."""
    if keys:
        known = {row.name for row in rows}
        for key in keys:
            if key not in known:
                raise ValueError(f"unknown setting {key!r}{did_you_mean(key, sorted(known))}")
        rows = [row for row in rows if row.name in keys]
    if estimator:
        opt = optimizer or default_optimizer(estimator)
        rows = [
            row
            for row in rows
            if row.group in ("run", "sweep")
            or row.group.startswith("task:")
            or applies(row, estimator, opt)
        ]
    return rows


def row_text(row: Setting, width: int) -> str:
    applies_to = "applies " + where(row) if row.group not in ("run", "sweep") else ""
    if row.group.startswith("task:"):
        applies_to = f"task {row.group.partition(':')[2]}"
    pack = {True: "per-member", False: "pack-shared", None: "per sweep"}[row.per_member]
    head = f"{row.name:<{width}} {row.type_name:<5} default {row.default_text()}"
    facts = "; ".join(part for part in (row.bounds_text() or "any", applies_to, pack) if part)
    indent = {"initial_indent": "    ", "subsequent_indent": "    "}
    lines = [head, *textwrap.wrap(facts, 92, **indent), *textwrap.wrap(row.doc, 92, **indent)]
    if row.why:
        lines += textwrap.wrap(f"sweep default {row.sweep_default}: {row.why}", 92, **indent)
    by_task = task_default_text(row.name) if row.group not in ("run", "sweep") else ""
    if by_task:
        lines += textwrap.wrap(f"default by task: {by_task}", 92, **indent)
    return "\n".join(lines)


def settings_text(rows: list[Setting]) -> str:
    """The rows grouped by section (run, learner, ..., each task, sweep)."""
    out = [USAGE]
    titles = dict(SECTIONS)
    groups: dict[str, list[Setting]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(row)
    current = None
    width = max((len(row.name) for row in rows), default=0)  # one column for every section
    for group, members in groups.items():
        title = titles.get(group, group)
        if group.startswith("task:"):
            title = f"task {group.partition(':')[2]} (task_settings: in a sweep)"
        elif group == "sweep":
            title = "sweep (spec keys; dotted names are nested)"
        if title is not None and title != current:
            out += ["", f"== {title}"]
            current = title
        out += [row_text(row, width) for row in members]
    return "\n".join(out)


def json_row(row: Setting) -> dict[str, Any]:
    """``Setting.to_dict()``, with ``by_task`` (the ``TASK_DEFAULTS`` text) where a task sets
    the key."""
    by_task = task_default_text(row.name) if row.group not in ("run", "sweep") else ""
    return {**row.to_dict(), **({"by_task": by_task} if by_task else {})}


def settings_command(args: Any) -> int:
    if args.estimator and args.estimator not in RULES:
        raise ValueError(f"--estimator: {unknown_estimator(args.estimator)}")
    if args.optimizer:
        SETTINGS["optimizer"].check(args.optimizer, "--optimizer: ")
    rows = select(entries(args.task), args.keys, args.estimator, args.optimizer)
    if args.json:
        print(json.dumps([json_row(row) for row in rows], indent=2))
    else:
        print(settings_text(rows))
    return 0
