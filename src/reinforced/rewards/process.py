"""Process rewards: score the reasoning, not only the answer.

- ``step_rar`` (R1-VL StepGRPO, arXiv 2503.12937): r = c + alpha * k_ps with c the final-answer correctness
  and k_ps the fraction of key-step groups (``metadata["key_steps"]``, ``{"Steps": [group, ...]}`` or a
  list; a group is a string or a list of alternatives) of which some alternative occurs, case-insensitive,
  in the text of the ``### Step k:`` sections; alpha = 0.1. ``emit_steps`` also returns one StepScore per
  step section: alpha * (groups first matched in it) / #groups, so the sum equals alpha * k_ps.
- ``step_rvr``: r = 1 iff the headers ``### Image Description:``, ``### Rationales:``, ``### Step 1:``,
  ``### The final answer is:`` are present, the step numbers are 1..n in order and the final-answer header
  follows the last step; else 0.
- ``reasoning_steps`` (open-r1): r = min(1, n / target) with n the step markers (``Step k:``, numbered
  lines, bullets, First/Second/Next/Finally).
- ``consistency`` (ours, after Embodied-R arXiv 2504.12680): r = 1 if the conclusion stated in the reasoning
  (its last ``\\boxed{}``, "answer is X", "= X" or last number) equals the final answer, 0 if it differs,
  ``missing`` when the reasoning states none. ``only_if_correct`` scores 0 unless the final answer is
  correct (Embodied-R). With ``judge_url`` an OpenAI-compatible model re-derives the answer from the
  reasoning alone and that is compared instead (judge.py).
- ``completeness`` (ours): r = |{quantities of the question that appear in the reasoning}| / |{quantities}|,
  quantities = numbers in the question text (or ``metadata["quantities"]``); None when there are none.
- ``grounded_citation`` (ours): r = mean over the boxes cited in the reasoning of [box valid and inside the
  image] * [matches a labelled object, IoU >= ``iou_threshold``, where ``metadata["objects"]`` exist;
  and when an object label is named within 40 characters before the box, that object's label]; None
  when no box is cited. Cited boxes map to the gold frame as in grounding.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from reinforced.rewards.base import (
    extract_answer,
    gold_answer,
    normalize_text,
    parse_number,
    reasoning_text,
    register_reward,
)
from reinforced.rewards.grounding import _BOX_RE, Frame, box_iou, to_gold_frame
from reinforced.rewards.mathematics import math_equal
from reinforced.types import Prompt, RewardResult, StepScore

_STEP_RE = re.compile(r"###\s*Step\s*(\d+)\s*:", re.IGNORECASE)
_FINAL_RE = re.compile(r"###\s*The final answer is\s*:", re.IGNORECASE)
_HEADERS = (r"###\s*Image Description\s*:", r"###\s*Rationales\s*:", r"###\s*Step\s*1\s*:", _FINAL_RE.pattern)


def step_sections(text: str) -> list[tuple[int, int, int]]:
    """(step number, start, end) of every ``### Step k:`` section (ends at the next ``\\n###`` or the end).

    >>> step_sections("### Step 1: a\\n### Step 2: b\\n### The final answer is: 3")
    [(1, 0, 13), (2, 14, 27)]
    """
    out = []
    for m in _STEP_RE.finditer(text):
        nxt = text.find("\n###", m.end())
        out.append((int(m.group(1)), m.start(), len(text) if nxt < 0 else nxt))
    return out


def key_groups(prompt: Prompt) -> list[list[str]]:
    """Key-step groups from ``metadata["key_steps"]`` as lower-cased alternative lists."""
    raw: Any = prompt.metadata.get("key_steps") or []
    if isinstance(raw, dict):
        raw = raw.get("Steps", [])
    return [[str(a).lower() for a in (g if isinstance(g, list | tuple) else [g])] for g in raw]


def final_answer_text(text: str) -> str | None:
    """Text after the last ``### The final answer is:`` header, else the extracted answer span."""
    found = list(_FINAL_RE.finditer(text))
    return text[found[-1].end():].strip() if found else extract_answer(text)


