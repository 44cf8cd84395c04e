"""Procedural task suite: ``TASKS`` holds every registered task (text tasks here, rendered visual tasks in
``visual.py``); importing this package registers them all."""

from reinforced.data.tasks import text
from reinforced.data.tasks.base import FORMS, TASKS, Task, ask_in_form, register_task, reward_set_name

__all__ = ["FORMS", "TASKS", "Task", "ask_in_form", "register_task", "reward_set_name", "text"]
