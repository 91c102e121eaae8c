"""Layer 3: one module per task (label recipe, questions, surface features); the task list is
core.registry.TASKS."""
