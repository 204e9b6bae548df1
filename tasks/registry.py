"""The task registry: ``make_task(name, **settings)`` and ``task_names()``.

Each task module registers a factory together with its settings, declared once as
``Setting`` entries (type, default, bounds, doc). ``make_task`` refuses unknown keys and
values outside an entry's type or bounds, fills in the defaults and calls the factory with
every key; the factory checks what involves several keys (``max_n >= min_n``). Errors are
``ValueError`` naming the task and the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rnnsweep.tasks.settings import Setting
from rnnsweep.tasks.task import Task

TaskFactory = Callable[..., Task]
TASKS: dict[str, TaskFactory] = {}
SETTINGS: dict[str, tuple[Setting, ...]] = {}


def register_task(
    name: str, settings: tuple[Setting, ...] = ()
) -> Callable[[TaskFactory], TaskFactory]:
    """Register ``factory(**every_setting) -> Task`` under ``name`` with its ``settings``."""

    def add(factory: TaskFactory) -> TaskFactory:
        TASKS[name] = factory
        SETTINGS[name] = tuple(
            replace(entry, group=f"task:{name}", per_member=False) for entry in settings
        )
        return factory

    return add


def _load_modules() -> None:
    # Importing the modules fills the registry.
    from rnnsweep.tasks import (  # noqa: F401
        add,
        anbn,
        brackets,
        copy_task,
        influence_balancing,
        mimic,
        text,
    )


def task_names() -> list[str]:
    """The registered task names, sorted."""
    _load_modules()
    return sorted(TASKS)


def task_setting_entries(name: str) -> tuple[Setting, ...]:
    """The declared settings of task ``name``."""
    _load_modules()
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return SETTINGS[name]


def task_settings(name: str) -> dict[str, Any]:
    """The settings of task ``name`` with their defaults."""
    return {entry.name: entry.default for entry in task_setting_entries(name)}


def make_task(name: str, **settings: Any) -> Task:
    """Build task ``name``; unknown names, unknown settings and bad values raise ``ValueError``."""
    entries = {entry.name: entry for entry in task_setting_entries(name)}
    for key in settings:
        if key not in entries:
            raise ValueError(
                f"{name}: unknown setting {key!r} (known: {', '.join(entries) or 'none'})"
            )
    resolved = {
        key: entry.check(settings[key], f"{name}: ") if key in settings else entry.default
        for key, entry in entries.items()
    }
    return TASKS[name](**resolved)
