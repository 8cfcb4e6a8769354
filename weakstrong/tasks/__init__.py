"""Verifiable tasks: generate problems (TRL dataset formats), parse final answers, verify, score."""

from .arithmetic import ArithmeticTask
from .base import FORMATS, Task
from .dataset import DatasetTask, load_table
from .meeting_rooms import MeetingRoomsTask, peak_concurrency, schedulable

TASKS = {"meeting_rooms": MeetingRoomsTask, "arithmetic": ArithmeticTask}


def get_task(name: str) -> Task:
    """A task by name (``meeting_rooms`` or ``arithmetic``)."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None


__all__ = ["Task", "FORMATS", "DatasetTask", "load_table", "MeetingRoomsTask", "ArithmeticTask", "TASKS", "get_task", "peak_concurrency",
           "schedulable"]
