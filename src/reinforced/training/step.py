"""The policy update of one RL step: epochs x mini-batches (optimiser steps) x micro-batches.

For each optimiser step the loss normaliser is computed ONCE over all rows of that mini-batch and passed to
every micro-batch, so the accumulated gradient equals the full-batch gradient whatever the micro-batch size
(the most common correctness bug in this field: TRL #5619, OpenRLHF #1249). Ratios are taken against the
behaviour log-probs stored at rollout, so extra epochs / mini-batches are properly off-policy (PPO).
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from reinforced.algorithms import LossNormalizer, policy_loss, value_loss
from reinforced.config import TrainingConfig
from reinforced.training.allocator import release_free_memory
from reinforced.training.distributed import Strategy
from reinforced.types import TrainBatch

# (model, batch) -> (logprobs [n, T], entropy [n, T] | None)
LogprobFn = Callable[[torch.nn.Module, TrainBatch], tuple[torch.Tensor, torch.Tensor | None]]
# (critic, batch) -> values [n, T]
ValueFn = Callable[[torch.nn.Module, TrainBatch], torch.Tensor]
# (model, batch) -> (logprobs [n, T], entropy [n, T] | None, last hidden states [n, T, H])
HiddenFn = Callable[[torch.nn.Module, TrainBatch], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]


def build_optimizer(
    params: list[Any], cfg: TrainingConfig, lr: float | None = None, total_steps: int = 1
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warm-up, then constant / cosine / linear decay to 0 over ``total_steps``."""
    optimizer = torch.optim.AdamW(params, lr=lr or cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    warmup, total = cfg.warmup_steps, max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in the backward (``training.gradient_checkpointing``): the saved
    activations of a micro-batch shrink from every layer's to the layer inputs, for one extra forward.

    Hugging Face's non-reentrant checkpointing (``torch.utils.checkpoint``), which keeps the RNG state, so
    dropout masks and gradients equal those without it (tests/unit/test_performance_options.py).
    """
    base = getattr(model, "get_base_model", lambda: model)()  # a PEFT wrapper: the model it wraps
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"training.gradient_checkpointing=true: {type(base).__name__} does not support "
                         "gradient checkpointing; set it to false")
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextlib.contextmanager
def checkpointed_layers_on(model: torch.nn.Module) -> Iterator[None]:
    """Let the checkpointed layers recompute while the policy stays in eval mode (no dropout in RL).

    Hugging Face checkpoints a layer only when its own ``training`` flag is set; the flag is set on those
    layer modules alone (not their children, so dropout stays off) for the update's forward and backward.
    """
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    before = [m.training for m in layers]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.training = flag


def autocast(mode: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` (on CPUs with AVX512-BF16 about 3x faster matmuls), or nothing."""
    if mode == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class _Mean:
    """Weighted running means of micro-batch stats (weights: loss tokens).

    Keys in ``summed`` are added instead: a micro-batch's loss is its *share* of the optimiser step's loss
    (the normaliser is the step's), so the step's loss is the sum of the shares, not their mean.
    """

    def __init__(self, summed: tuple[str, ...] = ()) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.weight: dict[str, float] = defaultdict(float)
        self.summed = summed

    def add(self, stats: dict[str, float], weight: float) -> None:
        for k, v in stats.items():
            w = 1.0 if k in self.summed else weight
            self.total[k] += float(v) * w
            self.weight[k] += w

    def result(self) -> dict[str, float]:
        return {k: self.total[k] if k in self.summed else self.total[k] / self.weight[k]
                for k in self.total if self.weight[k] > 0}


# Loss shares of one micro-batch (policy_loss / value_loss stats): summed over the step's micro-batches.
LOSS_SHARES = ("loss", "pg_loss", "value_loss", "value/value_loss")


def finite_grads(params: list[torch.nn.Parameter]) -> bool:
    """All gradients finite (this rank's shards of sharded ones: no collective)."""
    grads = [getattr(p.grad, "_local_tensor", p.grad) for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def nonfinite_source(kind: str, micro: TrainBatch, stats: dict[str, float], logprobs: torch.Tensor) -> str:
    """Where a non-finite loss or gradient came from: the loss terms that are non-finite and the rows
    (``group_index``, the prompt group within the step) whose inputs or log-probs are."""
    terms = [k for k, v in stats.items() if not math.isfinite(float(v))]
    rows = ~torch.isfinite(logprobs.detach().float()).all(-1).cpu()  # [n]
    for t in (micro.advantages, micro.old_logprobs, micro.ref_logprobs):
        if t is not None:
            rows |= ~torch.isfinite(t.float()).all(-1).cpu()
    groups = sorted(set(micro.group_index[rows].tolist() if rows.any() else micro.group_index.tolist()))
    return (f"non-finite {kind} (loss terms {terms or 'all finite'}; "
            f"{'rows with non-finite inputs in' if rows.any() else 'micro-batch of'} groups {groups})")


@dataclass
class Updater:
    """Runs the optimiser steps of one RL step for the policy (and the critic, for value-based methods)."""

    spec: object  # AlgorithmSpec
    cfg: TrainingConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    logprob_fn: LogprobFn
    max_completion_len: int | None = None  # the generation budget (Dr.GRPO's constant normaliser)
    critic: torch.nn.Module | None = None
    critic_optimizer: torch.optim.Optimizer | None = None
    critic_scheduler: torch.optim.lr_scheduler.LambdaLR | None = None  # stepped with critic_optimizer
    value_fn: ValueFn | None = None
    value_head: torch.nn.Module | None = None  # critic on the policy's trunk (in the policy's optimiser)
    hidden_fn: HiddenFn | None = None
    strategy: Strategy = field(default_factory=Strategy)  # data parallelism (training/distributed.py)
    # Non-finite updates skipped: in a row (reset by an applied step), in total, and where each came from.
    consecutive_skips: int = 0
    skipped_steps: int = 0
    skip_sources: list[str] = field(default_factory=list)

    def mini_batches(self, batch: TrainBatch, generator: torch.Generator, num_mini_batches: int
                     ) -> Iterator[TrainBatch]:
        """``num_mini_batches`` mini-batches per epoch, ``num_epochs`` epochs.

        With one mini-batch the rows keep their group-major order (the loss is a sum, so order cannot change
        the gradient, and whole groups in a micro-batch let the forward share each prompt's prefix).
        """
        n = batch.num_samples
        for _ in range(self.spec.num_epochs):  # type: ignore[attr-defined]
            if num_mini_batches == 1:
                yield batch
                continue
            perm = torch.randperm(n, generator=generator)
            for chunk in torch.tensor_split(perm, min(num_mini_batches, n)):
                yield batch.select(chunk)

    def policy_step(self, mini: TrainBatch) -> dict[str, float]:
        """One optimiser step of the policy on ``mini``, accumulated over micro-batches."""
        spec, means = self.spec, _Mean(summed=LOSS_SHARES)
        device = model_device(self.model)
        mini = mini.to(device)
        # one all-reduce of the counts per optimiser step: each rank's loss is its share of the global loss
        normalizer = self.strategy.combine(LossNormalizer.for_step(spec, mini.completion_mask,
                                                                   self.max_completion_len))
        self.optimizer.zero_grad(set_to_none=True)
        loss_total, bad = 0.0, None
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        for micro, weight in self.strategy.lockstep(mini.split(self.cfg.micro_batch_size)):
            values = None
            with autocast(self.cfg.autocast, device), checkpointed_layers_on(self.model):
                if self.value_head is None:
                    logprobs, entropy = self.logprob_fn(self.model, micro)
                else:  # shared trunk: the value head reads the same forward's hidden states
                    logprobs, entropy, hidden = self.hidden_fn(self.model, micro)  # type: ignore[misc]
                    values = self.value_head(hidden.float()) * micro.completion_mask
            loss, stats = policy_loss(
                spec, logprobs.float(), micro.old_logprobs, micro.advantages, micro.completion_mask,
                normalizer, ref_logprobs=micro.ref_logprobs,
                entropy=None if entropy is None else entropy.float(), rollout_logprobs=micro.rollout_logprobs,
            )
            if values is not None:
                v_loss, v_stats = value_loss(spec, values, micro.old_values, micro.returns,
                                             micro.completion_mask, normalizer)
                loss = loss + spec.critic.vf_coef * v_loss  # PPO's c1: the one place vf_coef applies
                stats = {**stats, **{f"value/{k}": v for k, v in v_stats.items()}}
            if not torch.isfinite(loss):  # never backward a NaN: skip this step, say where it came from
                bad = bad or nonfinite_source("loss", micro, stats, logprobs)
                if not self.strategy.collective_forward:
                    continue  # (sharded: the backward runs anyway to keep ranks in step; the step is skipped)
            if weight == 0.0:  # a lockstep pad: the collectives run, nothing is added
                (loss * 0.0).backward()
                continue
            (loss * self.strategy.loss_scale).backward()
            if bad is None and not finite_grads(params):  # checked per micro-batch to name the rows
                bad = nonfinite_source("gradient", micro, stats, logprobs)
            loss_total += loss.item()
            means.add(stats, float(micro.completion_mask.sum()))
        self.strategy.sync_grads(params, self.strategy.loss_scale)
        max_norm = self.cfg.max_grad_norm or float("inf")
        grad_norm = self.strategy.clip_grad_norm(params, max_norm)
        bad = bad or (None if math.isfinite(grad_norm) else f"gradient norm {grad_norm}")
        if self.strategy.any(bad is not None):  # every rank skips together
            return self.skip_step(bad or "non-finite gradient on another data-parallel rank")
        self.consecutive_skips = 0
        self.optimizer.step()
        self.scheduler.step()
        return {**{f"train/{k}": v for k, v in means.result().items()}, "train/loss": loss_total,
                "train/grad_norm": float(grad_norm)}

    def skip_step(self, source: str) -> dict[str, float]:
        """Drop a non-finite update (nothing is applied); stop after ``max_consecutive_skips`` in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.consecutive_skips += 1
        self.skipped_steps += 1
        self.skip_sources.append(source)
        limit = self.cfg.max_consecutive_skips
        if self.consecutive_skips >= limit:
            raise FloatingPointError(
                f"{self.consecutive_skips} optimiser steps in a row had non-finite gradients "
                f"(training.max_consecutive_skips={limit}); last: {source}. No update was applied and no "
                f"non-finite weights were saved: lower training.lr or check the rewards and advantages")
        return {}

    def critic_step(self, mini: TrainBatch) -> dict[str, float]:
        """One optimiser step of the critic (clipped value loss against the GAE returns)."""
        assert self.critic is not None and self.critic_optimizer is not None and self.value_fn is not None
        device = model_device(self.critic)
        mini = mini.to(device)
        normalizer = self.strategy.combine(LossNormalizer.for_step(self.spec, mini.completion_mask,
                                                                   self.max_completion_len))
        self.critic_optimizer.zero_grad(set_to_none=True)
        means, total = _Mean(summed=LOSS_SHARES), 0.0
        for micro in mini.split(self.cfg.micro_batch_size):
            with autocast(self.cfg.autocast, device):
                values = self.value_fn(self.critic, micro)
            loss, stats = value_loss(
                self.spec, values.float(), micro.old_values, micro.returns, micro.completion_mask, normalizer
            )
            loss.backward()
            total += loss.item()
            means.add(stats, float(micro.completion_mask.sum()))
        params = [p for p in self.critic.parameters() if p.requires_grad]
        self.strategy.sync_grads(params)
        self.strategy.clip_grad_norm(params, self.cfg.max_grad_norm or float("inf"))
        self.critic_optimizer.step()
        if self.critic_scheduler is not None:
            self.critic_scheduler.step()
        return {**{f"critic/{k}": v for k, v in means.result().items()}, "critic/loss": total}

    def update(self, batch: TrainBatch, generator: torch.Generator, train_policy: bool = True
               ) -> dict[str, float]:
        """All optimiser steps of this RL step (critic first, on the same rollouts); mean stats."""
        spec: Any = self.spec
        means = _Mean()
        if self.critic is not None:
            for mini in self.mini_batches(batch, generator, spec.critic.num_mini_batches):
                means.add(self.critic_step(mini), 1.0)
        num_steps, skipped_before = 0, self.skipped_steps
        if self.cfg.release_memory != "none":  # the rollout's freed blocks, before the update's peak
            release_free_memory()
        if train_policy:
            if spec.reset_optimizer_each_step:  # Kimi k1.5: each iteration is a fresh mirror-descent problem
                self.optimizer.state.clear()
            for mini in self.mini_batches(batch, generator, spec.num_mini_batches):
                means.add(self.policy_step(mini), 1.0)
                num_steps += 1
        out = {**means.result(), "train/optimizer_steps": float(num_steps),
               "train/lr": self.scheduler.get_last_lr()[0],
               "train/skipped_steps": float(self.skipped_steps - skipped_before)}
        if self.critic_scheduler is not None:
            out["critic/lr"] = self.critic_scheduler.get_last_lr()[0]
        if self.cfg.release_memory != "none":  # the update's activations and gradients, before the rollout
            release_free_memory()
        return out
