"""Held-out evaluation: accuracy, pass@k and mean completion length per set.

pass@k uses the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374): with n samples of which c are
correct, ``pass@k = 1 - C(n-c, k) / C(n, k)``. Accuracy is the mean accuracy of the first sample (the
greedy one when evaluating at temperature 0); "correct" is ``types.is_correct`` (accuracy > 0.5).

A sample whose verifier failed has NaN accuracy (rewards/compose.py): it is left out, never counted as
wrong. Accuracy averages the prompts whose first sample was scored (NaN when none was); pass@k uses the
n scored samples of each prompt that has at least k; ``failed_frac`` is the share of failed samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from reinforced.types import Prompt, RolloutGroup, SamplingParams, is_correct, valid


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k for one prompt.

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> round(pass_at_k(4, 1, 2), 6)
    0.5
    >>> pass_at_k(4, 0, 4), pass_at_k(4, 4, 1)
    (0.0, 1.0)
    """
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass@k needs 1 <= k <= num_samples, got k={k}, n={num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def summarize(groups: Sequence[RolloutGroup], prefix: str) -> dict[str, float]:
    """Metrics of one evaluated set: accuracy (first sample), pass@k for k in 1, 2, 4, ... <= n, length."""
    if not groups:
        return {}
    n = groups[0].group_size
    acc = valid([g.accuracy[0] if g.accuracy else 0.0 for g in groups])
    scored = [valid(g.accuracy or [0.0] * g.group_size) for g in groups]  # [P][<= G]
    lengths = [c.num_tokens for g in groups for c in g.completions]
    metrics = {
        f"{prefix}/accuracy": sum(acc) / len(acc) if acc else math.nan,
        f"{prefix}/failed_frac": 1.0 - sum(map(len, scored)) / len(lengths),
        f"{prefix}/completion_len": sum(lengths) / len(lengths),
        f"{prefix}/truncated_frac": sum(c.truncated for g in groups for c in g.completions) / len(lengths),
    }
    k = 2
    while k <= n:
        rates = [pass_at_k(len(a), sum(map(is_correct, a)), k) for a in scored if len(a) >= k]
        metrics[f"{prefix}/pass@{k}"] = sum(rates) / len(rates) if rates else math.nan
        k *= 2
    if n > 1:
        means = [sum(a) / len(a) for a in scored if a]
        metrics[f"{prefix}/mean_accuracy"] = sum(means) / len(means) if means else math.nan
    return metrics


class _Engine(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[RolloutGroup]: ...


class _Scorer(Protocol):
    def score(self, groups: Sequence[RolloutGroup]) -> tuple[list[RolloutGroup], dict[str, float]]: ...


def evaluate(
    engine: _Engine,
    scorer: _Scorer,
    sets: Mapping[str, Sequence[Prompt]],
    params: SamplingParams,
    batch_prompts: int = 16,
) -> tuple[dict[str, float], dict[str, list[RolloutGroup]]]:
    """Roll out every set with ``params`` (group_size = samples per prompt) and score it."""
    metrics: dict[str, float] = {}
    scored_sets: dict[str, list[RolloutGroup]] = {}
    for name, prompts in sets.items():
        scored: list[RolloutGroup] = []
        for i in range(0, len(prompts), batch_prompts):
            groups = engine.generate(prompts[i : i + batch_prompts], params)
            out, _ = scorer.score(groups)
            scored.extend(out)
        metrics.update(summarize(scored, f"eval/{name}"))
        scored_sets[name] = scored
    return metrics, scored_sets


def eval_sampling(temperature: float, num_samples: int, max_new_tokens: int, stop: tuple[str, ...],
                  seed: int) -> SamplingParams:
    """Sampling params for evaluation; temperature 0 means greedy (top-k 1)."""
    greedy = temperature == 0.0
    return SamplingParams(
        group_size=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=1.0 if greedy else temperature,
        top_k=1 if greedy else 0,
        stop=stop,
        seed=seed,
    )


def format_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Rows (metric, before, after) for the accuracy keys both evaluations have."""
    keys = [k for k in before if k.endswith("/accuracy") and k in after]
    return [(k, f"{100 * before[k]:.1f}%", f"{100 * after[k]:.1f}%") for k in keys]
