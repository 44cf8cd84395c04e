"""Math and number rewards, each on the extracted answer span only.

``math_answer``: r = 1 if Math-Verify (huggingface/Math-Verify, pinned ``math-verify>=0.7,<1``, tested
with 0.9.0) judges the answer equal to the gold, else 0. Math-Verify is the only judge of equivalence;
this module only (1) extracts the span: the last ``<answer>`` block, else every ``\\boxed{}`` after the
reasoning, else the configured fallback; (2) normalises what Math-Verify misreads: ``\\$`` currency signs
and thousands separators (``1 000``, ``1\\,000``); (3) rejects hedges: an ``or`` / ``\\pm`` the gold does
not have, and several distinct boxes or ``$..$`` segments are joined into one list, so ``\\boxed{5}
\\boxed{7}`` is the set {5, 7} (wrong for gold 7, right for gold ``5, 7``); (4) falls back to number
equality only when both sides are plain numbers in full (never a number prefix: ``2\\sqrt{3}`` is not 2).
An unparseable gold scores None ("skip", logged), as in open-r1 (rewards-and-paradigms.md section 9
item 3). Math-Verify's own signal-based time-outs only work in a main thread, so they are switched off
here: the composer's worker enforces the time limit. Agreement with Math-Verify alone is measured on a
corpus in tests/unit/test_math_grader_corpus.py, which explains every difference.

``numeric``: Reason-RFT tolerance (arXiv 2503.20752), with d = |pred - gold|,
lo = max(rel_tol*|gold|, abs_tol), hi = max(soft_tol*|gold|, lo): r = 1 if d <= lo, 0 if d > hi,
else (1 + cos(pi*(d - lo)/(hi - lo)))/2. ``abs_tol`` keeps gold = 0 working (their code divides by 0).
The span must be one number (``x =`` prefix and a unit suffix allowed); ``3 or 4`` is no number.

``count``: r = 1 if the one integer the span states equals the gold (digits or number words up to
ninety-nine; ``There are 3.`` states 3, ``3 or 4`` states none); ``partial`` gives
max(0, 1 - |pred - gold| / max(|gold|, 1)).

``expression_equals_target`` (Countdown / Game of 24, TinyZero): r = 1 if the expression uses each of
``metadata["numbers"]`` exactly once and evaluates exactly (fractions) to the target. A recursive
descent parser over + - * / ( ); model text is never evaluated.

Every parser here scans model text in linear time: single character classes, no nested quantifiers.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections import Counter
from fractions import Fraction
from typing import Any

from reinforced.rewards.base import (
    Fallback,
    answer_blocks,
    extract_answer,
    gold_answer,
    register_reward,
)
from reinforced.types import Prompt, RewardResult


class _DropTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # the worker enforces time limits instead
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


# ------------------------------------------------------------------------------------------------------
# Span extraction and normalisation. Math-Verify judges; this only decides what it is shown.

_BOX_OPENERS = ("\\boxed{", "\\fbox{")


def all_boxed(text: str) -> list[str]:
    """Contents of every top-level ``\\boxed{...}`` / ``\\fbox{...}``, in order (braces balanced; an
    unclosed box is dropped). One left-to-right pass.

    >>> all_boxed(r"\\boxed{5} or \\boxed{\\frac{1}{2}} and \\boxed{7")
    ['5', '\\\\frac{1}{2}']
    """
    out: list[str] = []
    pos = 0
    nxt = {o: text.find(o) for o in _BOX_OPENERS}  # next match per opener, refreshed only once passed
    while True:
        nxt = {o: (n if n < 0 or n >= pos else text.find(o, pos)) for o, n in nxt.items()}
        starts = [n for n in nxt.values() if n >= 0]
        if not starts:
            return out
        i = text.index("{", min(starts)) + 1
        depth, j = 1, i
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            return out  # unbalanced: a truncated box is not an answer
        out.append(text[i : j - 1].strip())
        pos = j


def math_span(completion: str, fallback: Fallback = "none") -> str | None:
    """The answer span ``math_answer`` grades: the last ``<answer>`` block (its boxes if it has any),
    else every box after the last ``</think>``, else ``extract_answer``'s fallback. Distinct boxes are
    joined with ", " so that two boxes are one list answer, not a free second guess.

    >>> math_span(r"<think>\\boxed{1}</think> so \\boxed{5} \\boxed{7}"), math_span("<answer> $6$ </answer>")
    ('5, 7', '$6$')
    """
    blocks = answer_blocks(completion)
    if blocks:
        boxes = all_boxed(blocks[-1])
        parts = boxes or [blocks[-1].strip()]
    else:
        cut = completion.lower().rfind("</think>")
        parts = all_boxed(completion[cut:] if cut >= 0 else completion)
        if not parts:
            span = extract_answer(completion, fallback)
            parts = [span] if span else []
    distinct = list(dict.fromkeys(p for p in parts if p))
    return ", ".join(distinct) if distinct else None


_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3})((?:(?: |\\,|\\ |\{,\}|\\!)\d{3})+)(?![\d])")
_SEP_RE = re.compile(r" |\\,|\\ |\{,\}|\\!")


def normalize_math(text: str) -> str:
    """What Math-Verify misreads, rewritten: ``\\$`` (currency) dropped and digit groups joined
    (``1 000``, ``1\\,000``, ``1{,}000``). Decimal commas are left alone: ``1,5`` is the list 1, 5.

    >>> normalize_math(r"\\$1\\,234\\,567 and 1 000"), normalize_math("1,5")
    ('1234567 and 1000', '1,5')
    """
    text = text.replace("\\$", "").strip()
    return _THOUSANDS_RE.sub(lambda m: m.group(1) + _SEP_RE.sub("", m.group(2)), text)


_OR_RE = re.compile(r"(?<![A-Za-z\\])or(?![A-Za-z])|\\pm|\\mp|±|∓", re.IGNORECASE)
_DOLLAR_SEG_RE = re.compile(r"\$+([^$]+)\$+")


def _hedged(gold: str, pred: str) -> bool:
    """``or`` / ``\\pm`` in the prediction when the gold is one answer (no ``or``, ``\\pm`` or comma):
    two answers offered as one. For a list gold (``1,-2``) Math-Verify compares ``1 or -2`` as a set."""
    return _OR_RE.search(pred) is not None and _OR_RE.search(gold) is None and "," not in gold


def _join_segments(span: str) -> str:
    """Several ``$..$`` segments with different contents become one list (Math-Verify keeps the last)."""
    segs = list(dict.fromkeys(s.strip() for s in _DOLLAR_SEG_RE.findall(span) if s.strip()))
    return f"${', '.join(segs)}$" if len(segs) > 1 else span


_PLAIN_RE = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?(?:/(\d+))?")
_PLAIN_FRAC_RE = re.compile(r"([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")


def plain_number(text: str | None) -> float | None:
    """The value of a span that is one plain number in full (``-3``, ``1,234.5``, ``2e3``, ``3/4``,
    ``\\frac{3}{4}``, ``$5$``); None for anything else, so no prefix is ever read.

    >>> [plain_number(s) for s in ["1,234.5", "-3/4", "\\\\dfrac{1}{8}", "$7$", "2\\\\sqrt{3}", "7 or 8", "1,5"]]
    [1234.5, -0.75, 0.125, 7.0, None, None, None]
    """
    if text is None:
        return None
    text = normalize_math(text).strip().strip("$").strip()
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    m = _PLAIN_FRAC_RE.fullmatch(text)
    if m:
        num, den = float(m.group(2)), float(m.group(3))
    else:
        m = _PLAIN_RE.fullmatch(text)
        if not m:
            return None
        exp = int(m.group(3) or 0) if len(m.group(3) or "") < 5 else 999  # a huge exponent is no answer
        if abs(exp) > 300:
            return None
        num = float(m.group(2)) * 10.0**exp
        den = float(m.group(4) or 1)
    if den == 0 or not math.isfinite(num):
        return None
    return (-num if m.group(1) == "-" else num) / den


@functools.lru_cache(maxsize=4096)
def _parse_math(text: str) -> tuple[Any, ...]:
    """Math-Verify parse of an isolated span (wrapped in $..$ so bare LaTeX is found); cached."""
    from math_verify import parse  # imported lazily: importing it costs ~0.5 s

    wrapped = text if "$" in text or "\\(" in text or "\\[" in text else f"${text}$"
    return tuple(parse(wrapped, parsing_timeout=None))  # type: ignore[arg-type]


_BASE_RE = re.compile(r"(\w+)_\{?(\d+)\}?")


def _same_text(gold: str, pred: str) -> bool:
    squash = lambda s: re.sub(r"\s+", "", s.replace("$", "")).rstrip(".")  # noqa: E731
    return bool(squash(gold)) and squash(gold) == squash(pred)


def math_equal(gold: str, pred: str, *, whole_text: bool = False) -> bool | None:
    """Whether answer span ``pred`` equals ``gold``: Math-Verify on the normalised spans, hedges
    rejected, then plain-number equality when both sides are plain numbers (module docstring).
    None when the gold is empty or cannot be parsed at all. ``whole_text``: ``pred`` is a whole
    response (the ``whole`` fallback), so Math-Verify finds its final answer and the span-level hedge
    rules (``or`` and several ``$..$``, which prose is full of) are not applied.

    >>> math_equal("5", "\\\\frac{10}{2}"), math_equal("48", "48^\\\\circ"), math_equal("[1,2)", "[1, 2)")
    (True, True, True)
    >>> math_equal("1/2", "0.6"), math_equal("2\\\\sqrt{3}", "2"), math_equal("7", "7 \\\\pm 1")
    (False, False, False)
    """
    from math_verify import verify

    gold_boxes = list(dict.fromkeys(all_boxed(gold)))  # boxes in a gold are its answer, as for a prediction
    gold, pred = normalize_math(", ".join(gold_boxes) if gold_boxes else gold), normalize_math(pred)
    if not whole_text:
        pred = _join_segments(pred)
        if _hedged(gold, pred):
            return False
    if _same_text(gold, pred):
        return True
    base = _BASE_RE.fullmatch(gold.strip("$ "))
    if base:  # Math-Verify drops the subscript of 52_8, so 52_9 and "52_8 or 52_9" would pass
        m = _BASE_RE.fullmatch(pred.strip("$ ")) or re.fullmatch(r"(\d+)()", pred.strip("$ "))
        return bool(m) and m.group(1) == base.group(1) and m.group(2) in ("", base.group(2))
    g, p = _parse_math(gold), _parse_math(pred)
    if g and p and verify(list(g), list(p), timeout_seconds=None):  # type: ignore[arg-type]
        return True
    gn, pn = plain_number(gold), plain_number(pred)
    if gn is not None and pn is not None:
        return math.isclose(gn, pn, rel_tol=1e-6, abs_tol=1e-9)
    if not g and gn is None and not gold.strip("$ "):
        return None
    return False


@register_reward("math_answer")
def math_answer(completion: str, prompt: Prompt, fallback: Fallback = "none") -> RewardResult:
    """r = 1 if math_verify(gold, answer span) (hedges rejected; number fallback only for plain numbers) else 0 (None if the gold is unparseable)

    >>> from reinforced.types import Prompt
    >>> math_answer("<think>3 red and 45 blue</think><answer>48</answer>", Prompt("p", "q", answer="48")).score
    1.0
    >>> math_answer(r"\\boxed{5} \\boxed{7}", Prompt("p", "q", answer="7")).score
    0.0
    """
    gold = gold_answer(prompt)
    if gold is None:
        return RewardResult(score=None, info={"error": "prompt has no gold answer"})
    span = math_span(completion, fallback)
    if span is None or not span.strip():
        return RewardResult(score=0.0, info={"answer": span, "reason": "no answer span"})
    ok = math_equal(gold, span, whole_text=fallback == "whole" and span == extract_answer(completion, "whole"))
    if ok is None:
        return RewardResult(score=None, info={"error": f"unparseable gold answer {gold!r}"})
    return RewardResult(score=float(ok), info={"answer": span})


_NUM_TOKEN_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.\d+)?(?:[eE][+-]?\d{1,3})?(?:/\d+)?")
_UNIT_EXP_RE = re.compile(r"(?<=[A-Za-z])\^\{?-?\d{1,2}\}?")  # m^2, not 3^{2}
_UNIT_RE = re.compile(r"[A-Za-z%°\s/.{}^()*·-]*")  # no backslash: \pi, \sqrt are not units
_JOINER_RE = re.compile(r"(?<![A-Za-z])(?:and|to)(?![A-Za-z])", re.IGNORECASE)
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def span_number(span: str | None) -> float | None:
    """The number a span states in full: a plain number or number word, optionally after ``x =`` and
    before a unit (``cm``, ``m/s^2``, ``%``, ``^\\circ``). None for anything else (``3 or 4``, ``3, 4``).

    >>> [span_number(s) for s in ["x = -3.5 cm", "1 000", "\\\\frac{3}{4}", "50\\\\%", "seven", "3 or 4", "2\\\\pi"]]
    [-3.5, 1000.0, 0.75, 50.0, 7.0, None, None]
    """
    if span is None:
        return None
    text = _TEXT_RE.sub(r" \1 ", normalize_math(span)).strip().strip("$").strip()
    text = re.sub(r"^[A-Za-z]\w*\s*=\s*", "", text)
    whole = plain_number(text)
    if whole is not None:
        return whole
    words = _word_numbers(text)
    if len(words) == 1 and not re.search(r"\d", text) and re.findall(r"[a-z]+", text.lower()) == words[0][1]:
        return float(words[0][0])
    m = _NUM_TOKEN_RE.match(text)
    if not m or not m.group(0).strip("+-"):
        return None
    unit = _UNIT_EXP_RE.sub("", text[m.end():]).replace("\\circ", "").replace("\\%", "%")
    if not _UNIT_RE.fullmatch(unit) or _OR_RE.search(unit) or _JOINER_RE.search(unit):
        return None
    return plain_number(m.group(0))


_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def _word_numbers(text: str) -> list[tuple[int, list[str]]]:
    """Number words in the text as (value, words), ``twenty-one`` / ``twenty one`` joined."""
    out: list[tuple[int, list[str]]] = []
    prev_tens = False
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _UNITS and prev_tens and 0 < _UNITS.index(word) < 10:
            value, words = out[-1]
            out[-1] = (value + _UNITS.index(word), [*words, word])
            prev_tens = False
            continue
        prev_tens = word in _TENS
        if word in _UNITS or prev_tens:
            out.append((_UNITS.index(word) if word in _UNITS else 20 + 10 * _TENS.index(word), [word]))
    return out


def stated_integer(span: str | None) -> int | None:
    """The one integer a span states, in digits or words (``There are 3.``, ``twenty-one``); None when
    it states none, a non-integer, or several different numbers (``3 or 4``).

    >>> [stated_integer(s) for s in ["There are 3.", "twenty-one", "3 or 4", "1,200 birds", "2.5", "none"]]
    [3, 21, None, 1200, None, None]
    """
    text = normalize_math(span or "")
    text = re.sub(r"(?<!\d)(\d{1,3})((?:,\d{3})+)(?![\d,])", lambda m: m.group(1) + m.group(2).replace(",", ""), text)
    values = {float(t) for t in re.findall(r"\d+(?:\.\d+)?", text)}
    values |= {float(v) for v, _ in _word_numbers(text)}
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if value == int(value) else None


def tolerance_score(pred: float, gold: float, rel_tol: float, soft_tol: float, abs_tol: float) -> float:
    """Reason-RFT style tolerance score (see the module docstring).

    >>> [round(tolerance_score(p, 10, 0.05, 0.2, 1e-6), 6) for p in (10.3, 11, 12, 13)]
    [1.0, 0.75, 0.0, 0.0]
    >>> tolerance_score(0.0, 0.0, 0.05, 0.2, 1e-6)
    1.0
    """
    d, g = abs(pred - gold), abs(gold)
    lo = max(rel_tol * g, abs_tol)
    hi = max(soft_tol * g, lo)
    if d <= lo:
        return 1.0
    if d > hi or hi == lo:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (d - lo) / (hi - lo)))


@register_reward("numeric")
def numeric(
    completion: str,
    prompt: Prompt,
    rel_tol: float = 1e-6,
    soft_tol: float = 0.0,
    abs_tol: float = 1e-6,
    fallback: Fallback = "none",
) -> RewardResult:
    """r = 1 if |pred-gold| <= max(rel_tol|gold|, abs_tol); cosine decay to 0 at soft_tol|gold|; else 0

    >>> from reinforced.types import Prompt
    >>> numeric("<answer>11</answer>", Prompt("p", "q", answer="10"), rel_tol=0.05, soft_tol=0.2).score
    0.75
    """
    gold = span_number(gold_answer(prompt))
    if gold is None:
        return RewardResult(score=None, info={"error": f"gold {prompt.answer!r} is not a number"})
    pred = span_number(extract_answer(completion, fallback))
    if pred is None:
        return RewardResult(score=0.0, info={"reason": "no number in the answer"})
    return RewardResult(score=round(tolerance_score(pred, gold, rel_tol, soft_tol, abs_tol), 12),
                        info={"answer": pred})


@register_reward("count")
def count(completion: str, prompt: Prompt, partial: bool = False, fallback: Fallback = "none") -> RewardResult:
    """r = 1 if the one integer the answer states == gold else 0; partial: max(0, 1 - |pred-gold| / max(|gold|, 1))

    >>> from reinforced.types import Prompt
    >>> [count(f"<answer>{a}</answer>", Prompt("p", "q", answer="3")).score for a in ("three", "There are 3.", "3 or 4")]
    [1.0, 1.0, 0.0]
    """
    gold = stated_integer(gold_answer(prompt))
    if gold is None:
        return RewardResult(score=None, info={"error": f"gold {prompt.answer!r} is not an integer"})
    pred = stated_integer(extract_answer(completion, fallback))
    if pred is None:
        return RewardResult(score=0.0, info={"reason": "no single integer in the answer"})
    if partial:
        return RewardResult(score=max(0.0, 1.0 - abs(pred - gold) / max(abs(gold), 1.0)))
    return RewardResult(score=float(pred == gold))


# ------------------------------------------------------------------------------------------------------
# A safe arithmetic parser: numbers, + - * /, parentheses, unary minus. Exact with Fractions.

_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|(.))")
_MAX_TOKENS = 200  # an answer longer than this is not a Countdown expression; also bounds recursion


class ExpressionError(ValueError):
    """The text is not a well-formed arithmetic expression."""


def _tokens(text: str) -> list[str]:
    text = text.replace("×", "*").replace("÷", "/").replace("\\times", "*").replace("\\div", "/")
    text = text.replace("\\cdot", "*").replace("−", "-").replace("[", "(").replace("]", ")")
    out: list[str] = []
    for m in _TOKEN_RE.finditer(text.strip()):
        tok = m.group(1) or m.group(2)
        if tok is None or tok.isspace():
            continue
        if m.group(2) and tok not in "+-*/()":
            raise ExpressionError(f"unexpected character {tok!r}")
        out.append(tok)
    if len(out) > _MAX_TOKENS:
        raise ExpressionError(f"expression longer than {_MAX_TOKENS} tokens")
    return out


class _Parser:
    """Recursive descent: expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
    factor := '-' factor | '(' expr ')' | number."""

    def __init__(self, toks: list[str]) -> None:
        self.toks = toks
        self.pos = 0
        self.used: list[Fraction] = []

    def peek(self) -> str | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self) -> str:
        if self.pos >= len(self.toks):
            raise ExpressionError("unexpected end of expression")
        self.pos += 1
        return self.toks[self.pos - 1]

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op, rhs = self.take(), self.factor()
            if op == "/" and rhs == 0:
                raise ExpressionError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor(self) -> Fraction:
        tok = self.take()
        if tok == "-":
            return -self.factor()
        if tok == "(":
            value = self.expr()
            if self.take() != ")":
                raise ExpressionError("missing ')'")
            return value
        if tok[0].isdigit():
            self.used.append(Fraction(tok))
            return self.used[-1]
        raise ExpressionError(f"unexpected {tok!r}")


def evaluate_expression(text: str) -> tuple[Fraction, list[Fraction]]:
    """Exact value of an arithmetic expression and the numbers it uses (in order); raises ExpressionError.

    >>> evaluate_expression("(8 - 2) * (3 + 1)")
    (Fraction(24, 1), [Fraction(8, 1), Fraction(2, 1), Fraction(3, 1), Fraction(1, 1)])
    """
    parser = _Parser(_tokens(text))
    value = parser.expr()
    if parser.pos != len(parser.toks):
        raise ExpressionError(f"unexpected {parser.toks[parser.pos]!r} after the expression")
    return value, parser.used


@register_reward("expression_equals_target")
def expression_equals_target(completion: str, prompt: Prompt, fallback: Fallback = "none") -> RewardResult:
    """r = 1 if the answer expression uses each of metadata.numbers exactly once and equals the target else 0

    >>> from reinforced.types import Prompt
    >>> p = Prompt("p", "q", answer="24", metadata={"numbers": [4, 7, 8, 8]})
    >>> expression_equals_target("<answer>(7 - 8 / 8) * 4</answer>", p).score
    1.0
    """
    numbers = prompt.metadata.get("numbers")
    target = prompt.metadata.get("target", prompt.answer)
    if numbers is None or target is None:
        return RewardResult(score=None, info={"error": "needs metadata['numbers'] and a target"})
    span = extract_answer(completion, fallback)
    if not span:
        return RewardResult(score=0.0, info={"reason": "no answer span"})
    span = re.split(r"=", span)[0]  # "expr = 24" counts as "expr"
    try:
        value, used = evaluate_expression(span)
    except ExpressionError as err:
        return RewardResult(score=0.0, info={"reason": f"not an expression: {err}"})
    expected = Counter(Fraction(str(n)) for n in numbers)
    if Counter(used) != expected:
        return RewardResult(score=0.0, info={"reason": "numbers not used exactly once", "used": str(used)})
    ok = value == Fraction(str(target).strip())
    return RewardResult(score=float(ok), info={"value": str(value)})