@register_reward("step_rar")
def step_rar(completion: str, prompt: Prompt, alpha: float = 0.1, emit_steps: bool = False) -> RewardResult:
    """r = c + alpha * k_ps; c = final answer correct, k_ps = fraction of key-step groups matched in the step sections

    >>> from reinforced.types import Prompt
    >>> p = Prompt("p", "q", answer="13", metadata={"key_steps": [["5 cm", "5cm"], "169"]})
    >>> step_rar("### Step 1: sides 5 cm and 12\\n### The final answer is: 13", p).score
    1.05
    """
    groups = key_groups(prompt)
    sections = step_sections(completion)
    gold, final = gold_answer(prompt), final_answer_text(completion)
    correct = bool(gold and final and (normalize_text(final) == normalize_text(gold) or math_equal(gold, final)))
    matched: set[int] = set()
    steps: list[StepScore] = []
    for _, start, end in sections:
        body = completion[start:end].lower()
        new = {i for i, alts in enumerate(groups) if i not in matched and any(a in body for a in alts)}
        matched |= new
        steps.append(StepScore(start, end, alpha * len(new) / len(groups) if groups else 0.0))
    k_ps = len(matched) / len(groups) if groups else 0.0
    return RewardResult(score=float(correct) + alpha * k_ps, components={"answer": float(correct), "key_steps": k_ps},
                        steps=tuple(steps) if emit_steps else ())


@register_reward("step_rvr")
def step_rvr(completion: str, prompt: Prompt) -> RewardResult:
    """r = 1 if the four section headers are present, steps are numbered 1..n in order and the final answer follows the last step else 0

    >>> from reinforced.types import Prompt
    >>> step_rvr("### Image Description: x\\n### Rationales: y\\n### Step 1: z\\n### The final answer is: 1", Prompt("p", "q")).score
    1.0
    """
    complete = all(re.search(h, completion, re.IGNORECASE) for h in _HEADERS)
    numbers = [n for n, _, _ in step_sections(completion)]
    ordered = bool(numbers) and numbers == list(range(1, len(numbers) + 1))
    step_ends = [m.end() for m in _STEP_RE.finditer(completion)]
    finals = [m.start() for m in _FINAL_RE.finditer(completion)]
    after = bool(step_ends) and bool(finals) and finals[-1] >= step_ends[-1]
    ok = complete and ordered and after
    return RewardResult(score=float(ok), components={"complete": float(complete), "ordered": float(ordered and after)})


_MARKERS_RE = re.compile(r"(?:Step\s*\d+\s*:|^\s*\d+[.)]\s|^\s*[-*•]\s|\b(?:First|Second|Third|Next|Then|Finally)\b,?)",
                         re.MULTILINE | re.IGNORECASE)


@register_reward("reasoning_steps")
def reasoning_steps(completion: str, prompt: Prompt, target: int = 3) -> RewardResult:
    """r = min(1, n / target), n = number of step markers (Step k:, numbered lines, bullets, First/Next/Finally)

    >>> from reinforced.types import Prompt
    >>> reasoning_steps("Step 1: a\\nStep 2: b", Prompt("p", "q")).score
    0.6666666666666666
    """
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    n = len(_MARKERS_RE.findall(reasoning_text(completion)))
    return RewardResult(score=min(1.0, n / target), info={"num_steps": n})


def stated_conclusion(reasoning: str) -> str | None:
    """The answer a reasoning text states: last ``\\boxed{}``, "answer is X", last "= X", else last number.

    >>> stated_conclusion("2 + 2 = 4, so the answer is 4."), stated_conclusion("so x = 12"), stated_conclusion("none")
    ('4', '12', None)
    """
    boxed = extract_answer(reasoning)
    if boxed is not None:
        return boxed
    for pattern in (r"answer\s+(?:is|:)\s*([^\n.,;]+)", r"=\s*([^\n=,;]+?)\s*(?:[.,;\n]|$)"):
        found = re.findall(pattern, reasoning, re.IGNORECASE)
        if found:
            return found[-1].strip()
    return extract_answer(reasoning, "last_number")


def _same(a: str, b: str) -> bool:
    return normalize_text(a) == normalize_text(b) or bool(math_equal(a, b))


