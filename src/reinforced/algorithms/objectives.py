"""Policy objectives: per-token losses (to minimise) from current and behaviour logprobs.

With the token ratio ``r = exp(log pi_theta - log pi_old)`` (log-ratio clamped to +-20) and advantage ``A``:

* ``pg``        ``l = -A log pi_theta``: REINFORCE, no ratio (GPG arXiv 2504.02546; RLOO's paper form).
* ``ppo_clip``  ``l = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` (PPO, arXiv 1707.06347); asymmetric
  eps is DAPO's clip-higher (arXiv 2503.14476); with ``dual_clip_c = c > 1`` negative-advantage tokens are
  also bounded, ``l = min(l, -c A)`` (dual-clip, arXiv 1912.09729); ``ratio_cap = delta`` caps ``r`` before
  the min (INTELLECT-2's two-sided clip).
* ``gspo_seq``  the ratio is the sequence's geometric mean ``s_i = exp(mean_t log r_{i,t})`` (GSPO, arXiv
  2507.18071), written in the GSPO-token form ``s_i sg[pi]^-1 pi`` so that per-token advantages work; the
  clip acts on ``s_i``.
* ``cispo``     ``l = -sg[clip(r, 1 - eps_low, 1 + eps_high)] A log pi_theta``: the importance weight is
  clipped, the gradient of every token kept (MiniMax-M1, arXiv 2506.13585; verl's bounds).
* ``opmd``      Kimi k1.5 online policy mirror descent (arXiv 2501.12599, section 2.3.2): per sequence
  ``-A log pi(y) + (tau/2) (log pi(y) - log pi_old(y))^2`` with whole-response logprobs; written per token
  as ``-A log pi_t + (tau/2) D_i (log pi_t - log pi_old_t)`` with ``D_i`` the sequence's summed log-ratio,
  so the token sum is the sequence loss (aggregate with a token *sum*).

Every objective has the signature ``(logprobs, old_logprobs, advantages, mask, clip, **params) ->
(per_token_loss [N, T], stats)``; all tensors [N, T]. Stats are floats, means over the mask's tokens:
``clip_frac_low`` / ``clip_frac_high`` (tokens whose gradient the clip removed on each side),
``dual_clip_frac``, ``approx_kl`` (``mean(r - 1 - log r)``, KL(old || current) estimate), ``ratio_mean``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from reinforced.algorithms.kl import MAX_LOG_RATIO
from reinforced.registry import Registry

if TYPE_CHECKING:
    from reinforced.algorithms.spec import ClipConfig

Stats = dict[str, float]
MAX_SEQ_LOG_RATIO = 10.0  # verl's GSPO guard: a sequence ratio above e^10 is numerical noise, not signal


class Objective(Protocol):
    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: ClipConfig,
        **params: float,
    ) -> tuple[Tensor, Stats]: ...


OBJECTIVES: Registry[Objective] = Registry("policy objective")


def masked_mean(x: Tensor, mask: Tensor) -> float:
    """Mean of ``x`` over ``mask`` as a float (0.0 for an empty mask); [N, T] -> float.

    >>> masked_mean(torch.tensor([[1.0, 5.0], [3.0, 7.0]]), torch.tensor([[1, 0], [1, 0]]))
    2.0
    """
    m = mask.bool()
    if not bool(m.any()):
        return 0.0
    return float(x.detach()[m].float().mean())


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    return (logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def _ratio_stats(ratio: Tensor, log_ratio: Tensor, mask: Tensor) -> Stats:
    r, lr = ratio.detach(), log_ratio.detach()
    return {"approx_kl": masked_mean(r - 1 - lr, mask), "ratio_mean": masked_mean(r, mask)}


def _clipped_surrogate(ratio: Tensor, advantages: Tensor, mask: Tensor, clip: ClipConfig) -> tuple[Tensor, Stats]:
    """``-min(r A, clip(r) A)`` with optional ratio cap and dual clip; [N, T] -> ([N, T], stats)."""
    if clip.ratio_cap is not None:
        ratio = ratio.clamp(max=clip.ratio_cap)
    low, high = 1.0 - clip.eps_low, 1.0 + clip.eps_high
    loss = -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)
    r = ratio.detach()
    stats = {
        "clip_frac_low": masked_mean(((r < low) & (advantages < 0)).float(), mask),
        "clip_frac_high": masked_mean(((r > high) & (advantages > 0)).float(), mask),
        "dual_clip_frac": 0.0,
    }
    if clip.dual_clip_c is not None:
        bound = -clip.dual_clip_c * advantages
        dual = (advantages < 0) & (loss.detach() > bound)
        loss = torch.where(advantages < 0, torch.minimum(loss, bound), loss)
        stats["dual_clip_frac"] = masked_mean(dual.float(), mask)
    return loss, stats


@OBJECTIVES.register("pg")
def pg(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: ClipConfig
) -> tuple[Tensor, Stats]:
    """REINFORCE ``-A log pi``; the clip config is unused.

    >>> loss, _ = pg(torch.tensor([[-1.0, -2.0]]), torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]),
    ...              torch.ones(1, 2), None)
    >>> loss
    tensor([[0.5000, 1.0000]])
    """
    log_ratio = _log_ratio(logprobs, old_logprobs)
    stats = {"clip_frac_low": 0.0, "clip_frac_high": 0.0, "dual_clip_frac": 0.0}
    return -advantages * logprobs, stats | _ratio_stats(log_ratio.exp(), log_ratio, mask)


@OBJECTIVES.register("ppo_clip")
def ppo_clip(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: ClipConfig
) -> tuple[Tensor, Stats]:
    """PPO clipped surrogate on token ratios (asymmetric eps, optional dual clip and ratio cap).

    >>> from reinforced.algorithms.spec import ClipConfig
    >>> lp = torch.tensor([[1.5, 1.25, 5.0]]).log()
    >>> loss, s = ppo_clip(lp, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3),
    ...                    ClipConfig(eps_low=0.2, eps_high=0.28, dual_clip_c=3.0))
    >>> -loss
    tensor([[ 1.2800,  1.2500, -3.0000]])
    """
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = log_ratio.exp()
    loss, stats = _clipped_surrogate(ratio, advantages, mask, clip)
    return loss, stats | _ratio_stats(ratio, log_ratio, mask)


def sequence_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Mean token log-ratio per sequence, ``log s_i``; [N, T] -> [N].

    >>> float(sequence_log_ratio(torch.tensor([[0.1, -0.2, 0.4]]), torch.zeros(1, 3), torch.ones(1, 3)).exp())
    1.1051709651947021
    """
    m = mask.to(logprobs.dtype)
    diff = torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))
    return diff.sum(1) / m.sum(1).clamp(min=1)


