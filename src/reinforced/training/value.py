"""The critic of value-based methods (PPO, VC-PPO, Open-Reasoner-Zero): an LM backbone + a scalar head.

V(s_t) is read from the hidden state that predicts completion token t (column S + t - 1), i.e. the value of
the prefix before token t, so GAE's ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` lines up with the policy's
per-token log-probs. The backbone starts as a copy of the policy's (Open-Reasoner-Zero: critic initialised
from the base model, value head random); VC-PPO's value pretraining then fits it before any policy update.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from reinforced.types import TrainBatch


class ValueHead(nn.Module):
    """Linear hidden -> scalar value, initialised small so values start near 0 (rewards are O(1)).

    Used on the critic's own backbone (``ValueModel``) or directly on the policy's last hidden states
    (``critic.shared_trunk``: one forward, policy and value losses share the trunk's gradient).
    """

    def __init__(self, hidden: int, seed: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=gen) / hidden)
            self.linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)  # [..., H] -> [...]


class ValueModel(nn.Module):
    """Backbone (the decoder stack of a causal LM) + linear head -> one value per position."""

    def __init__(self, causal_lm: nn.Module, seed: int = 0) -> None:
        super().__init__()
        lm = copy.deepcopy(causal_lm)
        self.backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
        self.head = ValueHead(lm.config.get_text_config().hidden_size, seed)
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.head(out.last_hidden_state).squeeze(-1)  # [n, S+T]


def completion_values(critic: nn.Module, batch: TrainBatch) -> torch.Tensor:
    """[n, T] V(prefix before completion token t), zero outside the completion mask."""
    values = critic(batch.input_ids, batch.attention_mask)  # [n, S+T]
    s, t = batch.prompt_len, batch.completion_mask.shape[1]
    return values[:, s - 1 : s - 1 + t] * batch.completion_mask
