"""Text-answer rewards: multiple choice, yes/no, exact match, classification labels, Sudoku grids.

All read the extracted answer span only. They fix the leniency bugs listed in rewards-and-paradigms.md
section 9 item 12: a correct letter followed by its explanation is correct (MedVLM-R1 gave 0 or 0.5);
multi-select is order-insensitive (Curr-ReFT compared strings); yes/no match whole words ("know" is not
"no", VLM-R1 used substrings); classification never accepts an empty answer or a mere substring
(Visual-RFT accepted both).

``choice``: the predicted letter set (leading letter ``B`` / ``(B)`` / ``B.``; else the text of an option;
else the standalone capital letters of the valid range) must equal the gold letter set.
``label``: normalised equality with the gold or one of its synonyms (``metadata["synonyms"]`` or the
``synonyms`` param); ``multi`` scores the Jaccard index of label sets (Curr-ReFT).
``grid``: an n x n Sudoku (n = 4 by default) is correct if it is a valid solution that keeps every given
digit of ``metadata["puzzle"]`` (0 or . = empty), or equals the gold grid.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence

from reinforced.rewards.base import Fallback, extract_answer, gold_answer, normalize_text, register_reward
from reinforced.types import Prompt, RewardResult

# A leading option letter needs a mark after it ("B.", "B)", "(B)", "B:", "B - text"): a bare capital
# followed by a word is a sentence ("I think ...", "A cat ..."), not option I or A.
_LEAD_RE = re.compile(r"^\(?([A-Za-z])\s*(?:[.):\]]|$|\s[-:]\s?\S)")
_LETTERS = string.ascii_uppercase


def choice_letters(span: str, choices: Sequence[str] = ()) -> set[str]:
    """The set of option letters an answer span selects.

    >>> sorted(choice_letters("(B) Chondral lesion")), sorted(choice_letters("C, A")), sorted(choice_letters("b"))
    (['B'], ['A', 'C'], ['B'])
    >>> sorted(choice_letters("4", ("6", "3", "4", "2")))
    ['C']
    """
    span = span.strip().strip("$").strip()
    valid = _LETTERS[: len(choices)] if choices else _LETTERS[:10]
    norm = normalize_text(span)
    for i, option in enumerate(choices):  # the option's own text, verbatim
        if norm and norm == normalize_text(option):
            return {_LETTERS[i]}
    standalone = {c for c in re.findall(r"(?<![A-Za-z])([A-J])(?![A-Za-z])", span) if c in valid}
    if re.search(r"\bor\b", span, re.IGNORECASE) and len(standalone) > 1:
        return set()  # "A or B" is a hedge, not a selection
    parts = [p for p in re.split(r"[\s,&]+|\band\b", span) if p]  # split, not a nested regex: linear
    if len(parts) > 1 and all(re.fullmatch(r"\(?[A-Za-z]\)?", p) for p in parts):
        found = {c.upper() for p in parts for c in p if c.isalpha()}
        return found if found <= set(valid) else set()
    lead = _LEAD_RE.match(span)
    if lead and lead.group(1).upper() in valid and (lead.group(1).isupper() or len(span) <= 3):
        return {lead.group(1).upper()}
    m = re.search(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\b", span, re.IGNORECASE)
    if m and m.group(1).upper() in valid:
        return {m.group(1).upper()}
    return standalone


@register_reward("choice")
def choice(completion: str, prompt: Prompt, fallback: Fallback = "none") -> RewardResult:
    """r = 1 if the selected option letters (letter or option text; set, order-insensitive) equal the gold letters else 0

    >>> from reinforced.types import Prompt
    >>> choice("<answer>B) 7</answer>", Prompt("p", "q", answer="B")).score
    1.0
    """
    gold = gold_answer(prompt)
    if not gold:
        return RewardResult(score=None, info={"error": "prompt has no gold answer"})
    gold_set = choice_letters(gold, prompt.choices) or {gold.upper()}
    span = extract_answer(completion, fallback)
    pred = choice_letters(span, prompt.choices) if span else set()
    return RewardResult(score=float(pred == gold_set), info={"answer": ",".join(sorted(pred))})


_YES = {"yes", "true", "correct", "y"}
_NO = {"no", "false", "incorrect", "n"}


def yes_no_value(text: str | None) -> bool | None:
    """What the answer says: the word after "answer is", else a leading yes/no word, else the yes/no
    words if they all agree; None when there is none or they conflict.

    >>> yes_no_value("I don't know"), yes_no_value("No, it is not."), yes_no_value("True")
    (None, False, True)
    >>> yes_no_value("There are no dogs, so the answer is yes"), yes_no_value("yes and no")
    (True, None)
    """
    low = (text or "").lower()
    stated = re.search(r"answer\s*(?:is|:)\s*([a-z]+)", low)
    if stated and (stated.group(1) in _YES or stated.group(1) in _NO):
        return stated.group(1) in _YES
    words = [w in _YES for w in re.findall(r"[a-z]+", low) if w in _YES or w in _NO]
    if not words:
        return None
    lead = re.match(r"\W*([a-z]+)", low)
    if lead and (lead.group(1) in _YES or lead.group(1) in _NO) and len(set(words)) == 1:
        return words[0]
    return words[0] if len(set(words)) == 1 else None


@register_reward("yes_no")
def yes_no(completion: str, prompt: Prompt, fallback: Fallback = "none") -> RewardResult:
    """r = 1 if the answer's yes/no (after "answer is", else its agreeing yes/true|no/false words) matches the gold else 0

    >>> from reinforced.types import Prompt
    >>> yes_no("<answer>I know</answer>", Prompt("p", "q", answer="no")).score
    0.0
    """
    gold = yes_no_value(gold_answer(prompt))
    if gold is None:
        return RewardResult(score=None, info={"error": f"gold {prompt.answer!r} is not yes/no"})
    pred = yes_no_value(extract_answer(completion, fallback))
    return RewardResult(score=float(pred is not None and pred == gold), info={"answer": pred})


@register_reward("exact_match")
def exact_match(
    completion: str, prompt: Prompt, case_sensitive: bool = False, fallback: Fallback = "none"
) -> RewardResult:
    """r = 1 if normalise(answer) == normalise(gold) (whitespace, $, \\text{}, end punctuation; case) else 0

    >>> from reinforced.types import Prompt
    >>> exact_match("<answer> Paris. </answer>", Prompt("p", "q", answer="paris")).score
    1.0
    """
    gold = gold_answer(prompt)
    if gold is None:
        return RewardResult(score=None, info={"error": "prompt has no gold answer"})
    span = extract_answer(completion, fallback)
    if span is None:
        return RewardResult(score=0.0, info={"reason": "no answer span"})
    a, b = (span, gold) if case_sensitive else (span.lower(), gold.lower())
    norm = (lambda s: re.sub(r"\s+", " ", s).strip().strip(" .")) if case_sensitive else normalize_text
    return RewardResult(score=float(norm(a) == norm(b) and bool(norm(b))), info={"answer": span})


def _label_key(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", normalize_text(text)).strip()


def _label_set(text: str) -> set[str]:
    return {_label_key(p) for p in re.split(r"[,;/\n]|\band\b|[，、]", text) if _label_key(p)}


@register_reward("label")
def label(
    completion: str,
    prompt: Prompt,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    multi: bool = False,
    fallback: Fallback = "none",
) -> RewardResult:
    """r = 1 if the answer equals the gold label or a synonym (normalised); multi: Jaccard |P&G|/|P|G|; empty -> 0

    >>> from reinforced.types import Prompt
    >>> p = Prompt("p", "q", answer="Boeing 737")
    >>> [label(f"<answer>{a}</answer>", p).score for a in ("boeing_737", "boeing_737-800", "737", "")]
    [1.0, 0.0, 0.0, 0.0]
    """
    gold = gold_answer(prompt)
    if not gold:
        return RewardResult(score=None, info={"error": "prompt has no gold label"})
    span = extract_answer(completion, fallback) or ""
    table = {**{k.lower(): list(v) for k, v in (synonyms or {}).items()}}
    extra = prompt.metadata.get("synonyms", [])

    def canon(name: str) -> str:
        key = _label_key(name)
        for head, alts in table.items():
            if key in {_label_key(head), *(_label_key(a) for a in alts)}:
                return _label_key(head)
        return key

    if multi:
        pred, ref = {canon(x) for x in _label_set(span)}, {canon(x) for x in _label_set(gold)}
        union = pred | ref
        return RewardResult(score=len(pred & ref) / len(union) if union and pred else 0.0)
    key = canon(span)
    accepted = {canon(gold), *(canon(s) for s in extra)}
    return RewardResult(score=float(bool(key) and key in accepted), info={"answer": span})


def _digits(text: str | None) -> list[int]:
    return [int(c) for c in re.sub(r"[^0-9.]", "", (text or "").replace(".", "0"))]


def sudoku_valid(grid: Sequence[int]) -> bool:
    """Whether a flat n*n grid (n a perfect square) has 1..n once per row, column and box.

    >>> sudoku_valid([int(c) for c in "3142243142131324"]), sudoku_valid([1] * 16)
    (True, False)
    """
    n = math.isqrt(len(grid))
    b = math.isqrt(n)
    if n * n != len(grid) or b * b != n or n == 0:
        return False
    want = set(range(1, n + 1))
    rows = [grid[r * n : (r + 1) * n] for r in range(n)]
    cols = [grid[c::n] for c in range(n)]
    boxes = [[grid[(br + i) * n + bc + j] for i in range(b) for j in range(b)]
             for br in range(0, n, b) for bc in range(0, n, b)]
    return all(set(unit) == want for unit in rows + cols + boxes)


@register_reward("grid")
def grid(completion: str, prompt: Prompt, size: int = 4, fallback: Fallback = "none") -> RewardResult:
    """r = 1 if the answer grid is a valid size x size Sudoku keeping every given of metadata.puzzle (or equals the gold) else 0

    >>> from reinforced.types import Prompt
    >>> p = Prompt("p", "q", answer="3142243142131324", metadata={"puzzle": "3102200002100320"})
    >>> grid("<answer>3 1 4 2\\n2 4 3 1\\n4 2 1 3\\n1 3 2 4</answer>", p).score
    1.0
    """
    gold = _digits(gold_answer(prompt))
    puzzle = _digits(str(prompt.metadata.get("puzzle", "")))
    pred = _digits(extract_answer(completion, fallback))
    cells = size * size
    if len(pred) != cells:
        return RewardResult(score=0.0, components={"valid": 0.0, "givens": 0.0},
                            info={"reason": f"expected {cells} digits, got {len(pred)}"})
    valid = sudoku_valid(pred)
    givens = len(puzzle) == cells and all(g == 0 or g == p for g, p in zip(puzzle, pred, strict=True))
    match = len(gold) == cells and pred == gold
    ok = match or (valid and givens)
    return RewardResult(score=float(ok), components={"valid": float(valid), "givens": float(givens)})