@OBJECTIVES.register("gspo_seq")
def gspo_seq(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: ClipConfig
) -> tuple[Tensor, Stats]:
    """GSPO: clip the length-normalised sequence ratio ``s_i`` (GSPO-token form, per-token advantages).

    >>> from reinforced.algorithms.spec import ClipConfig
    >>> lp = torch.tensor([[0.1, -0.2, 0.4]])
    >>> loss, s = gspo_seq(lp, torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3),
    ...                    ClipConfig(eps_low=3e-4, eps_high=4e-4))
    >>> round(float(-loss[0, 0]), 4), s["clip_frac_high"]
    (1.0004, 1.0)
    """
    seq = sequence_log_ratio(logprobs, old_logprobs, mask).clamp(max=MAX_SEQ_LOG_RATIO)  # [N]
    # Value s_i on every token; gradient s_i * grad log pi_t (the sg[] trick of GSPO-token).
    log_s = seq.detach().unsqueeze(1) + logprobs - logprobs.detach()  # [N, T]
    ratio = log_s.exp()
    loss, stats = _clipped_surrogate(ratio, advantages, mask, clip)
    return loss, stats | _ratio_stats(ratio, log_s, mask)


@OBJECTIVES.register("cispo")
def cispo(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: ClipConfig
) -> tuple[Tensor, Stats]:
    """CISPO: ``-sg[clip(r)] A log pi``; every token keeps a gradient.

    >>> from reinforced.algorithms.spec import ClipConfig
    >>> lp = torch.tensor([[1.5, 0.5]]).log()
    >>> loss, s = cispo(lp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), ClipConfig())
    >>> (loss / -lp)
    tensor([[1.2000, 0.8000]])
    """
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = log_ratio.exp().detach()
    low, high = 1.0 - clip.eps_low, 1.0 + clip.eps_high
    weight = ratio.clamp(low, high)
    stats = {
        "clip_frac_low": masked_mean((ratio < low).float(), mask),
        "clip_frac_high": masked_mean((ratio > high).float(), mask),
        "dual_clip_frac": 0.0,
    }
    return -weight * advantages * logprobs, stats | _ratio_stats(ratio, log_ratio, mask)


@OBJECTIVES.register("opmd")
def opmd(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: ClipConfig,
    tau: float = 1.0,
) -> tuple[Tensor, Stats]:
    """Kimi k1.5 OPMD; summed over a row's tokens it is ``-A log pi(y) + tau/2 (log pi(y)/pi_old(y))^2``.

    >>> lp = torch.tensor([[-1.0, -1.0]]); old = torch.tensor([[-1.5, -1.5]])
    >>> loss, _ = opmd(lp, old, torch.full((1, 2), 0.5), torch.ones(1, 2), None, tau=2.0)
    >>> float(loss.sum())  # 0.5 * 2 + (2/2) * 1.0^2
    2.0
    """
    if tau < 0:
        raise ValueError(f"opmd tau must be >= 0, got {tau}")
    diff = torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))  # [N, T]
    seq_diff = diff.sum(dim=1, keepdim=True)  # [N, 1]
    loss = -advantages * logprobs + 0.5 * tau * seq_diff * diff
    log_ratio = _log_ratio(logprobs, old_logprobs)
    stats = {"clip_frac_low": 0.0, "clip_frac_high": 0.0, "dual_clip_frac": 0.0}
    return loss, stats | _ratio_stats(log_ratio.exp(), log_ratio, mask)
