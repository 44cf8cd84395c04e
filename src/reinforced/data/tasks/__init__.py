"""Procedural task suite: ``TASKS`` holds every registered task (text tasks in ``text.py``, rendered visual
tasks in ``visual.py``); importing this package registers them all."""

from reinforced.data.tasks import text, visual
from reinforced.data.tasks.base import FORMS, TASKS, Task, ask_in_form, register_task, reward_set_name

__all__ = ["FORMS", "TASKS", "Task", "ask_in_form", "register_task", "reward_set_name", "text", "visual"]
