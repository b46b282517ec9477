"""The registry: every task the service answers, read once at start-up. A new task is a module and one line here."""

from __future__ import annotations

from app.settings import Settings
from app.tasks.base import Answer, Task
from app.tasks.fill_mask import FillMask
from app.tasks.text_classification import TextClassification
from app.tasks.token_classification import TokenClassification
from app.tasks.zero_shot import ZeroShotClassification

TASK_TYPES: tuple[type, ...] = (TextClassification, ZeroShotClassification, FillMask, TokenClassification)


def build_tasks(settings: Settings) -> dict[str, Task]:
    """Task name -> the task, configured from settings."""
    return {task.name: task.from_settings(settings) for task in TASK_TYPES}


__all__ = ["Answer", "Task", "TASK_TYPES", "build_tasks"]
