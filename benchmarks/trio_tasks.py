"""Count live trio tasks from inside a process (no instrument, so no cost per task)."""

from __future__ import annotations

from collections import Counter

import trio

__all__ = ["count_tasks", "task_names"]


def _walk() -> list[trio.lowlevel.Task]:
    stack = [trio.lowlevel.current_root_task()]
    tasks = []
    while stack:
        task = stack.pop()
        tasks.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return tasks


def count_tasks() -> int:
    """Live trio tasks, walked from the root task. Call from inside ``trio.run``."""
    return len(_walk())


def task_names() -> Counter[str]:
    """How many live tasks run each function (by task name)."""
    return Counter(task.name for task in _walk())
