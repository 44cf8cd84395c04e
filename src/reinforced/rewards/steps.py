"""Map process-reward steps (character spans of a completion) onto its tokens.

A step's score r_k is placed on the token that contains the step's last character (t_k = first token
whose decoded prefix reaches ``end``), as in step-level PRM training (Math-Shepherd, arXiv 2312.08935;
PRIME's token-level process rewards). The algorithm then forms token advantages from these token
rewards (e.g. the sum of future step rewards, normalised within the group). Spans beyond the decoded
text land on the last token; scores of steps ending in the same token add up.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from reinforced.types import StepScore


def token_char_ends(token_ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> list[int]:
    """ends[t] = number of characters of decode(token_ids[: t + 1]). [T]

    Fast path: per-token decodes whose lengths add up to the full decode; otherwise (multi-byte
    characters split across tokens, merged spaces) every prefix is decoded.

    >>> token_char_ends([0, 1, 2], lambda ids: "".join(["ab", "c", "de"][i] for i in ids))
    [2, 3, 5]
    """
    total = len(decode(list(token_ids)))
    ends, acc = [], 0
    for tid in token_ids:
        acc += len(decode([tid]))
        ends.append(acc)
    if acc == total:
        return ends
    return [len(decode(list(token_ids[: t + 1]))) for t in range(len(token_ids))]


def step_token_rewards(steps: Sequence[StepScore], char_ends: Sequence[int]) -> list[float]:
    """Token rewards [T]: each step's score on the token holding its last character.

    >>> step_token_rewards([StepScore(0, 2, 1.0), StepScore(3, 5, -0.5)], [2, 3, 5])
    [1.0, 0.0, -0.5]
    """
    out = [0.0] * len(char_ends)
    if not out:
        return out
    for step in steps:  # char_ends is non-decreasing: a binary search keeps many steps O(S log T)
        t = min(bisect.bisect_left(char_ends, step.end), len(char_ends) - 1)
        out[t] += step.score
    return out
