"""Math and number rewards, each on the extracted answer span only.

``math_answer``: r = 1 if Math-Verify (huggingface/Math-Verify, pinned ``math-verify>=0.7,<1``, tested
with 0.9.0) judges the span equal to the gold, with a numeric fallback, else 0. Gold and span are both
parsed with the LaTeX + plain-expression extractors; units, ``x =``, degrees, fractions, intervals and
percentages are normalised by Math-Verify. An unparseable gold scores None ("skip", logged), as in
open-r1 (rewards-and-paradigms.md section 9 item 3). Math-Verify's own signal-based time-outs only work
in a main thread, so they are switched off here: the composer's worker enforces the time limit.

``numeric``: Reason-RFT tolerance (arXiv 2503.20752), with d = |pred - gold|,
lo = max(rel_tol*|gold|, abs_tol), hi = max(soft_tol*|gold|, lo): r = 1 if d <= lo, 0 if d > hi,
else (1 + cos(pi*(d - lo)/(hi - lo)))/2. ``abs_tol`` keeps gold = 0 working (their code divides by 0).

``count``: r = 1 if the integer equals the gold (number words accepted); ``partial`` gives
max(0, 1 - |pred - gold| / max(|gold|, 1)).

``expression_equals_target`` (Countdown / Game of 24, TinyZero): r = 1 if the expression uses each of
``metadata["numbers"]`` exactly once and evaluates exactly (fractions) to the target. A recursive
descent parser over + - * / ( ); model text is never evaluated.
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
    extract_answer,
    gold_answer,
    normalize_text,
    parse_number,
    register_reward,
)
from reinforced.types import Prompt, RewardResult


class _DropTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # the worker enforces time limits instead
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


@functools.lru_cache(maxsize=4096)
def _parse_math(text: str) -> tuple[Any, ...]:
    """Math-Verify parse of an isolated span (wrapped in $..$ so bare LaTeX is found); cached."""
    from math_verify import parse  # imported lazily: importing it costs ~0.5 s

    wrapped = text if "$" in text or "\\(" in text or "\\[" in text else f"${text}$"
    return tuple(parse(wrapped, parsing_timeout=None))  # type: ignore[arg-type]


def math_equal(gold: str, pred: str) -> bool | None:
    """Whether ``pred`` equals ``gold`` by Math-Verify, then by number, then by normalised string.
    None when the gold cannot be parsed at all (neither Math-Verify nor as a number nor as text).

    >>> math_equal("5", "\\\\frac{10}{2}"), math_equal("48", "48^\\\\circ"), math_equal("[1,2)", "[1, 2)")
    (True, True, True)
    >>> math_equal("1/2", "0.6")
    False
    """
    from math_verify import verify

    if normalize_text(pred) == normalize_text(gold) and gold.strip():
        return True
    g, p = _parse_math(gold), _parse_math(pred)
    if g and p and verify(list(g), list(p), timeout_seconds=None):  # type: ignore[arg-type]
        return True
    gn, pn = parse_number(gold), parse_number(pred)
    if gn is not None and pn is not None:
        return math.isclose(gn, pn, rel_tol=1e-6, abs_tol=1e-9)
    if not g and gn is None and not normalize_text(gold):
        return None
    return False


@register_reward("math_answer")
def math_answer(completion: str, prompt: Prompt, fallback: Fallback = "none") -> RewardResult:
    """r = 1 if math_verify(gold, answer span) or numeric/string equality else 0 (None if the gold is unparseable)

    >>> from reinforced.types import Prompt
    >>> math_answer("<think>3 red and 45 blue</think><answer>48</answer>", Prompt("p", "q", answer="48")).score
    1.0
    """
    gold = gold_answer(prompt)
    if gold is None:
        return RewardResult(score=None, info={"error": "prompt has no gold answer"})
    span = extract_answer(completion, fallback)
    if span is None or not span.strip():
        return RewardResult(score=0.0, info={"answer": span, "reason": "no answer span"})
    ok = math_equal(gold, span)
    if ok is None:
        return RewardResult(score=None, info={"error": f"unparseable gold answer {gold!r}"})
    return RewardResult(score=float(ok), info={"answer": span})


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
    gold = parse_number(gold_answer(prompt))
    if gold is None:
        return RewardResult(score=None, info={"error": f"gold {prompt.answer!r} is not a number"})
    pred = parse_number(extract_answer(completion, fallback))
    if pred is None:
        return RewardResult(score=0.0, info={"reason": "no number in the answer"})
    return RewardResult(score=round(tolerance_score(pred, gold, rel_tol, soft_tol, abs_tol), 12),
                        info={"answer": pred})


@register_reward("count")
def count(completion: str, prompt: Prompt, partial: bool = False, fallback: Fallback = "none") -> RewardResult:
    """r = 1 if int(answer) == gold else 0; partial: max(0, 1 - |pred-gold| / max(|gold|, 1))

    >>> from reinforced.types import Prompt
    >>> count("<answer>three</answer>", Prompt("p", "q", answer="3")).score
    1.0
    """
    gold = parse_number(gold_answer(prompt))
    if gold is None or gold != int(gold):
        return RewardResult(score=None, info={"error": f"gold {prompt.answer!r} is not an integer"})
    pred = parse_number(extract_answer(completion, fallback))
    if pred is None or pred != int(pred):
        return RewardResult(score=0.0, info={"reason": "no integer in the answer"})
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
