"""Held-out evaluation: accuracy, pass@k and mean completion length per set.

pass@k uses the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374): with n samples of which c are
correct, ``pass@k = 1 - C(n-c, k) / C(n, k)``. Accuracy is the mean correctness of the first sample (the
greedy one when evaluating at temperature 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from reinforced.types import Prompt, RolloutGroup, SamplingParams


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
    acc = [g.accuracy[0] if g.accuracy else 0.0 for g in groups]
    lengths = [c.num_tokens for g in groups for c in g.completions]
    metrics = {
        f"{prefix}/accuracy": sum(acc) / len(acc),
        f"{prefix}/completion_len": sum(lengths) / len(lengths),
        f"{prefix}/truncated_frac": sum(c.truncated for g in groups for c in g.completions) / len(lengths),
    }
    k = 2
    while k <= n:
        correct = [sum(a >= 1.0 for a in (g.accuracy or ())) for g in groups]
        metrics[f"{prefix}/pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(groups)
        k *= 2
    if n > 1:
        metrics[f"{prefix}/mean_accuracy"] = sum(sum(g.accuracy or ()) / n for g in groups) / len(groups)
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
