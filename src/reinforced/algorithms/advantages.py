"""Advantage estimators: outcome baselines over a group, batch whitening, process rewards and GAE.

Outcome estimators map the rewards of P prompts x G completions, ``R`` [P, G], to one advantage per
completion (broadcast over its tokens by the caller). With ``mu_g``, ``sigma_g`` the group's mean and std:

* ``group_zscore``  ``A = (R - mu_g) / (sigma_g + eps)``  GRPO, DeepSeekMath (arXiv 2402.03300)
* ``group_mean``    ``A = R - mu_g``                       Dr.GRPO (arXiv 2503.20783)
* ``rloo``          ``A = R - mean_{j != i} R_j = G/(G-1) (R - mu_g)``   RLOO (arXiv 2402.14740)
* ``batch_zscore``  group-centre, then whiten over all loss tokens of the batch (REINFORCE++-baseline)
* ``reinforce_pp``  whiten the raw rewards over all loss tokens of the batch (REINFORCE++, arXiv 2501.03262)
* ``opmd``          ``A = R - b`` with ``b`` the group mean or ``tau log mean exp(R / tau)`` (Kimi k1.5's
  estimate of ``tau log Z``, arXiv 2501.12599)
* ``gpg``           ``A = alpha (R - mu_g)``, ``alpha = #groups / #groups with non-zero std`` (GPG, 2504.02546)

Token whitening is ``(x - mean) / sqrt(var + eps)`` with token-weighted mean and variance over the loss
tokens (``lengths`` [P, G] gives each completion's token count; None means one token each).

Conventions (pinned by tests): std is Bessel-corrected (``ddof=1``) unless ``ddof=0``; a group of one has
zero advantage (its own mean is its baseline); NaN rewards (failed verifiers) are left out of every
statistic and get advantage 0; an all-equal group gets zero advantage.

``gae`` is generalised advantage estimation (Schulman et al., arXiv 1506.02438):
``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lambda A_{t+1}``, returns ``A_t + V_t``.
Positions outside the mask are skipped, carrying ``V_{t+1}`` and the running ``A`` through them (so a
masked tool-output span does not cut the recursion). ``lam`` may be a [N] tensor: VAPO's length-adaptive
``lambda = 1 - 1/(alpha l)`` (``adaptive_lambda``). Decoupled GAE (VC-PPO, arXiv 2503.01491) is two calls
with ``lambda_actor`` and ``lambda_critic``.

``process_advantages`` is DeepSeekMath's process supervision: step scores are z-scored over all steps of
the group, and a token's advantage is the sum of the normalised scores of the steps ending at or after it.

Data-parallel training splits a batch over ranks by whole groups: group statistics stay local, and the
batch-level sums (whitening, GPG's counts) go through ``batch_sums``, which the trainer sets to an
all-reduce over ranks for the duration of one step (``training/distributed.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

import torch
from torch import Tensor

from reinforced.registry import Registry


class AdvantageEstimator(Protocol):
    def __call__(self, rewards: Tensor, **params: object) -> Tensor: ...


ADVANTAGES: Registry[AdvantageEstimator] = Registry("advantage estimator")

_SUM_OVER_SHARDS: list[Callable[[Tensor], Tensor]] = []


@contextlib.contextmanager
def batch_sums(reduce: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, batch-level sums are ``reduce(local sums)`` (an all-reduce over data-parallel
    ranks, each holding whole groups of the batch), so whitening and batch counts are global."""
    _SUM_OVER_SHARDS.append(reduce)
    try:
        yield
    finally:
        _SUM_OVER_SHARDS.pop()


def _batch_sum(values: Tensor) -> Tensor:
    """Sum of ``values`` over the whole batch: this shard's, reduced over shards inside ``batch_sums``."""
    total = values.sum()
    return _SUM_OVER_SHARDS[-1](total) if _SUM_OVER_SHARDS else total


