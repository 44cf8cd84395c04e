"""The trainer-facing functions: one call per stage of the RL step (docs/contracts.md).

    group_keep_mask     accuracy [P, G]          -> which groups enter the batch (DAPO dynamic sampling)
    compute_advantages  rewards [P, G] (+ values) -> advantages [N, T] (+ critic returns)
    prune_samples       advantages [N, T]        -> which completions enter the update (CPPO)
    policy_loss         logprobs [n, T]          -> this micro-batch's share of the step's loss
    value_loss          values [n, T]            -> this micro-batch's share of the critic loss

Value-free advantages (outcome estimator ``A_i`` broadcast over the tokens of completion i):
``A_{i,t} = A_i - beta sum_{s >= t} KL_s`` when the KL is placed in the reward (``kl.reward_form='token'``,
OpenRLHF's RLOO); with ``kl.reward_form='sequence'`` (RLOO paper, TRL) the estimator sees
``R_i - beta sum_t KL_{i,t}`` instead and ``A_i`` is broadcast unchanged. For
the whitening estimators (``reinforce_pp``, ``batch_zscore``) the KL-shaped per-token returns are whitened
(REINFORCE++, arXiv 2501.03262). With step scores (``token_rewards``, each at the last token of its step)
the process advantage of DeepSeekMath (arXiv 2402.03300, section 4.1.3) is added:
``A_{i,t} += process_weight * sum_{steps s ending at or after t} zscore_group(score_s)``
(``process_mode='outcome_plus_process'``; the composer keeps step-scoring terms out of R so each reward
counts once). ``process_mode='process'`` is DeepSeekMath's process supervision: that sum alone, no outcome
term; ``'outcome'`` ignores the step scores.

Value-based advantages (PPO, arXiv 1707.06347): token rewards ``r_t = [t = last] R - beta KL_t`` (+
``process_weight`` times the step scores), GAE with ``lam_actor`` (or VAPO's length-adaptive lambda) for
the policy and ``lam_critic`` for the value targets (VC-PPO's decoupled GAE), advantages whitened over
the batch's loss tokens.

Rows are group-major: row ``i * G + j`` is completion j of prompt i. Stats are floats.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import Tensor

from reinforced.algorithms.advantages import (
    ADVANTAGES,
    adaptive_lambda,
    gae,
    group_mean,
    masked_whiten,
    process_advantages,
    reward_to_go,
)
from reinforced.algorithms.aggregation import AGGREGATORS, LossNormalizer
from reinforced.algorithms.filters import (
    accuracy_stats,
    informative_groups,
    sequence_advantage,
    top_abs_per_group,
)
from reinforced.algorithms.kl import KL_ESTIMATORS
from reinforced.algorithms.objectives import OBJECTIVES, masked_mean
from reinforced.algorithms.spec import AlgorithmSpec
from reinforced.algorithms.value import clipped_value_error, explained_variance

Stats = dict[str, float]


@dataclass(frozen=True)
class AdvantageInputs:
    """What advantages are computed from; [P, G] rewards and [N, T] token tensors (N = P * G)."""

    rewards: Tensor  # [P, G] composed scores (NaN: failed reward, advantage 0)
    completion_mask: Tensor  # [N, T] bool, loss tokens
    old_logprobs: Tensor  # [N, T] behaviour policy
    ref_logprobs: Tensor | None = None  # [N, T] only when the KL is in the reward
    values: Tensor | None = None  # [N, T] critic values at rollout (value-based methods)
    token_rewards: Tensor | None = None  # [N, T] step scores at each step's last token, 0 elsewhere
    step_mask: Tensor | None = None  # [N, T] step ends (None: the non-zero entries of token_rewards)


@dataclass(frozen=True)
class AdvantageOutputs:
    advantages: Tensor  # [N, T], 0 outside the mask
    returns: Tensor | None  # [N, T] critic targets, None for value-free methods
    stats: Stats = field(default_factory=dict)


def group_keep_mask(spec: AlgorithmSpec, accuracy: Tensor) -> tuple[Tensor, Stats]:
    """Groups to keep from ``accuracy`` [P, G]: all of them, or with dynamic sampling the non-uniform
    ones (judged on accuracy, never on the shaped score). Returns ``(keep [P] bool, stats)``.
    """
    stats = accuracy_stats(accuracy)
    if spec.dynamic_sampling is None:
        keep = torch.ones(accuracy.shape[0], dtype=torch.bool, device=accuracy.device)
    else:
        keep = informative_groups(accuracy)
    stats["filter/pass_rate"] = float(keep.float().mean()) if keep.numel() else 0.0
    return keep, stats


def kl_values(spec: AlgorithmSpec, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL estimate [n, T], clamped to ``+-kl.clamp`` (verl ``kl_penalty``, OpenRLHF
    ``compute_approx_kl``: 10) so one token whose log-probs drifted far cannot dominate the step."""
    kl = KL_ESTIMATORS[spec.kl.estimator](logprobs, ref_logprobs)
    return kl if spec.kl.clamp is None else kl.clamp(-spec.kl.clamp, spec.kl.clamp)


