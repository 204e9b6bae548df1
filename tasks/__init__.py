"""Online task streams: ``make_task(name, **settings)`` -> ``Task``; ``task.new_stream(...)``."""

from rnnsweep.tasks.registry import make_task, task_names, task_settings
from rnnsweep.tasks.stream import Stream
from rnnsweep.tasks.task import Task

__all__ = ["Stream", "Task", "make_task", "task_names", "task_settings"]
