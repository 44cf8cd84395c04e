"""The reward registry, parameter validation and the answer extraction every verifier shares.

A reward is ``REWARDS[name](completion: str, prompt: Prompt, **params) -> RewardResult``. Verifiers
never see the whole completion: ``extract_answer`` isolates the answer span first (the last
``<answer>...</answer>`` block, else the last ``\\boxed{...}``, else a configurable fallback), because
running a math verifier on the whole text picks numbers out of the reasoning (rewards-and-paradigms.md
section 2.2, "Pitfalls"; section 9 item 2).

Context parameters. Length shaping needs facts that are not in the text. A reward declares them as
keyword parameters with these reserved names, and ``RewardComposer`` fills them (users may not set them
in config): ``num_tokens`` (this completion's length in tokens, ``Completion.num_tokens``),
``truncated`` (it hit the generation limit), ``correct`` (this completion's accuracy from the accuracy
terms, 0..1), ``group_num_tokens`` and ``group_correct`` (the same for all G completions of its group).
Rewards that use ``correct``/``group_correct`` are scored after the accuracy terms.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from reinforced.registry import Registry, did_you_mean
from reinforced.types import Prompt, RewardResult

CONTEXT_PARAMS: tuple[str, ...] = ("num_tokens", "truncated", "correct", "group_num_tokens", "group_correct")
"""Parameter names the composer fills from the rollout; never set in config."""
NEEDS_ACCURACY: frozenset[str] = frozenset({"correct", "group_correct"})
Fallback = Literal["none", "last_number", "last_line", "whole"]
FALLBACKS: tuple[str, ...] = ("none", "last_number", "last_line", "whole")


class RewardFn(Protocol):
    """What a registered reward looks like (a plain function with a formula docstring)."""

    __name__: str

    def __call__(self, completion: str, prompt: Prompt, **params: Any) -> RewardResult: ...


REWARDS: Registry[Callable[..., RewardResult]] = Registry("reward")


def register_reward(name: str) -> Callable[[Callable[..., RewardResult]], Callable[..., RewardResult]]:
    """Register a reward under ``name``; its docstring's first line must state its formula."""

    def add(fn: Callable[..., RewardResult]) -> Callable[..., RewardResult]:
        if not (fn.__doc__ or "").strip():
            raise ValueError(f"reward {name!r} needs a docstring whose first line is its formula")
        return REWARDS.add(name, fn)

    return add


def describe_rewards() -> list[tuple[str, str]]:
    """(name, one-line formula) of every registered reward, sorted by name (``reinforced list rewards``)."""
    return [(name, (fn.__doc__ or "").strip().splitlines()[0].strip()) for name, fn in REWARDS.items()]


def context_params(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The reserved context parameters ``fn`` accepts, in CONTEXT_PARAMS order."""
    names = inspect.signature(fn).parameters
    return tuple(p for p in CONTEXT_PARAMS if p in names)


def _check_type(name: str, key: str, value: Any, hint: Any) -> None:
    """Literal and numeric annotations are checked; other annotations are trusted."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ValueError(f"reward {name!r}: bad value {value!r} for {key!r}; valid: {choices}")
        return
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return
        for arg in args:
            if arg is not type(None):
                _check_type(name, key, value, arg)
        return
    if hint in (float, int) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"reward {name!r}: {key!r} must be a number, got {value!r}")
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"reward {name!r}: {key!r} must be true or false, got {value!r}")


def validate_params(name: str, params: Mapping[str, Any], fn: Callable[..., Any] | None = None) -> None:
    """Check ``params`` against reward ``name``'s signature (``fn``: a reward not in the registry): unknown
    keys, reserved keys, missing required keys and Literal / numeric values are errors naming the value
    and the valid choices."""
    fn = REWARDS[name] if fn is None else fn
    sig = inspect.signature(fn)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    named = [p for p in list(sig.parameters.values())[2:] if p.name not in CONTEXT_PARAMS and p.kind not in variadic]
    required = [p.name for p in named if p.default is inspect.Parameter.empty]
    settable = [p.name for p in named]
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):  # **params: any key goes
        settable += [k for k in params if k not in settable and k not in CONTEXT_PARAMS]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a user function's annotations may name things that do not resolve here
        hints = {}
    for key, value in params.items():
        if key in CONTEXT_PARAMS:
            raise ValueError(f"reward {name!r}: {key!r} is filled from the rollout, do not set it in params")
        if key not in settable:
            hint = did_you_mean(key, settable)
            raise ValueError(
                f"reward {name!r} has no parameter {key!r};{hint} valid: {', '.join(settable) or '(none)'}"
            )
        if key in hints:
            _check_type(name, key, value, hints[key])
    for key in required:
        if key not in params:
            raise ValueError(f"reward {name!r} needs parameter {key!r} (set it in the term's params)")


# ------------------------------------------------------------------------------------------------------
# Answer extraction.

# Everything here runs on raw model text, some of it in the trainer process (hacking metrics, judge
# batching), outside the worker's time limit: every scan is linear in the text length. No pattern may
# backtrack over an unbounded span (``<answer>(.*?)</answer>`` is quadratic on unclosed tags, and a
# ``\s+\Z`` search is quadratic on long inner runs of whitespace), so tags are paired with str.find.
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_EOS_MARKERS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<eos>")
_EOS_REVERSED_RE = re.compile(r"(?:\s|" + "|".join(re.escape(m[::-1]) for m in _EOS_MARKERS) + ")*")


