"""The tasks by name: ``make_task(name, **settings)`` and ``task_names()``.

``TASKS`` is an explicit table (as Optuna lists its samplers): this module imports the task
modules, and they import only ``rnnsweep.tasks.task`` and their helpers, so there is no import
cycle. Each task module declares its settings once, as ``Setting`` entries (type, default,
bounds, doc) in its ``SETTINGS``. ``make_task`` refuses unknown keys and values outside an
entry's type or bounds, fills in the defaults and calls the factory with every key; the factory
checks what involves several keys (``max_n >= min_n``). Errors are ``ValueError`` naming the
task and the key. ``register_task`` adds a task of one's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rnnsweep.tasks import (
    add,
    anbn,
    brackets,
    copy_task,
    influence_balancing,
    mimic,
    text,
)
from rnnsweep.tasks.settings import Setting, did_you_mean
from rnnsweep.tasks.task import Task

TaskFactory = Callable[..., Task]
TASKS: dict[str, TaskFactory] = {}
SETTINGS: dict[str, tuple[Setting, ...]] = {}


def register_task(
    name: str, settings: tuple[Setting, ...] = ()
) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: add ``factory(**every_setting) -> Task`` under ``name`` with its settings."""

    def add_factory(factory: TaskFactory) -> TaskFactory:
        TASKS[name] = factory
        SETTINGS[name] = tuple(
            replace(entry, group=f"task:{name}", per_member=False) for entry in settings
        )
        return factory

    return add_factory


for _name, _module, _factory in (
    ("add", add, add.add_task),
    ("anbn", anbn, anbn.anbn_task),
    ("brackets", brackets, brackets.brackets_task),
    ("copy", copy_task, copy_task.copy_task),
    ("influence-balancing", influence_balancing, influence_balancing.influence_balancing_task),
    ("mimic", mimic, mimic.mimic_task),
    ("text", text, text.text_task),
):
    register_task(_name, _module.SETTINGS)(_factory)


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(TASKS)


def task_setting_entries(name: str) -> tuple[Setting, ...]:
    """The declared settings of task ``name``."""
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}{did_you_mean(name, sorted(TASKS))}; "
            f"known tasks: {', '.join(sorted(TASKS))}"
        )
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
