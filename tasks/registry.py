"""The task registry: ``make_task(name, **settings)`` and ``task_names()``.

Each task module registers a factory whose keyword parameters (with defaults) are the task's
settings; an unknown key is refused here, a bad value by the factory, both with a
``ValueError`` that names the task and the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from rnnsweep.tasks.task import Task

TaskFactory = Callable[..., Task]
TASKS: dict[str, TaskFactory] = {}


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    def add(factory: TaskFactory) -> TaskFactory:
        TASKS[name] = factory
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


def task_settings(name: str) -> dict[str, Any]:
    """The settings of task ``name`` with their defaults."""
    _load_modules()
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