def strip_eos(text: str) -> str:
    """Drop trailing whitespace and end-of-sequence markers (linear time).

    >>> strip_eos("<answer>4</answer>\\n<|im_end|> ")
    '<answer>4</answer>'
    """
    # An anchored match on the reversed text is one pass; searching for ``(...)+\Z`` forwards retries at
    # every offset of an inner run (quadratic), and slicing marker by marker copies quadratically.
    return text[: len(text) - _EOS_REVERSED_RE.match(text[::-1]).end()]  # type: ignore[union-attr]


def _tag_positions(text: str, tag: str) -> list[int]:
    """Start offsets of ``tag`` in ``text``, ASCII case-insensitive; one linear scan."""
    pattern = re.compile(re.escape(tag), re.IGNORECASE)  # a literal: no backtracking
    return [m.start() for m in pattern.finditer(text)]


def tag_blocks(text: str, tag: str) -> list[str]:
    """Contents of every closed ``<tag>...</tag>`` block in order, paired like the non-greedy regex
    ``<tag>(.*?)</tag>`` (each opening tag takes the first closing tag after it), in linear time.

    >>> tag_blocks("<think>a</think> <THINK>b</think><think>unclosed", "think")
    ['a', 'b']
    """
    opens, closes = _tag_positions(text, f"<{tag}>"), _tag_positions(text, f"</{tag}>")
    width = len(tag) + 2
    blocks, ci, pos = [], 0, 0
    for start in opens:
        if start < pos:  # inside the previous block
            continue
        body = start + width
        while ci < len(closes) and closes[ci] < body:
            ci += 1
        if ci == len(closes):
            break
        blocks.append(text[body : closes[ci]])
        pos = closes[ci] + width + 1
        ci += 1
    return blocks


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent.

    >>> last_boxed(r"so \\boxed{1} then \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: a truncated box is not an answer


def answer_blocks(text: str) -> list[str]:
    """Contents of every closed ``<answer>`` block, in order (linear time, see ``tag_blocks``)."""
    return tag_blocks(text, "answer")


def extract_answer(text: str, fallback: str = "none") -> str | None:
    """The answer span: last ``<answer>`` block, else last ``\\boxed{}``, else ``fallback``.

    Inside an answer block a ``\\boxed{}`` is unwrapped and surrounding ``$`` are dropped, so
    ``<answer>$\\boxed{60}$</answer>`` gives ``60``. Fallbacks: ``none`` (no answer), ``last_number``,
    ``last_line``, ``whole`` (the whole text). Returns the stripped span, or None when nothing is found.

    >>> extract_answer("<think>3 red, 45 blue</think><answer>48</answer>")
    '48'
    >>> extract_answer(r"<answer>$\\boxed{60}$</answer>"), extract_answer(r"so \\boxed{7}.")
    ('60', '7')
    >>> extract_answer("I think it is 12, no 13.", fallback="last_number") is None
    False
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown answer fallback {fallback!r}; valid: {', '.join(FALLBACKS)}")
    blocks = answer_blocks(text)
    if blocks:
        span = blocks[-1]
        boxed = last_boxed(span)
        span = boxed if boxed is not None else span
        return span.strip().strip("$").strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    body = strip_eos(text)
    if fallback == "last_number":
        nums = _NUMBER_RE.findall(body)
        return nums[-1].rstrip(",") if nums else None
    if fallback == "last_line":
        lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
        return lines[-1] if lines else None
    if fallback == "whole":
        return body.strip() or None
    return None


def reasoning_text(text: str) -> str:
    """The reasoning: the last ``<think>`` block if any, else everything before the last answer block.

    >>> reasoning_text("<think>a+b</think><answer>3</answer>")
    'a+b'
    """
    thinks = tag_blocks(text, "think")
    if thinks:
        return thinks[-1].strip()
    opens = _tag_positions(text, "<answer>")  # not text.lower(): lower-casing can change offsets
    return (text[: opens[-1]] if opens else text).strip()


_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def normalize_text(text: str) -> str:
    """Lower-case, unwrap ``\\text{}``, drop ``$`` and end punctuation, collapse whitespace.

    >>> normalize_text("  The \\\\text{Eiffel}   Tower. ")
    'the eiffel tower'
    """
    text = _TEXT_WRAP_RE.sub(r"\1", text).replace("$", "")
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text.strip(" .,;:!?\"'")


_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen twenty").split()


def parse_number(text: str | None) -> float | None:
    """A number from an answer span: thousands commas, fractions ``a/b`` and ``\\frac{a}{b}``, ``x = 5``,
    a trailing unit or ``%``, number words up to twenty. None when there is no number.

    >>> [parse_number(s) for s in ["1,234", "x = -3.5 cm", "\\\\frac{3}{4}", "50%", "seven", "abc"]]
    [1234.0, -3.5, 0.75, 50.0, 7.0, None]
    """
    if text is None:
        return None
    text = text.strip().strip("$").replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    text = text.rsplit("=", 1)[-1].strip()
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}.*", text)
    if frac:
        den = float(frac.group(3))
        return None if den == 0 else (-1 if frac.group(1) else 1) * float(frac.group(2)) / den
    low = normalize_text(text)
    if low in _WORDS:
        return float(_WORDS.index(low))
    m = re.match(r"\s*(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)(?:\s*/\s*(\d+(?:\.\d+)?))?(?:[eE]([+-]?\d+))?", text)
    if not m or (m.group(1).count(",") and not re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", m.group(1))):
        return None
    value = float(m.group(1).replace(",", ""))
    if m.group(2):
        den = float(m.group(2))
        value = value / den if den else math.nan
    if m.group(3):
        value *= 10.0 ** int(m.group(3))
    return None if math.isnan(value) or math.isinf(value) else value


def gold_answer(prompt: Prompt) -> str | None:
    """The gold answer string of a prompt (``Prompt.answer``), stripped; None when absent."""
    return None if prompt.answer is None else str(prompt.answer).strip()
