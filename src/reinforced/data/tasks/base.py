"""Procedural tasks: seeded, infinite, difficulty-controlled generators of Prompts with exact answers.

A task is a callable ``generate(rng, difficulty) -> Prompt``; registered by name in ``TASKS`` and declaring
the reward terms that check it (``reward_terms``), so a run on a task needs no reward configuration.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reinforced.registry import Registry
from reinforced.types import Prompt


@dataclass(frozen=True)
class Task:
    """A procedural task.

    ``generate(rng, difficulty, **params)`` must be a pure function of the rng state: the same seed gives
    the same prompts. ``difficulty`` is a float knob in [0, 1] (0 easiest). ``reward_terms`` are dicts in
    the layout of ``config.RewardTerm`` (name, weight, params, accuracy).
    """

    name: str
    description: str
    generate: Callable[..., Prompt]
    reward_terms: Sequence[Mapping[str, Any]]
    modality: str = "text"  # "text" | "image"
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def sample(self, rng: random.Random, **params: Any) -> Prompt:
        merged = {**self.defaults, **params}
        return self.generate(rng, **merged)


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return TASKS.add(task.name, task)
