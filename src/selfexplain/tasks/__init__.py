"""Layer 3: one module per task (label recipe, questions, surface features); the task list is
core.registry.TASKS."""

from selfexplain.core.registry import CHANGE_TASKS, TASKS

__all__ = ["CHANGE_TASKS", "TASKS"]