@register_reward("consistency")
def consistency(
    completion: str,
    prompt: Prompt,
    missing: float = 0.0,
    only_if_correct: bool = False,
    judge_url: str | None = None,
    judge_model: str = "default",
    timeout_s: float = 30.0,
) -> RewardResult:
    """r = 1 if the conclusion stated in the reasoning (or re-derived by a judge) equals the final answer, 0 if not

    >>> from reinforced.types import Prompt
    >>> consistency("<think>3 + 4 = 7</think><answer>8</answer>", Prompt("p", "q")).score
    0.0
    """
    final = extract_answer(completion)
    if final is None:
        return RewardResult(score=0.0, info={"reason": "no final answer"})
    gold = gold_answer(prompt)
    if only_if_correct and not (gold and _same(gold, final)):
        return RewardResult(score=0.0, info={"reason": "final answer not correct"})
    reasoning = reasoning_text(completion)
    if judge_url is not None:
        from reinforced.rewards.judge import derive_answer

        stated = derive_answer(prompt.question, reasoning, judge_url, judge_model, timeout_s)
    else:
        stated = stated_conclusion(reasoning)
    if stated is None:
        return RewardResult(score=missing, info={"reason": "the reasoning states no answer"})
    return RewardResult(score=float(_same(final, stated)), info={"stated": stated, "final": final})


_QTY_RE = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?:/\d+)?")


def quantities(text: str) -> list[float]:
    """Distinct numbers written in a text, in order.

    >>> quantities("Tom has 3 apples and 2.5 pears, 3 more and 1,200 grams.")
    [3.0, 2.5, 1200.0]
    """
    out: list[float] = []
    for tok in _QTY_RE.findall(text):
        value = parse_number(tok)
        if value is not None and value not in out:
            out.append(value)
    return out


@register_reward("completeness")
def completeness(completion: str, prompt: Prompt) -> RewardResult:
    """r = |question quantities that appear in the reasoning| / |question quantities| (None when the question has none)

    >>> from reinforced.types import Prompt
    >>> completeness("<think>3 * 4 = 12</think><answer>12</answer>", Prompt("p", "3 boxes of 4 and 5 spare?")).score
    0.6666666666666666
    """
    given = [float(q) for q in prompt.metadata.get("quantities", [])] or quantities(prompt.question)
    if not given:
        return RewardResult(score=None, info={"reason": "the question has no quantities"})
    used = set(quantities(reasoning_text(completion)))
    hits = [q for q in given if any(abs(q - u) <= 1e-9 * max(1.0, abs(q)) for u in used)]
    return RewardResult(score=len(hits) / len(given), info={"missing": [q for q in given if q not in hits]})


def _inside_image(box: Sequence[float], size: Sequence[float] | None) -> bool:
    if not (box[0] < box[2] and box[1] < box[3]) or min(box) < 0:
        return False
    return size is None or (box[2] <= float(size[0]) and box[3] <= float(size[1]))


@register_reward("grounded_citation")
def grounded_citation(
    completion: str, prompt: Prompt, iou_threshold: float = 0.5, pred_frame: Frame | None = None
) -> RewardResult:
    """r = mean over boxes cited in the reasoning of [inside the image] * [matches a labelled object, IoU >= t] (None if none cited)

    >>> from reinforced.types import Prompt
    >>> p = Prompt("p", "q", metadata={"image_size": (100, 100), "objects": [{"box": [0, 0, 50, 50], "label": "dog"}]})
    >>> grounded_citation("<think>the dog [0, 0, 48, 50] and [90, 90, 120, 99]</think>", p).score
    0.5
    """
    meta = prompt.metadata
    reasoning = reasoning_text(completion)
    cited = list(_BOX_RE.finditer(reasoning))
    if not cited:
        return RewardResult(score=None, info={"reason": "no box cited"})
    frame = pred_frame or meta.get("pred_frame", "gold")
    size = meta.get("image_size") if frame in ("pixel", "gold") else None
    objects = [(to_gold_frame([float(v) for v in o["box"]], {**meta, "pred_frame": "gold"}),
                str(o.get("label", "")).lower()) for o in meta.get("objects", [])]
    good = 0
    for m in cited:
        raw = [float(v) for v in m.groups()]
        ok = _inside_image(raw, size) if frame in ("pixel", "gold") else all(0 <= v <= (1000 if frame == "norm1000" else 1) for v in raw)
        box = to_gold_frame(raw, meta, pred_frame)
        if ok and objects:
            window = reasoning[max(0, m.start() - 40): m.start()].lower()
            named = {lab for _, lab in objects if lab and re.search(rf"\b{re.escape(lab)}\b", window)}
            ok = any(box_iou(box, b) >= iou_threshold and (not named or lab in named) for b, lab in objects)
        good += int(ok)
    return RewardResult(score=good / len(cited), info={"cited": len(cited)})