def _group_stats(rewards: Tensor, ddof: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, std and count per group over finite rewards; [P, G] -> ([P, 1], [P, 1], [P, 1])."""
    valid = torch.isfinite(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    count = valid.sum(dim=1, keepdim=True).to(rewards.dtype)
    mean = r.sum(dim=1, keepdim=True) / count.clamp(min=1)
    sq = torch.where(valid, (rewards - mean).square(), torch.zeros_like(rewards)).sum(dim=1, keepdim=True)
    std = (sq / (count - ddof).clamp(min=1)).sqrt()
    return mean, std, count


def _finish(adv: Tensor, rewards: Tensor, count: Tensor) -> Tensor:
    """Zero for NaN rewards and for groups of one finite reward."""
    keep = torch.isfinite(rewards) & (count > 1)
    return torch.where(keep, adv, torch.zeros_like(adv))


@ADVANTAGES.register("group_zscore")
def group_zscore(rewards: Tensor, eps: float = 1e-6, ddof: int = 1) -> Tensor:
    """GRPO: ``(R - mean_g) / (std_g + eps)``; [P, G] -> [P, G].

    ``eps``: 1e-6 (verl), 1e-4 (TRL), 0 exact. ``ddof``: 1 Bessel (all frameworks), 0 population.

    >>> group_zscore(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=0.0)
    tensor([[ 0.8660, -0.8660, -0.8660,  0.8660]])
    """
    mean, std, count = _group_stats(rewards, ddof)
    return _finish((rewards - mean) / (std + eps), rewards, count)


@ADVANTAGES.register("group_mean")
def group_mean(rewards: Tensor) -> Tensor:
    """Dr.GRPO: ``R - mean_g`` (no std, no difficulty bias); [P, G] -> [P, G].

    >>> group_mean(torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    tensor([[ 0.2500,  0.2500,  0.2500, -0.7500]])
    """
    mean, _, count = _group_stats(rewards, 0)
    return _finish(rewards - mean, rewards, count)


@ADVANTAGES.register("rloo")
def rloo(rewards: Tensor) -> Tensor:
    """Leave-one-out baseline ``R_i - mean_{j != i} R_j``; [P, G] -> [P, G].

    >>> rloo(torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    tensor([[ 0.3333,  0.3333,  0.3333, -1.0000]])
    """
    mean, _, count = _group_stats(rewards, 0)
    scale = count / (count - 1).clamp(min=1)
    return _finish(scale * (rewards - mean), rewards, count)


def masked_whiten(values: Tensor, weights: Tensor, ddof: int = 1, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with ``weights`` [same shape] counting each entry's tokens.

    A [N, T] value matrix with a 0/1 mask is token whitening; [P, G] values with completion lengths
    as weights give the same numbers per completion. Entries of weight 0 come back as 0.

    >>> masked_whiten(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]), ddof=0)
    tensor([-1.,  1.])
    """
    w = weights.to(values.dtype)
    v = torch.where(w > 0, values, torch.zeros_like(values))
    total = _batch_sum(w)
    mean = _batch_sum(v * w) / total.clamp(min=1e-12)
    var = _batch_sum(w * (v - mean).square()) / (total - ddof).clamp(min=1e-12)
    out = (v - mean) * torch.rsqrt(var + eps)
    return torch.where(w > 0, out, torch.zeros_like(out))


def _weights(rewards: Tensor, lengths: Tensor | None) -> Tensor:
    w = torch.ones_like(rewards) if lengths is None else lengths.to(rewards.dtype)
    return torch.where(torch.isfinite(rewards), w, torch.zeros_like(w))


@ADVANTAGES.register("batch_zscore")
def batch_zscore(rewards: Tensor, lengths: Tensor | None = None, eps: float = 1e-8, ddof: int = 1) -> Tensor:
    """REINFORCE++-baseline: ``R - mean_g``, then token-weighted whitening over the batch; [P, G].

    ``lengths`` [P, G]: loss tokens per completion (None: 1 each). ``ddof``: 1 verl, 0 OpenRLHF.

    >>> batch_zscore(torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0]]), ddof=1)
    tensor([[ 1.0000, -1.0000, -1.0000,  1.0000],
            [ 0.5000,  0.5000,  0.5000, -1.5000]])
    """
    return masked_whiten(group_mean(rewards), _weights(rewards, lengths), ddof, eps)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(rewards: Tensor, lengths: Tensor | None = None, eps: float = 1e-8, ddof: int = 1) -> Tensor:
    """REINFORCE++: the raw reward (gamma=1 return) whitened over all loss tokens of the batch; [P, G].

    With the KL in the reward, ``core.compute_advantages`` whitens the per-token returns instead.

    >>> reinforce_pp(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    tensor([[ 0.8660, -0.8660, -0.8660,  0.8660]])
    """
    finite = torch.where(torch.isfinite(rewards), rewards, torch.zeros_like(rewards))
    return masked_whiten(finite, _weights(rewards, lengths), ddof, eps)


@ADVANTAGES.register("opmd")
def opmd(rewards: Tensor, baseline: Literal["mean", "log_mean_exp"] = "mean", tau: float = 1.0) -> Tensor:
    """Kimi k1.5 OPMD: ``R - b``; ``b`` = group mean, or ``tau log mean_j exp(R_j / tau)``; [P, G].

    >>> opmd(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), baseline="log_mean_exp", tau=1.0)
    tensor([[ 0.3799, -0.6201, -0.6201,  0.3799]])
    """
    if baseline == "mean":
        return group_mean(rewards)
    if baseline != "log_mean_exp":
        raise ValueError(f"opmd baseline {baseline!r} is not one of 'mean', 'log_mean_exp'")
    if tau <= 0:
        raise ValueError(f"opmd tau must be > 0, got {tau}")
    valid = torch.isfinite(rewards)
    scaled = torch.where(valid, rewards / tau, torch.full_like(rewards, -math.inf))
    count = valid.sum(dim=1, keepdim=True)
    b = tau * (torch.logsumexp(scaled, dim=1, keepdim=True) - count.clamp(min=1).to(rewards.dtype).log())
    return _finish(rewards - b, rewards, count)


@ADVANTAGES.register("gpg")
def gpg(rewards: Tensor, alpha: Literal["groups", "responses"] = "groups", std: bool = False) -> Tensor:
    """GPG: ``alpha (R - mean_g) [/ std_g]``; [P, G] -> [P, G].

    ``alpha="groups"`` (GPG's code): #groups / #groups with non-zero std. ``"responses"`` (verl):
    #responses / #responses with non-zero reward. ``std``: divide by the group std (F_norm).

    >>> gpg(torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1]]))[:2]
    tensor([[ 0.7500, -0.7500, -0.7500,  0.7500],
            [ 0.3750,  0.3750,  0.3750, -1.1250]])
    """
    mean, sd, count = _group_stats(rewards, 1)
    centred = _finish(rewards - mean, rewards, count)
    if std:
        centred = torch.where(sd > 0, centred / sd.clamp(min=1e-12), torch.zeros_like(centred))
    if alpha == "groups":
        num, valid = int(_batch_sum(torch.ones(rewards.shape[0]))), int(_batch_sum((sd.squeeze(1) > 0).float()))
    elif alpha == "responses":
        finite = torch.isfinite(rewards)
        num, valid = int(_batch_sum(finite.float())), int(_batch_sum((finite & (rewards != 0)).float()))
    else:
        raise ValueError(f"gpg alpha {alpha!r} is not one of 'groups', 'responses'")
    return centred * (num / valid if valid > 0 else 1.0)


def reward_to_go(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_t = sum_{s >= t, s in mask} gamma^(#mask steps) r_s`` per row; [N, T] -> [N, T] (0 off-mask).

    >>> reward_to_go(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1, 1, 1]]))
    tensor([[6., 5., 3.]])
    """
    adv, _ = gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma, 1.0)
    return adv


def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation; all inputs [N, T] (``lam`` a float or [N]).

    Returns ``(advantages [N, T], returns [N, T])``, both 0 outside the mask.

    >>> adv, ret = gae(torch.tensor([[0.0, 0, 1]]), torch.tensor([[0.5, 0.6, 0.7]]),
    ...                torch.ones(1, 3), gamma=1.0, lam=0.95)
    >>> adv, ret
    (tensor([[0.4657, 0.3850, 0.3000]]), tensor([[0.9657, 0.9850, 1.0000]]))
    """
    m = mask.bool()
    n, t_len = token_rewards.shape
    lam_t = torch.as_tensor(lam, dtype=values.dtype, device=values.device).expand(n)  # [N]
    next_value = values.new_zeros(n)  # [N]
    running = values.new_zeros(n)  # [N]
    adv = torch.zeros_like(values)  # [N, T]
    for t in reversed(range(t_len)):
        on = m[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        step = delta + gamma * lam_t * running
        running = torch.where(on, step, running)
        next_value = torch.where(on, values[:, t], next_value)
        adv[:, t] = torch.where(on, running, torch.zeros_like(running))
    returns = torch.where(m, adv + values, torch.zeros_like(values))
    return adv, returns


def adaptive_lambda(lengths: Tensor, alpha: float) -> Tensor:
    """VAPO's length-adaptive actor lambda ``clamp(1 - 1/(alpha l), 0, 1)``; [N] -> [N].

    >>> adaptive_lambda(torch.tensor([20.0, 100.0, 1000.0, 4000.0]), alpha=0.05)
    tensor([0.0000, 0.8000, 0.9800, 0.9950])
    """
    if alpha <= 0:
        raise ValueError(f"length-adaptive lambda alpha must be > 0, got {alpha}")
    return (1.0 - 1.0 / (alpha * lengths.to(torch.float32).clamp(min=1))).clamp(0.0, 1.0)


def process_advantages(
    token_rewards: Tensor,
    mask: Tensor,
    group_size: int,
    step_mask: Tensor | None = None,
    eps: float = 1e-6,
    ddof: int = 1,
) -> Tensor:
    """DeepSeekMath process supervision; ``token_rewards`` [N, T] holds each step's score at its last token.

    Scores are z-scored over every step of the G completions of a prompt (rows are group-major), then a
    token's advantage is the sum of normalised scores of the steps ending at or after it. ``step_mask``
    [N, T] marks step ends (None: the non-zero entries of ``token_rewards``).

    >>> r = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, -1.0]])
    >>> process_advantages(r, torch.ones(2, 4), group_size=2, ddof=0)
    tensor([[ 1.4142,  1.4142,  0.7071,  0.7071],
            [-1.4142, -1.4142, -1.4142, -1.4142]])
    """
    m = mask.bool()
    steps = (token_rewards != 0) if step_mask is None else step_mask.bool()
    steps = steps & m
    n, t_len = token_rewards.shape
    if n % group_size:
        raise ValueError(f"{n} rows are not a whole number of groups of {group_size}")
    flat_r = token_rewards.reshape(n // group_size, group_size * t_len)  # [P, G*T]
    flat_s = steps.reshape(n // group_size, group_size * t_len)
    scores = torch.where(flat_s, flat_r, torch.full_like(flat_r, math.nan))
    mean, std, count = _group_stats(scores, ddof)
    normed = torch.where(flat_s & (count > 1), (flat_r - mean) / (std + eps), torch.zeros_like(flat_r))
    normed = normed.reshape(n, t_len)  # [N, T]
    # Sum of future (and current) step scores: a reverse cumulative sum along each row.
    return torch.where(m, normed.flip(1).cumsum(1).flip(1), torch.zeros_like(normed))