def _kl_reward(spec: AlgorithmSpec, inputs: AdvantageInputs) -> Tensor | None:
    """``beta * KL_t`` of behaviour vs reference per token [N, T] when the KL is in the reward."""
    if not (spec.needs_reference and spec.kl.placement == "reward"):
        return None
    if inputs.ref_logprobs is None:
        raise ValueError(f"kl.placement='reward' (preset {spec.name!r}) needs AdvantageInputs.ref_logprobs")
    kl = kl_values(spec, inputs.old_logprobs, inputs.ref_logprobs)
    return spec.kl.coef * torch.where(inputs.completion_mask.bool(), kl, torch.zeros_like(kl))


def _outcome_tokens(spec: AlgorithmSpec, inputs: AdvantageInputs, kl_reward: Tensor | None) -> Tensor:
    """Value-free per-token advantages [N, T] from the outcome estimator (and KL in the reward)."""
    rewards, mask = inputs.rewards, inputs.completion_mask.bool()
    p, g = rewards.shape
    fn = ADVANTAGES[spec.advantage]
    params = dict(spec.advantage_params)
    if "lengths" in inspect.signature(fn).parameters:
        params["lengths"] = mask.sum(1).view(p, g)
    if kl_reward is not None and spec.kl.reward_form == "sequence":
        # RLOO paper / TRL: the sequence's summed KL penalty is part of the reward the baseline sees.
        rewards, kl_reward = rewards - kl_reward.sum(1).view(p, g), None
    if kl_reward is not None and spec.advantage in ("reinforce_pp", "batch_zscore"):
        # Whitening must see the KL-shaped per-token returns, not the outcome alone.
        finite = torch.where(torch.isfinite(rewards), rewards, torch.zeros_like(rewards))
        centred = finite if spec.advantage == "reinforce_pp" else torch.nan_to_num(group_mean(rewards))
        tokens = centred.reshape(-1, 1) - reward_to_go(kl_reward, mask)  # [N, T]
        return masked_whiten(tokens, mask.to(tokens.dtype), params.get("ddof", 1), params.get("eps", 1e-8))
    tokens = fn(rewards, **params).reshape(-1, 1).expand_as(inputs.old_logprobs)  # [N, T]
    if kl_reward is not None:
        tokens = tokens - reward_to_go(kl_reward, mask)
    return torch.where(mask, tokens, torch.zeros_like(tokens))


def _uses_steps(spec: AlgorithmSpec, inputs: AdvantageInputs) -> bool:
    return inputs.token_rewards is not None and spec.process_mode != "outcome" and spec.process_weight > 0


def _critic_tokens(spec: AlgorithmSpec, inputs: AdvantageInputs, kl_reward: Tensor | None) -> tuple[Tensor, Tensor]:
    """PPO: token rewards -> (decoupled) GAE -> whitening; returns (advantages, returns), both [N, T]."""
    critic, mask = spec.critic, inputs.completion_mask.bool()
    assert critic is not None
    if inputs.values is None:
        raise ValueError(f"advantage 'gae' (preset {spec.name!r}) needs AdvantageInputs.values from the critic")
    values = inputs.values.detach()
    n, t_len = mask.shape
    last = torch.where(mask, torch.arange(t_len, device=mask.device), -1).max(dim=1).values  # [N]
    outcome = torch.nan_to_num(inputs.rewards.reshape(-1).to(values.dtype))  # [N]
    token_rewards = torch.zeros_like(values)
    has = (last >= 0) & (spec.process_mode != "process")  # process supervision: no outcome reward
    token_rewards[has.nonzero().squeeze(1), last[has]] = outcome[has]
    if kl_reward is not None:
        token_rewards = token_rewards - kl_reward
    if _uses_steps(spec, inputs):
        token_rewards = token_rewards + spec.process_weight * torch.where(mask, inputs.token_rewards, 0.0)
    lam_actor: float | Tensor = critic.lam_actor
    if critic.lam_alpha is not None:
        lam_actor = adaptive_lambda(mask.sum(1), critic.lam_alpha).to(values.dtype)
    advantages, returns = gae(token_rewards, values, mask, critic.gamma, lam_actor)
    if not (isinstance(lam_actor, float) and lam_actor == critic.lam_critic):
        _, returns = gae(token_rewards, values, mask, critic.gamma, critic.lam_critic)
    if critic.whiten_advantages:
        advantages = masked_whiten(advantages, mask.to(values.dtype), critic.whiten_ddof)
    return advantages, returns


