"""Length and repetition shaping. Lengths are in tokens (``Completion.num_tokens``), filled by the composer
through the context parameters of base.py (``num_tokens``, ``correct``, ``group_num_tokens``,
``group_correct``); ``correct`` is the completion's accuracy from the accuracy terms, counted as correct
by ``types.is_correct`` (> 0.5, the project's one definition).

- ``overlong``, DAPO soft overlong punishment (arXiv 2503.14476 eq. 13), L = max_tokens, C = cache_tokens:
  r = 0 if |y| <= L - C; ((L - C) - |y|) / C if L - C < |y| <= L; -1 if |y| > L; times ``penalty_factor``.
- ``kimi_length``, Kimi k1.5 length reward (arXiv 2501.12599 sec. 2.3.3): over the group,
  lambda_i = 0.5 - (len_i - min_len)/(max_len - min_len) (all 0 if max_len = min_len);
  r = lambda_i if correct else min(0, lambda_i).
- ``cosine_length``, cosine length scaling (Yeo et al., arXiv 2502.03373):
  r = r_L + (r_0 - r_L)(1 + cos(pi L / L_max)) / 2 with (r_0, r_L) = (max_correct, min_correct) if correct,
  (min_wrong, max_wrong) if wrong; length >= L_max - exceed_margin scores ``exceed`` when set. Unlike
  VLM-R1's copy, correctness is really used (rewards-and-paradigms.md section 9 item 12).
- ``repetition`` (open-r1 / demystify): r = max_penalty * (1 - #unique n-grams / #n-grams) over
  whitespace tokens; 0 for texts shorter than n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reinforced.rewards.base import register_reward
from reinforced.types import Prompt, RewardResult, is_correct


def dapo_overlong(length: int, max_tokens: int, cache_tokens: int) -> float:
    """DAPO soft overlong punishment of a length.

    >>> [dapo_overlong(n, 20480, 4096) for n in (16000, 16384, 18432, 20480, 20481)]
    [0.0, 0.0, -0.5, -1.0, -1.0]
    """
    if cache_tokens <= 0 or cache_tokens > max_tokens:
        raise ValueError(f"cache_tokens must be in (0, max_tokens={max_tokens}], got {cache_tokens}")
    free = max_tokens - cache_tokens
    if length <= free:
        return 0.0
    if length <= max_tokens:
        return (free - length) / cache_tokens
    return -1.0


@register_reward("overlong")
def overlong(
    completion: str,
    prompt: Prompt,
    num_tokens: int,
    max_tokens: int,
    cache_tokens: int | None = None,
    penalty_factor: float = 1.0,
) -> RewardResult:
    """r = 0 if |y| <= L-C; ((L-C)-|y|)/C if L-C < |y| <= L; -1 beyond (DAPO; L=max_tokens, C=cache_tokens, default L/5)

    >>> from reinforced.types import Prompt
    >>> overlong("...", Prompt("p", "q"), num_tokens=18432, max_tokens=20480, cache_tokens=4096).score
    -0.5
    """
    cache = cache_tokens if cache_tokens is not None else max(1, max_tokens // 5)
    return RewardResult(score=penalty_factor * dapo_overlong(num_tokens, max_tokens, cache))


def kimi_lambdas(lengths: Sequence[int]) -> list[float]:
    """Kimi k1.5 lambda_i = 0.5 - (len_i - min) / (max - min); all 0 when every length is equal.

    >>> kimi_lambdas([100, 200, 300, 500])
    [0.5, 0.25, 0.0, -0.5]
    """
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    return [0.5 - (n - lo) / (hi - lo) for n in lengths]


@register_reward("kimi_length")
def kimi_length(
    completion: str,
    prompt: Prompt,
    num_tokens: int,
    correct: float,
    group_num_tokens: Sequence[int],
) -> RewardResult:
    """r = lambda if correct else min(0, lambda), lambda = 0.5 - (len - min_len)/(max_len - min_len) over the group

    >>> from reinforced.types import Prompt
    >>> kimi_length("", Prompt("p", "q"), num_tokens=100, correct=0.0, group_num_tokens=[100, 300]).score
    0.0
    """
    lo, hi = min(group_num_tokens), max(group_num_tokens)
    lam = 0.0 if hi == lo else 0.5 - (num_tokens - lo) / (hi - lo)
    return RewardResult(score=lam if is_correct(correct) else min(0.0, lam))


def cosine_scale(length: int, max_tokens: int, r0: float, r_end: float) -> float:
    """r_end + (r0 - r_end) * (1 + cos(pi * min(length, max_tokens) / max_tokens)) / 2.

    >>> [round(cosine_scale(n, 1000, 1.0, 0.5), 6) for n in (0, 250, 500, 1000)]
    [1.0, 0.926777, 0.75, 0.5]
    """
    progress = min(length, max_tokens) / max_tokens
    return r_end + 0.5 * (r0 - r_end) * (1.0 + math.cos(math.pi * progress))


@register_reward("cosine_length")
def cosine_length(
    completion: str,
    prompt: Prompt,
    num_tokens: int,
    correct: float,
    max_tokens: int,
    min_wrong: float = -1.0,
    max_wrong: float = -0.5,
    min_correct: float = 0.5,
    max_correct: float = 1.0,
    exceed: float | None = None,
    exceed_margin: int = 16,
) -> RewardResult:
    """r = r_L + (r_0 - r_L)(1 + cos(pi L/L_max))/2; (r_0, r_L) = (max_correct, min_correct) if correct else (min_wrong, max_wrong)

    >>> from reinforced.types import Prompt
    >>> cosine_length("", Prompt("p", "q"), num_tokens=500, correct=0.0, max_tokens=1000).score
    -0.75
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    if exceed is not None and num_tokens >= max_tokens - exceed_margin:
        return RewardResult(score=exceed, info={"exceeded": True})
    ok = is_correct(correct)
    r0, r_end = (max_correct, min_correct) if ok else (min_wrong, max_wrong)
    return RewardResult(score=cosine_scale(num_tokens, max_tokens, r0, r_end))


def repetition_rate(text: str, ngram: int) -> float:
    """1 - #unique n-grams / #n-grams over whitespace tokens (0 for fewer than n tokens).

    >>> repetition_rate("a b a b a b", 2), repetition_rate("a b c", 2)
    (0.6, 0.0)
    """
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    words = text.lower().split()
    grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


@register_reward("repetition")
def repetition(completion: str, prompt: Prompt, ngram: int = 3, max_penalty: float = -1.0) -> RewardResult:
    """r = max_penalty * (1 - #unique n-grams / #n-grams) over whitespace tokens

    >>> from reinforced.types import Prompt
    >>> repetition("go go go go go", Prompt("p", "q"), ngram=1).score
    -0.8
    """
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be <= 0 (a penalty), got {max_penalty}")
    return RewardResult(score=max_penalty * repetition_rate(completion, ngram))
