"""Value-based helpers: clipped value loss, explained variance, and VC-PPO's pretraining stop rule.

Clipped value loss (PPO as implemented in OpenAI baselines; verl ``compute_value_loss``), per token:
``0.5 max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2)`` with R the GAE returns.
Explained variance ``1 - Var[R - V] / Var[R]`` over loss tokens: 1 is a perfect critic, 0 no better
than a constant. VC-PPO (Yuan et al., arXiv 2503.01491) trains the critic on rollouts of the frozen
initial policy until its loss stops improving; ``plateaued`` is that stopping rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def clipped_value_error(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None) -> tuple[Tensor, Tensor]:
    """Per-token ``0.5 max(unclipped, clipped)`` squared error and where the clipped branch won; [N, T].

    >>> err, used = clipped_value_error(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[0.0]]), 0.2)
    >>> err, used
    (tensor([[0.5000]]), tensor([[False]]))
    """
    err = (values - returns).square()
    if clip is None:
        return 0.5 * err, torch.zeros_like(err, dtype=torch.bool)
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    err_c = (clipped - returns).square()
    return 0.5 * torch.maximum(err, err_c), (err_c > err).detach()


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over the mask's tokens; [N, T] -> float (0.0 when Var[R] is 0).

    >>> explained_variance(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3))
    1.0
    """
    m = mask.bool()
    r, v = returns.detach()[m].double(), values.detach()[m].double()
    if r.numel() < 2 or float(r.var()) == 0.0:
        return 0.0
    return float(1.0 - (r - v).var() / r.var())


def plateaued(history: Sequence[float], patience: int, tol: float) -> bool:
    """True when none of the last ``patience`` losses improved on the best earlier one by more than
    ``tol`` (relative); needs at least ``patience + 1`` values.

    >>> plateaued([1.0, 0.5, 0.3, 0.299, 0.2995], patience=2, tol=0.01)
    True
    >>> plateaued([1.0, 0.5, 0.3, 0.2, 0.1], patience=2, tol=0.01)
    False
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if len(history) <= patience:
        return False
    best_before = min(history[:-patience])
    return min(history[-patience:]) > best_before - tol * abs(best_before)