def compute_advantages(spec: AlgorithmSpec, inputs: AdvantageInputs) -> AdvantageOutputs:
    """Per-token advantages [N, T] (and critic returns) for ``inputs``; see the module docstring."""
    rewards, mask = inputs.rewards, inputs.completion_mask.bool()
    if rewards.numel() != mask.shape[0]:
        raise ValueError(f"rewards {tuple(rewards.shape)} do not match {mask.shape[0]} completion rows")
    kl_reward = _kl_reward(spec, inputs)
    returns = None
    if spec.critic is not None:
        advantages, returns = _critic_tokens(spec, inputs, kl_reward)
    else:
        advantages = torch.zeros_like(inputs.old_logprobs)
        if spec.process_mode != "process":
            advantages = _outcome_tokens(spec, inputs, kl_reward)
        if _uses_steps(spec, inputs):
            proc = process_advantages(inputs.token_rewards, mask, rewards.shape[1], inputs.step_mask)
            advantages = advantages + spec.process_weight * proc
    finite = rewards[torch.isfinite(rewards)]
    stats: Stats = {
        "reward/mean": float(finite.mean()) if finite.numel() else 0.0,
        "reward/std": float(finite.std()) if finite.numel() > 1 else 0.0,
        "reward/frac_zero_std_groups": frac_zero_spread_groups(rewards),
        "advantage/mean": masked_mean(advantages, mask),
        "advantage/std": float(advantages[mask].std()) if int(mask.sum()) > 1 else 0.0,
        "advantage/min": float(advantages[mask].min()) if bool(mask.any()) else 0.0,
        "advantage/max": float(advantages[mask].max()) if bool(mask.any()) else 0.0,
    }
    if kl_reward is not None:
        stats["kl_reward/mean"] = masked_mean(kl_reward, mask)
    if returns is not None and inputs.values is not None:
        stats["critic/explained_variance"] = explained_variance(inputs.values, returns, mask)
        stats["critic/returns_mean"] = masked_mean(returns, mask)
    return AdvantageOutputs(advantages, returns, stats)


def frac_zero_spread_groups(rewards: torch.Tensor) -> float:
    """Fraction of groups [P, G] whose valid (finite) rewards are all equal: no learning signal there.

    NaN marks a failed sample; it neither makes a group informative nor uniform.

    >>> nan = float("nan")
    >>> frac_zero_spread_groups(torch.tensor([[1.0, 1.0, nan], [0.0, 1.0, nan], [nan, nan, 2.0], [3.0, 1.0, 3.0]]))
    0.5
    """
    ok = torch.isfinite(rewards)
    top = torch.where(ok, rewards, -torch.inf).amax(dim=1)
    low = torch.where(ok, rewards, torch.inf).amin(dim=1)
    return float((~(top > low)).float().mean())


def prune_samples(
    spec: AlgorithmSpec, advantages: Tensor, completion_mask: Tensor, group_index: Tensor
) -> tuple[Tensor, Stats]:
    """CPPO: per prompt keep the completions with the largest |A| (``spec.prune``); all rows when off.

    ``advantages``, ``completion_mask`` [N, T]; ``group_index`` [N]. Returns ``(keep [N] bool, stats)``.
    """
    n = advantages.shape[0]
    if spec.prune is None:
        return torch.ones(n, dtype=torch.bool, device=advantages.device), {"prune/rate": 0.0}
    keep = top_abs_per_group(sequence_advantage(advantages, completion_mask), group_index, spec.prune.rate)
    return keep, {"prune/rate": 1.0 - float(keep.float().mean()) if n else 0.0}


