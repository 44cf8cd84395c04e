"""Format rewards: does the completion follow the requested layout?

R1 tag format (DeepSeek-R1, arXiv 2501.12948; R1-V / VLM-R1 / Visual-RFT regex): the response is
``<think>...</think>`` then ``<answer>...</answer>``. Ours differs from the common regex on purpose
(rewards-and-paradigms.md section 9 item 12): trailing whitespace and end-of-sequence markers are
ignored, and a response with more than one ``<think>`` or ``<answer>`` block scores 0 (the lazy regex
accepts duplicated answer blocks). Modes:

- ``lenient``: ``<think>A</think>`` + optional whitespace + ``<answer>B</answer>``, nothing before or after.
- ``strict`` (LMM-R1): as lenient but no character between ``</think>`` and ``<answer>``.
- ``newline`` (open-r1): ``<think>\\n A \\n</think>\\n<answer>\\n B \\n</answer>``.
- ``boxed`` (EasyR1 math): ``<think>A</think>`` followed by text containing ``\\boxed{...}``.
- ``answer_only``: exactly one ``<answer>`` block, no think block required.

``tag_count`` (open-r1): 0.25 for each of the four tags that occurs exactly once.
"""

from __future__ import annotations

import re
from typing import Literal

from reinforced.rewards.base import last_boxed, register_reward, strip_eos
from reinforced.types import Prompt, RewardResult

FormatMode = Literal["lenient", "strict", "newline", "boxed", "answer_only"]
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_PATTERNS: dict[str, re.Pattern[str]] = {
    "lenient": re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL),
    "strict": re.compile(r"<think>.*?</think><answer>.*?</answer>", re.DOTALL),
    "newline": re.compile(r"<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>", re.DOTALL),
    "boxed": re.compile(r"<think>.*?</think>.*", re.DOTALL),
    "answer_only": re.compile(r"(?:(?!<answer>).)*<answer>.*?</answer>", re.DOTALL),
}


def format_ok(text: str, mode: str = "lenient") -> bool:
    """Whether ``text`` follows layout ``mode`` (see the module docstring).

    >>> format_ok("<think>a</think>\\n<answer>4</answer>\\n"), format_ok("<think>a</think>\\n<answer>4</answer>", "strict")
    (True, False)
    >>> format_ok("<think>a</think><answer>1</answer><answer>2</answer>")
    False
    """
    if mode not in _PATTERNS:
        raise ValueError(f"unknown format mode {mode!r}; valid: {', '.join(_PATTERNS)}")
    body = strip_eos(text)
    if (mode != "answer_only" and body.count("<think>") != 1) or body.count("</think>") > 1:
        return False
    if mode != "boxed" and (body.count("<answer>") != 1 or body.count("</answer>") != 1):
        return False
    if mode == "boxed" and (last_boxed(body.split("</think>", 1)[-1]) is None or "<answer>" in body):
        return False
    return _PATTERNS[mode].fullmatch(body) is not None


@register_reward("format")
def format_reward(completion: str, prompt: Prompt, mode: FormatMode = "lenient") -> RewardResult:
    """r = 1 if the completion is <think>..</think><answer>..</answer> (one of each; mode lenient|strict|newline|boxed|answer_only) else 0

    >>> from reinforced.types import Prompt
    >>> format_reward("<think>x</think> <answer>4</answer>", Prompt("p", "q")).score
    1.0
    """
    return RewardResult(score=1.0 if format_ok(completion, mode) else 0.0, info={"mode": mode})


@register_reward("tag_count")
def tag_count(completion: str, prompt: Prompt) -> RewardResult:
    """r = 0.25 * #{tags in <think>,</think>,<answer>,</answer> that occur exactly once}

    >>> from reinforced.types import Prompt
    >>> tag_count("<think>a</think><answer>1</answer><answer>2", Prompt("p", "q")).score
    0.75
    """
    counts = {tag: completion.count(tag) for tag in _TAGS}
    score = 0.25 * sum(1 for c in counts.values() if c == 1)
    return RewardResult(score=score, components={t.strip("<>/") + ("_close" if "/" in t else ""): float(c == 1)
                                                 for t, c in counts.items()})
