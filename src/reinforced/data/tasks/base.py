"""Procedural tasks: seeded, infinite, difficulty-controlled generators of Prompts with exact answers.

A task is a callable ``generate(rng, difficulty) -> Prompt``; registered by name in ``TASKS`` and declaring
the reward terms that check it (``reward_terms``), so a run on a task needs no reward configuration.

Every task can be asked in the three question forms of Curr-ReFT (Deng et al., arXiv 2503.07065):
``yes_no`` (judge a proposed answer: half the time the gold one, else a distractor), ``choice`` (pick the
gold answer among ``num_choices`` options) and ``open`` (the task's own question). Each form declares its
reward: ``yes_no`` and ``choice`` are checked by the rewards of those names, ``open`` by the task's own
``reward_terms``. A prompt names its composition in ``reward_set``: the task name for ``open`` and
``<task>:<form>`` otherwise (``Task.reward_sets()`` lists them).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from reinforced.registry import Registry
from reinforced.types import Prompt

FORMS = ("open", "choice", "yes_no")
FORMAT_TERM: Mapping[str, Any] = {"name": "format", "weight": 0.1}
FORM_REWARDS: Mapping[str, tuple[Mapping[str, Any], ...]] = {
    "choice": ({"name": "choice", "weight": 1.0, "accuracy": True}, FORMAT_TERM),
    "yes_no": ({"name": "yes_no", "weight": 1.0, "accuracy": True}, FORMAT_TERM),
}
Distractors = Callable[[random.Random, Prompt, int], list[str]]


def numeric_distractors(rng: random.Random, prompt: Prompt, k: int) -> list[str]:
    """``k`` distinct wrong numbers near the gold answer (off-by-small, sign and digit slips).

    >>> sorted(numeric_distractors(random.Random(0), Prompt("p", "q", answer="10"), 3)) != ["10"]
    True
    >>> "10" in numeric_distractors(random.Random(0), Prompt("p", "q", answer="10"), 5)
    False
    """
    gold = Fraction(str(prompt.answer))
    scale = max(1, abs(int(gold)) // 10)
    candidates: list[Fraction] = []
    offsets = [d * s for d in (1, 2, 3, 5, 10) for s in (scale, 1)] + [int(abs(gold)) * 2 or 7, 20, 50]
    rng.shuffle(offsets)
    for off in offsets:
        for value in (gold + off, gold - off, -gold):
            if value != gold and value not in candidates and (value >= 0 or gold < 0):
                candidates.append(value)
    rng.shuffle(candidates)
    return [_num_text(v) for v in candidates[:k]]


def _num_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def label_distractors(rng: random.Random, prompt: Prompt, k: int) -> list[str]:
    """Wrong labels from ``metadata["labels"]`` (classification tasks)."""
    others = [lab for lab in prompt.metadata.get("labels", ()) if lab != prompt.answer]
    rng.shuffle(others)
    return others[:k]


DEFAULT_DISTRACTORS: Mapping[str, Distractors] = {
    "number": numeric_distractors, "fraction": numeric_distractors, "label": label_distractors,
}


@dataclass(frozen=True)
class Task:
    """A procedural task.

    ``generate(rng, difficulty, **params)`` must be a pure function of the rng state: the same seed gives
    the same prompts. ``difficulty`` is a float knob in [0, 1] (0 easiest). ``reward_terms`` are dicts in
    the layout of ``config.RewardTerm`` (name, weight, params, accuracy). ``distractors(rng, prompt, k)``
    gives k wrong answers for the choice and yes/no forms (None: chosen by the prompt's answer type;
    a task whose answers have no distractors supports only ``open``).
    """

    name: str
    description: str
    generate: Callable[..., Prompt]
    reward_terms: Sequence[Mapping[str, Any]]
    modality: str = "text"  # "text" | "image"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    distractors: Distractors | None = None

    def sample(self, rng: random.Random, form: str = "open", num_choices: int = 4, **params: Any) -> Prompt:
        """One prompt, asked in ``form`` (open | choice | yes_no)."""
        if form not in FORMS:
            raise ValueError(f"unknown question form {form!r} for task {self.name!r}; valid: {', '.join(FORMS)}")
        merged = {**self.defaults, **params}
        prompt = self.generate(rng, **merged)
        prompt = replace(prompt, task=self.name, reward_set=self.name)
        if form == "open":
            return prompt
        return ask_in_form(prompt, form, self.distractors_for(prompt), rng, num_choices)

    def distractors_for(self, prompt: Prompt) -> Distractors:
        """The distractor function for this task's prompts (the task's own, else by answer type)."""
        if self.distractors is not None:
            return self.distractors
        if prompt.answer_type in DEFAULT_DISTRACTORS:
            return DEFAULT_DISTRACTORS[prompt.answer_type]
        raise ValueError(f"task {self.name!r} (answer type {prompt.answer_type!r}) has no distractors, so it "
                         f"supports only the 'open' form")

    def reward_terms_for(self, form: str) -> tuple[Mapping[str, Any], ...]:
        """The reward composition that checks a prompt asked in ``form``."""
        if form == "open":
            return tuple(self.reward_terms)
        if form not in FORM_REWARDS:
            raise ValueError(f"unknown question form {form!r}; valid: {', '.join(FORMS)}")
        return FORM_REWARDS[form]

    def reward_sets(self) -> dict[str, tuple[Mapping[str, Any], ...]]:
        """reward_set name -> terms for every form (``<task>`` for open, ``<task>:<form>`` otherwise)."""
        return {reward_set_name(self.name, f): self.reward_terms_for(f) for f in FORMS}


def reward_set_name(task: str, form: str) -> str:
    """The reward_set a prompt of ``task`` asked in ``form`` names.

    >>> reward_set_name("arithmetic", "open"), reward_set_name("arithmetic", "choice")
    ('arithmetic', 'arithmetic:choice')
    """
    return task if form == "open" else f"{task}:{form}"


def ask_in_form(prompt: Prompt, form: str, distractors: Distractors, rng: random.Random,
                num_choices: int = 4) -> Prompt:
    """Re-ask an open prompt as a multiple-choice (``choice``) or a yes/no judgement (``yes_no``) question.

    The open answer stays in ``metadata["open_answer"]``; ``answer`` becomes a letter or yes/no. The
    correct option is ``metadata["form_answer"]`` when the task gives one (Countdown: a solving expression,
    since its ``answer`` is the target), else ``answer``.
    """
    gold = prompt.metadata.get("form_answer", prompt.answer)
    if gold is None:
        raise ValueError(f"prompt {prompt.prompt_id} has no answer to build a {form} question from")
    gold = str(gold)
    meta = {**prompt.metadata, "open_answer": prompt.answer, "form": form}
    if num_choices < 2:
        raise ValueError(f"num_choices must be >= 2, got {num_choices}")
    wrong = distractors(rng, prompt, num_choices - 1)
    if not wrong:  # fewer options than asked is fine (3 shape names); none is not a question
        raise ValueError(f"prompt {prompt.prompt_id}: no distractors, so it cannot be asked as {form!r}")
    base = replace(prompt, reward_set=reward_set_name(prompt.task, form), metadata=meta)
    if form == "choice":
        options = [gold, *wrong]
        rng.shuffle(options)
        letter = "ABCDEFGHIJ"[options.index(gold)]
        return replace(base, choices=tuple(options), answer=letter, answer_type="choice")
    if form == "yes_no":
        truthful = rng.random() < 0.5
        proposed = gold if truthful else wrong[0]
        question = f"{prompt.question}\nProposed answer: {proposed}\nIs the proposed answer correct? Answer yes or no."
        return replace(base, question=question, answer="yes" if truthful else "no", answer_type="yes_no",
                       metadata={**meta, "proposed": proposed})
    raise ValueError(f"unknown question form {form!r}; valid: {', '.join(FORMS)}")


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return TASKS.add(task.name, task)