def tis_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance weights ``min(pi_old / pi_rollout, C)`` per token [n, T], no gradient.

    ``old_logprobs`` are the trainer's log-probs of the sampled tokens before the update, ``rollout_logprobs``
    the rollout engine's (vLLM): the two differ through kernels and precision, which makes "on-policy" RL
    silently off-policy (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL";
    verl's ``tis_imp_ratio_cap``). Padding (both 0) gets weight 1.

    >>> tis_weights(torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[-1.0, -1.0, 0.0]]), cap=2.0)
    tensor([[2.0000, 1.0000, 0.1353]])
    """
    return torch.exp(old_logprobs.detach().float() - rollout_logprobs.float()).clamp(max=cap)


def policy_loss(
    spec: AlgorithmSpec,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    normalizer: LossNormalizer,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    rollout_logprobs: Tensor | None = None,
) -> tuple[Tensor, Stats]:
    """This micro-batch's share of ``objective + coef KL - c_H entropy``, aggregated with ``normalizer``
    (built once for the optimiser step), so summing the shares of all micro-batches gives the full loss.

    All tensors [n, T]. Stats: ``loss``, ``pg_loss``, ``clip_frac_low``, ``clip_frac_high``,
    ``dual_clip_frac``, ``approx_kl``, ``ratio_mean``, and ``kl_ref`` / ``entropy`` when given. With
    ``spec.tis_cap`` the objective's per-token loss is weighted by ``tis_weights(old_logprobs,
    rollout_logprobs, tis_cap)`` (stats ``tis_weight_mean``, ``tis_capped_frac``).
    """
    per_token, stats = OBJECTIVES[spec.objective](
        logprobs, old_logprobs, advantages, mask, spec.clip, **spec.objective_params
    )
    if spec.tis_cap is not None:
        if rollout_logprobs is None:
            raise ValueError(f"tis_cap={spec.tis_cap} needs the rollout engine's logprobs (rollout_logprobs) "
                             "beside the trainer's old_logprobs in policy_loss")
        weights = tis_weights(old_logprobs, rollout_logprobs, spec.tis_cap)  # [n, T]
        per_token = per_token * weights
        stats["tis_weight_mean"] = masked_mean(weights, mask)
        stats["tis_capped_frac"] = masked_mean((weights >= spec.tis_cap).float(), mask)
    aggregate = AGGREGATORS[spec.aggregation]
    loss = aggregate(per_token, mask, normalizer)
    stats["pg_loss"] = float(loss.detach())
    kl_in_loss = spec.needs_reference and spec.kl.placement == "loss"
    if kl_in_loss and ref_logprobs is None:
        raise ValueError(f"kl.placement='loss' (preset {spec.name!r}) needs ref_logprobs in policy_loss")
    if ref_logprobs is not None:
        kl = kl_values(spec, logprobs, ref_logprobs)  # [n, T]
        stats["kl_ref"] = masked_mean(kl, mask)
        if kl_in_loss:
            loss = loss + spec.kl.coef * aggregate(kl, mask, normalizer)
    if entropy is not None:
        stats["entropy"] = masked_mean(entropy, mask)
        if spec.entropy_coef > 0:
            loss = loss - spec.entropy_coef * aggregate(entropy, mask, normalizer)
    elif spec.entropy_coef > 0:
        raise ValueError(f"entropy_coef={spec.entropy_coef} needs the per-token entropy in policy_loss")
    stats["loss"] = float(loss.detach())
    return loss, stats


def value_loss(
    spec: AlgorithmSpec,
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    normalizer: LossNormalizer,
) -> tuple[Tensor, Stats]:
    """``aggregate(0.5 max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2))``, this micro-batch's share.

    Unweighted: a separate critic minimises it as is; with a shared trunk the caller adds
    ``critic.vf_coef`` times it to the policy loss (PPO's c1, once). All tensors [n, T]. Stats:
    ``value_loss`` (this share), ``vf_clip_frac``, ``explained_variance``, ``value_mean``.
    """
    if spec.critic is None:
        raise ValueError(f"preset {spec.name!r} has no critic; value_loss applies to value-based methods")
    per_token, clipped = clipped_value_error(values, old_values, returns, spec.critic.value_clip)
    aggregation = spec.aggregation if spec.aggregation != "seq_sum_constant" else "seq_mean_token_sum"
    raw = AGGREGATORS[aggregation](per_token, mask, normalizer)
    stats = {
        "value_loss": float(raw.detach()),
        "vf_clip_frac": masked_mean(clipped.float(), mask),
        "explained_variance": explained_variance(values, returns, mask),
        "value_mean": masked_mean(values, mask),
    }
    return raw, stats
