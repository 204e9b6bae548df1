"""The tasks by name: ``make_task(name, **settings)`` and ``task_names()``.

``TASKS`` is an explicit table (as Optuna lists its samplers): this module imports the task
modules, and they import only ``rnnsweep.tasks.task`` and their helpers, so there is no import
cycle. A task factory's keyword parameters (with defaults) are the task's settings; an unknown
key is refused here, a bad value by the factory, both with a ``ValueError`` that names the task
and the key. ``register_task`` adds a task of one's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from rnnsweep.tasks.add import add_task
from rnnsweep.tasks.anbn import anbn_task
from rnnsweep.tasks.brackets import brackets_task
from rnnsweep.tasks.copy_task import copy_task
from rnnsweep.tasks.influence_balancing import influence_balancing_task
from rnnsweep.tasks.mimic import mimic_task
from rnnsweep.tasks.task import Task
from rnnsweep.tasks.text import text_task

TaskFactory = Callable[..., Task]
TASKS: dict[str, TaskFactory] = {
    "add": add_task,
    "anbn": anbn_task,
    "brackets": brackets_task,
    "copy": copy_task,
    "influence-balancing": influence_balancing_task,
    "mimic": mimic_task,
    "text": text_task,
}


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: add a task factory under ``name``; its keyword parameters are the settings."""

    def add(factory: TaskFactory) -> TaskFactory:
        TASKS[name] = factory
        return factory

    return add


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(TASKS)


def task_settings(name: str) -> dict[str, Any]:
    """The settings of task ``name`` with their defaults."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    parameters = inspect.signature(TASKS[name]).parameters.values()
    return {p.name: p.default for p in parameters}


def make_task(name: str, **settings: Any) -> Task:
    """Build task ``name``; unknown names, unknown settings and bad values raise ``ValueError``."""
    known = task_settings(name)
    for key in settings:
        if key not in known:
            raise ValueError(
                f"{name}: unknown setting {key!r} (known: {', '.join(known) or 'none'})"
            )
    return TASKS[name](**settings)
