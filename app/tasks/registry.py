"""Every task the service answers, found from the specs and built once at start-up: a new task is its spec entry
(app.tasks.specs) and its module; nothing here changes."""

from __future__ import annotations

import importlib

from app.settings import Settings
from app.tasks.base import Task
from app.tasks.specs import SPECS


def task_types() -> dict[str, type[Task]]:
    """Task name -> the Task subclass in the spec's module that implements that spec."""
    found: dict[str, type[Task]] = {}
    for name, spec in SPECS.items():
        module = importlib.import_module(f"app.tasks.{spec.module}")
        classes = [value for value in vars(module).values()
                   if isinstance(value, type) and issubclass(value, Task) and getattr(value, "spec", None) is spec]
        if len(classes) != 1:
            raise RuntimeError(f"app.tasks.{spec.module} must hold one Task for the spec {name!r}; it holds {len(classes)}")
        found[name] = classes[0]
    return found


def build_tasks(settings: Settings) -> dict[str, Task]:
    """Task name -> the task, configured from settings."""
    return {name: task.from_settings(settings) for name, task in task_types().items()}
