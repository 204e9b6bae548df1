"""Online task streams: ``make_task(name, **settings)`` -> ``Task``; ``task.new_stream(...)``."""

from tasks.registry import make_task, task_names, task_settings
from tasks.stream import Stream
from tasks.task import Task

__all__ = ["Stream", "Task", "make_task", "task_names", "task_settings"]
