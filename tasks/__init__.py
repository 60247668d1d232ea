"""Registered tasks. Each task module exposes one `Task` (its config, block runner and the
analysis of its report); the orchestrator and the report look tasks up here by name.

A task inside this repository is registered by one line in `BUILT_IN` (the module that
holds its `TASK`); a task in another installed package by an entry point in the group
"sgsweep.tasks" that names its `Task`
(`[project.entry-points."sgsweep.tasks"] mytask = "mypackage.mytask:TASK"`).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from tasks.base import ConfigError, MetricLog, Task

BUILT_IN = (
    "tasks.expert",  # E1
    "tasks.probe",
    "tasks.bandit",  # E2
    "tasks.popgym_task",  # E3
    "tasks.quadratic",  # the worked example of docs/extending.md
)


def _registry() -> dict[str, Task]:
    tasks = [importlib.import_module(module).TASK for module in BUILT_IN]
    registry = {task.name: task for task in tasks}
    for point in entry_points(group="sgsweep.tasks"):
        task = point.load()
        if not isinstance(task, Task) or task.name != point.name or task.name in registry:
            raise ImportError(f"entry point sgsweep.tasks:{point.name} = {point.value}: expected "
                              f"a Task named {point.name!r} that no other task already uses")
        registry[task.name] = task
    return registry


REGISTRY: dict[str, Task] = _registry()


def get_task(name: str) -> Task:
    return REGISTRY[name]


__all__ = ["REGISTRY", "ConfigError", "MetricLog", "Task", "get_task"]
