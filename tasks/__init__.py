"""Registered tasks. Each task module exposes `TASK`; the orchestrator looks tasks up by name."""

from __future__ import annotations

from tasks.bandit import TASK as BANDIT
from tasks.base import ConfigError, MetricLog, Task
from tasks.expert import TASK as EXPERT
from tasks.popgym_task import TASK as POPGYM
from tasks.probe import TASK as PROBE

REGISTRY: dict[str, Task] = {task.name: task for task in (EXPERT, PROBE, BANDIT, POPGYM)}


def get_task(name: str) -> Task:
    return REGISTRY[name]


__all__ = ["REGISTRY", "ConfigError", "MetricLog", "Task", "get_task"]
