"""Prompt templates: how a ``Prompt`` is put to the model as Hugging Face chat messages.

``think_answer`` is the DeepSeek-R1-Zero template (arXiv 2501.12948, Table 1): reason inside
``<think>...</think>`` and answer inside ``<answer>...</answer>``. Small instruct models never emit
those tags from the instruction alone, so a reward that demands them is zero everywhere and the
gradient vanishes; ``think_answer`` therefore shows one worked example as a prior user/assistant turn
(measured on SmolLM2-135M: 0% tagged answers without it, 100% with it). ``think_answer_zeroshot`` is the
bare instruction, ``boxed`` asks for ``\\boxed{}`` (the MATH convention), ``plain`` adds nothing.

A user turn with images is a list of content items, ``{"type": "image"}`` for each image (in order, at
its ``<image>`` placeholder, or before the text when the question has none) and ``{"type": "text"}``;
a text-only turn is a plain string. ``Prompt.system`` overrides the template's system prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reinforced.data.rows import CHOICE_LETTERS, IMAGE_PLACEHOLDER
from reinforced.registry import Registry
from reinforced.types import Prompt

THINK_ANSWER_SYSTEM = (
    "You are a helpful assistant. First think about the reasoning process step by step, then give the "
    "answer. Put the reasoning inside <think> </think> tags and the final answer inside <answer> </answer> "
    "tags, i.e., <think> reasoning here </think><answer> answer here </answer>."
)
BOXED_SYSTEM = (
    "You are a helpful assistant. Reason step by step, then put the final answer within \\boxed{}."
)
ONE_SHOT_THINK = (
    {"role": "user", "content": "What is 12 + 7?"},
    {"role": "assistant", "content": "<think>12 + 7 = 19.</think><answer>19</answer>"},
)


@dataclass(frozen=True)
class Template:
    """A system prompt, optional example turns shown before the question, and a suffix for the question."""

    name: str
    system: str | None
    examples: tuple[dict[str, Any], ...] = ()
    suffix: str = ""
    choice_hint: str = "Answer with the letter of the correct option."


TEMPLATES: Registry[Template] = Registry("template")
for _t in (
    Template("think_answer", THINK_ANSWER_SYSTEM, ONE_SHOT_THINK),
    Template("think_answer_zeroshot", THINK_ANSWER_SYSTEM),
    Template("boxed", BOXED_SYSTEM),
    Template("plain", None, choice_hint=""),
):
    TEMPLATES.add(_t.name, _t)


def format_choices(choices: tuple[str, ...]) -> str:
    """Lettered options, one per line.

    >>> print(format_choices(("3", "4")))
    A. 3
    B. 4
    """
    return "\n".join(f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices))


def question_text(prompt: Prompt, template: Template) -> str:
    """The user text: the question, its lettered choices (unless already listed) and the template suffix."""
    text = prompt.question
    if prompt.choices and f"A. {prompt.choices[0]}" not in text:
        text = f"{text}\n{format_choices(prompt.choices)}"
        if template.choice_hint:
            text = f"{text}\n{template.choice_hint}"
    return f"{text}{template.suffix}"


def user_content(text: str, num_images: int) -> str | list[dict[str, Any]]:
    """A user turn's content: a string when text-only, else image items at the placeholders, then text.

    >>> user_content("Count them.", 1)
    [{'type': 'image'}, {'type': 'text', 'text': 'Count them.'}]
    >>> user_content("Compare <image> with <image>.", 2)[:3]
    [{'type': 'text', 'text': 'Compare '}, {'type': 'image'}, {'type': 'text', 'text': ' with '}]
    """
    if num_images == 0:
        return text.replace(IMAGE_PLACEHOLDER, "")
    pieces = text.split(IMAGE_PLACEHOLDER)
    if len(pieces) == 1:  # no placeholders: images first, as most VLM chat templates expect
        return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    if len(pieces) - 1 != num_images:
        raise ValueError(f"the text has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but the prompt "
                         f"has {num_images} image(s)")
    items: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        if piece:
            items.append({"type": "text", "text": piece})
        if i < num_images:
            items.append({"type": "image"})
    return items


def to_messages(prompt: Prompt, template: str | Template = "think_answer") -> list[dict[str, Any]]:
    """HF chat messages for ``prompt`` under ``template`` (a name in ``TEMPLATES`` or a Template).

    >>> from reinforced.types import Prompt
    >>> msgs = to_messages(Prompt("p0", "What is 2 + 2?"), "think_answer")
    >>> [m["role"] for m in msgs], msgs[-1]["content"]
    (['system', 'user', 'assistant', 'user'], 'What is 2 + 2?')
    """
    tpl = TEMPLATES[template] if isinstance(template, str) else template
    system = prompt.system if prompt.system is not None else tpl.system
    if prompt.messages:
        return _from_conversation(prompt, tpl, system)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.extend(dict(m) for m in tpl.examples)
    messages.append({"role": "user", "content": user_content(question_text(prompt, tpl), prompt.num_images)})
    return messages


def _from_conversation(prompt: Prompt, tpl: Template, system: str | None) -> list[dict[str, Any]]:
    """A dataset-provided conversation: keep its turns, add the template's system prompt if it has none,
    and hand out the prompt's images to the turns in placeholder order."""
    turns = [dict(m) for m in prompt.messages]
    out: list[dict[str, Any]] = []
    if system and turns[0].get("role") != "system":
        out.append({"role": "system", "content": system})
        out.extend(dict(m) for m in tpl.examples)
    remaining = prompt.num_images
    for turn in turns:
        text = str(turn["content"])
        n = min(text.count(IMAGE_PLACEHOLDER), remaining)
        remaining -= n
        content = user_content(text, n) if turn["role"] == "user" else text
        out.append({"role": turn["role"], "content": content})
    if remaining:
        raise ValueError(f"prompt {prompt.prompt_id}: {remaining} image(s) have no <image> placeholder")
    return out
