"""Loss aggregation: how per-token losses become the scalar of one optimiser step.

For the per-token loss matrix ``l[i, t]`` and loss mask ``m`` of all N sequences of one optimiser step
(every micro-batch and data-parallel rank together), with ``|o_i| = sum_t m[i, t]``:

=====================  ==========================================  ===========================  ===================
name                   loss                                        weight of token (i, t)       used by
=====================  ==========================================  ===========================  ===================
seq_mean_token_mean    (1/N) sum_i (1/|o_i|) sum_t l[i,t]          1 / (N |o_i|)                GRPO (DeepSeekMath)
token_mean             sum_i sum_t l[i,t] / sum_i |o_i|            1 / sum|o|                   DAPO (2503.14476)
seq_mean_token_sum     (1/N) sum_i sum_t l[i,t]                    1 / N                        REINFORCE, OPMD
seq_sum_constant       (1/(N L)) sum_i sum_t l[i,t], L constant    1 / (N L)                    Dr.GRPO (2503.20783)
=====================  ==========================================  ===========================  ===================

N counts sequences with at least one loss token (a fully masked row, e.g. a truncated completion under
overlong filtering, neither contributes nor dilutes). The counts N, sum|o| and L come from a
:class:`LossNormalizer` built once per optimiser step over all of its rows and handed to every
micro-batch, so that the sum over micro-batches (and ranks) of the aggregated loss equals the full-batch
loss exactly: dividing each micro-batch by its own count is the classic gradient-accumulation bug
(TRL #5619, OpenRLHF #1249).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from reinforced.registry import Registry

if TYPE_CHECKING:
    from reinforced.algorithms.spec import AlgorithmSpec


@dataclass(frozen=True)
class LossNormalizer:
    """The denominators of one optimiser step.

    ``num_sequences``: rows with at least one loss token; ``num_tokens``: loss tokens; ``constant``:
    Dr.GRPO's L (None when the aggregation does not use one).

    >>> m = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    >>> LossNormalizer.from_mask(m)
    LossNormalizer(num_sequences=2, num_tokens=3, constant=None)
    """

    num_sequences: int
    num_tokens: int
    constant: int | None = None

    @classmethod
    def from_mask(cls, completion_mask: Tensor, constant: int | None = None) -> LossNormalizer:
        """Counts of ``completion_mask`` [N, T] (all rows of the optimiser step)."""
        mask = completion_mask.bool()
        return cls(int(mask.any(dim=1).sum()), int(mask.sum()), constant)

    @classmethod
    def for_step(
        cls, spec: AlgorithmSpec, completion_mask: Tensor, max_completion_len: int | None = None
    ) -> LossNormalizer:
        """The normaliser of one optimiser step over all its rows ``completion_mask`` [N, T].

        ``seq_sum_constant`` needs L: ``spec.loss_constant``, else ``max_completion_len`` (the
        generation budget). The padded length T is never used: it changes from step to step.
        """
        constant = spec.loss_constant if spec.loss_constant is not None else max_completion_len
        if spec.aggregation == "seq_sum_constant" and constant is None:
            raise ValueError(
                "aggregation 'seq_sum_constant' needs a constant L: set the override 'loss_constant' or "
                "pass max_completion_len (the generation budget, rollout.max_new_tokens)"
            )
        return cls.from_mask(completion_mask, constant)

    @classmethod
    def combine(cls, parts: Iterable[LossNormalizer]) -> LossNormalizer:
        """Sum the counts of shards (data-parallel ranks) into the step's normaliser.

        >>> a, b = LossNormalizer(2, 5, 8), LossNormalizer(1, 3, 8)
        >>> LossNormalizer.combine([a, b])
        LossNormalizer(num_sequences=3, num_tokens=8, constant=8)
        """
        parts = list(parts)
        constants = {p.constant for p in parts}
        if len(constants) > 1:
            raise ValueError(f"shards disagree on the loss constant: {sorted(map(str, constants))}")
        return cls(sum(p.num_sequences for p in parts), sum(p.num_tokens for p in parts), constants.pop())


class Aggregator(Protocol):
    def __call__(
        self, per_token_loss: Tensor, mask: Tensor, normalizer: LossNormalizer | None = None
    ) -> Tensor: ...


AGGREGATORS: Registry[Aggregator] = Registry("loss aggregation")


def _normalizer(mask: Tensor, normalizer: LossNormalizer | None) -> LossNormalizer:
    return normalizer if normalizer is not None else LossNormalizer.from_mask(mask)


def _masked_row_sums(per_token_loss: Tensor, mask: Tensor) -> Tensor:
    # where() rather than multiply: a NaN/inf on a padding position must not leak into the sum.
    return torch.where(mask.bool(), per_token_loss, torch.zeros_like(per_token_loss)).sum(dim=1)  # [N]


def _safe(count: int) -> int:
    # An all-masked step has zero loss; dividing by 1 keeps it 0 instead of NaN.
    return max(count, 1)


@AGGREGATORS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    per_token_loss: Tensor, mask: Tensor, normalizer: LossNormalizer | None = None
) -> Tensor:
    """Mean over sequences of each sequence's token mean (GRPO, "sample-level").

    ``per_token_loss``, ``mask``: [N, T]; returns a scalar.

    >>> loss = torch.tensor([[1.0, 3.0], [4.0, 0.0]]); m = torch.tensor([[1, 1], [1, 0]])
    >>> float(seq_mean_token_mean(loss, m))
    3.0
    """
    norm = _normalizer(mask, normalizer)
    lengths = mask.bool().sum(dim=1).clamp(min=1)  # [N]
    return (_masked_row_sums(per_token_loss, mask) / lengths).sum() / _safe(norm.num_sequences)


@AGGREGATORS.register("token_mean")
def token_mean(per_token_loss: Tensor, mask: Tensor, normalizer: LossNormalizer | None = None) -> Tensor:
    """Sum of all loss tokens over the step's loss-token count (DAPO's token-level loss, global).

    >>> loss = torch.tensor([[1.0, 3.0], [4.0, 0.0]]); m = torch.tensor([[1, 1], [1, 0]])
    >>> round(float(token_mean(loss, m)), 4)
    2.6667
    """
    norm = _normalizer(mask, normalizer)
    return _masked_row_sums(per_token_loss, mask).sum() / _safe(norm.num_tokens)


@AGGREGATORS.register("seq_mean_token_sum")
def seq_mean_token_sum(
    per_token_loss: Tensor, mask: Tensor, normalizer: LossNormalizer | None = None
) -> Tensor:
    """Mean over sequences of each sequence's token sum (a whole response is one action).

    >>> loss = torch.tensor([[1.0, 3.0], [4.0, 0.0]]); m = torch.tensor([[1, 1], [1, 0]])
    >>> float(seq_mean_token_sum(loss, m))
    4.0
    """
    norm = _normalizer(mask, normalizer)
    return _masked_row_sums(per_token_loss, mask).sum() / _safe(norm.num_sequences)


@AGGREGATORS.register("seq_sum_constant")
def seq_sum_constant(
    per_token_loss: Tensor, mask: Tensor, normalizer: LossNormalizer | None = None
) -> Tensor:
    """Dr.GRPO: token sums divided by a constant L, then mean over sequences; no length bias.

    Without a normaliser L must be known, so ``normalizer`` (with ``constant``) is required.

    >>> loss = torch.tensor([[1.0, 3.0], [4.0, 0.0]]); m = torch.tensor([[1, 1], [1, 0]])
    >>> float(seq_sum_constant(loss, m, LossNormalizer(2, 3, constant=4)))
    1.0
    """
    if normalizer is None or normalizer.constant is None:
        raise ValueError("seq_sum_constant needs a LossNormalizer with a constant L (the generation budget)")
    total = _masked_row_sums(per_token_loss, mask).sum()
    return total / (_safe(normalizer.num_sequences) * normalizer.constant)

