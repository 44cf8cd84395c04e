"""KL estimators between the policy and a frozen reference, per sampled token.

With ``x = log pi_theta(o_t) - log pi_ref(o_t)`` at a token sampled from the policy (Schulman, "Approximating
KL divergence", 2020):

* ``k1 = x``: unbiased for KL(pi_theta || pi_ref) but high variance and can be negative; as a *loss* its
  expected gradient is zero on-policy, so it belongs in the reward (classic RLHF-PPO, REINFORCE++, RLOO).
* ``k2 = x^2 / 2``: biased value, but its expected gradient is the gradient of KL(pi_theta || pi_ref).
* ``k3 = exp(-x) + x - 1 >= 0``: unbiased, low variance (GRPO, DeepSeekMath arXiv 2402.03300); as a loss
  its expected gradient is that of the forward KL(pi_ref || pi_theta).

Placement (``KLConfig.placement``): ``loss`` adds ``coef * aggregate(k)`` computed with the current logprobs
to the policy loss; ``reward`` subtracts ``coef * k_t`` (behaviour vs reference logprobs) from the token
rewards before advantages; ``none`` builds no reference model at all.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from reinforced.registry import Registry

# exp(-x) overflows float32 beyond ~88; verl/OpenRLHF clamp the log-ratio to +-20 before exponentiating.
MAX_LOG_RATIO = 20.0


class KLEstimator(Protocol):
    def __call__(self, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor: ...


KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``log pi - log pi_ref`` per token; [N, T] -> [N, T].

    >>> round(float(k1(torch.tensor(0.5).log(), torch.tensor(0.25).log())), 6)
    0.693147
    """
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``(log pi - log pi_ref)^2 / 2`` per token; [N, T] -> [N, T].

    >>> round(float(k2(torch.tensor(0.5).log(), torch.tensor(0.25).log())), 6)
    0.240227
    """
    return 0.5 * (logprobs - ref_logprobs).square()


@KL_ESTIMATORS.register("k3")
def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """``exp(-x) + x - 1`` with ``x = log pi - log pi_ref`` (clamped to +-20); [N, T] -> [N, T].

    >>> round(float(k3(torch.tensor(0.25).log(), torch.tensor(0.5).log())), 6)
    0.306853
    """
    x = (logprobs - ref_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.expm1(-x) + x
