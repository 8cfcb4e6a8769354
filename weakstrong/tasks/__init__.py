"""Verifiable tasks: generate problems (TRL dataset formats), parse final answers, verify, score."""

from ..cli import UserError
from .arithmetic import ArithmeticTask
from .base import FORMATS, Task
from .dataset import DatasetTask, load_table
from .meeting_rooms import MeetingRoomsTask, peak_concurrency, schedulable

TASKS = {"meeting_rooms": MeetingRoomsTask, "arithmetic": ArithmeticTask}


class UnknownTaskError(UserError, ValueError):
    """A task name that is not one of :data:`TASKS` (printed without a traceback by ``weakstrong``)."""


def get_task(name: str) -> Task:
    """A task by name (``meeting_rooms`` or ``arithmetic``)."""
    try:
        return TASKS[name]()
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), list(TASKS), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint}; the built-in tasks are {sorted(TASKS)}.") from None


__all__ = ["Task", "FORMATS", "DatasetTask", "load_table", "MeetingRoomsTask", "ArithmeticTask", "TASKS", "get_task",
           "UnknownTaskError", "peak_concurrency",
           "schedulable"]
