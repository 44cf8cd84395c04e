"""Supervised warm-up ("cold start"): teacher-forced cross-entropy on completion tokens only.

    L(theta) = - sum_{i, t in completion_i} log pi_theta(y_{i,t} | prompt_i, y_{i,<t}) / sum_i |completion_i|

Vision-R1 (Huang et al., arXiv 2503.06749) and Reason-RFT (Tan et al., arXiv 2503.20752) first fine-tune a
VLM on (prompt, reasoning + answer) pairs so that RL starts from a policy that follows the output format
and sometimes succeeds; GRPO has no gradient where every sample of a group fails. Prompt tokens (image
placeholders included) are context, never targets; the loss is a token mean over the whole batch.

Works for text models (``vision`` None) and VLMs (per-example vision dicts collated by ``models.vision``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from reinforced.models.vision import encode_vlm, vision_forward_kwargs
from reinforced.types import Prompt


@dataclass(frozen=True)
class SFTExample:
    """One (prompt, target) pair, tokenized: the target is learned, the prompt is context."""

    sample_id: str
    prompt_ids: tuple[int, ...]  # [S_i]
    target_ids: tuple[int, ...]  # [T_i], ends with EOS
    vision: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class SFTBatch:
    """Right-padded sequences: ``loss_mask`` [n, L-1] marks positions whose next token is a target."""

    input_ids: torch.Tensor  # [n, L] long
    attention_mask: torch.Tensor  # [n, L] long
    loss_mask: torch.Tensor  # [n, L-1] bool, True where input_ids[:, t+1] is a target token
    vision: tuple[Mapping[str, torch.Tensor] | None, ...]
    sample_ids: tuple[str, ...]


def encode_example(
    processor: Any, prompt: Prompt, target: str, messages: Sequence[Mapping[str, Any]]
) -> SFTExample:
    """Tokenize ``messages`` (+ the prompt's images) as the prompt and ``target`` + EOS as the completion."""
    prompt_ids, vision = encode_vlm(processor, messages, prompt.images, sample=prompt.prompt_id)
    tok = getattr(processor, "tokenizer", processor)
    target_ids = tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
    return SFTExample(prompt.prompt_id, tuple(prompt_ids), tuple(target_ids), vision)


def collate_sft(examples: Sequence[SFTExample], pad_id: int) -> SFTBatch:
    """Right-pad prompt+target rows to one length and mark the target tokens.

    >>> b = collate_sft([SFTExample("a", (5, 6), (7, 1)), SFTExample("b", (5,), (1,))], pad_id=0)
    >>> b.input_ids.tolist(), b.loss_mask.int().tolist()
    ([[5, 6, 7, 1], [5, 1, 0, 0]], [[0, 1, 1], [1, 0, 0]])
    """
    if not examples:
        raise ValueError("collate_sft needs at least one example")
    length = max(len(e.prompt_ids) + len(e.target_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)  # [n, L]
    attn = torch.zeros_like(ids)
    target = torch.zeros((len(examples), length), dtype=torch.bool)
    for i, e in enumerate(examples):
        if not e.target_ids:
            raise ValueError(f"sample {e.sample_id!r}: empty target")
        row = list(e.prompt_ids) + list(e.target_ids)
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
        target[i, len(e.prompt_ids) : len(row)] = True
    return SFTBatch(ids, attn, target[:, 1:], tuple(e.vision for e in examples), tuple(e.sample_id for e in examples))


def sft_loss(model: torch.nn.Module, batch: SFTBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over target tokens; stats: loss, token accuracy, number of target tokens."""
    extra = vision_forward_kwargs(model.config, batch.input_ids, batch.vision, batch.sample_ids)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra).logits  # [n, L, V]
    logits = logits[:, :-1][batch.loss_mask].float()  # [K, V] positions predicting a target token
    labels = batch.input_ids[:, 1:][batch.loss_mask]  # [K]
    loss = torch.nn.functional.cross_entropy(logits, labels)
    accuracy = (logits.argmax(-1) == labels).float().mean()
    return loss, {"loss": float(loss.detach()), "token_accuracy": float(accuracy), "num_tokens": float(labels.numel())}


def sft_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: SFTBatch, max_grad_norm: float | None = 1.0,
    autocast: bool = False,
) -> dict[str, float]:
    """One optimiser step on ``batch``; ``autocast`` runs forward/backward in bf16 (CPU or CUDA)."""
    model.train()
    device = batch.input_ids.device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        loss, stats = sft_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
    optimizer.step()
    return stats


def cosine_lr(progress: float, peak: float, warmup: float = 0.02) -> float:
    """Learning rate at ``progress`` in [0, 1] of training: linear warm-up over the first ``warmup``
    fraction, then cosine decay to 10% of peak.

    >>> round(cosine_lr(0.0, 1.0, 0.1), 2), cosine_lr(0.1, 1.0, 0.1), round(cosine_lr(1.0, 1.0, 0.1), 2)
    (0.0, 1.0, 0.1)
    """
    if progress < warmup:
        return peak * progress / warmup
    decay = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * decay)))


def train_sft(
    model: torch.nn.Module,
    batches: Iterator[SFTBatch],
    max_steps: int,
    lr: float = 1e-3,
    warmup: float = 0.02,
    schedule: Literal["cosine", "constant"] = "cosine",
    weight_decay: float = 0.0,
    time_budget_s: float | None = None,
    autocast: bool = False,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """AdamW for ``max_steps`` or until ``time_budget_s``, whichever ends first; returns per-step stats.

    ``cosine`` (``cosine_lr``) follows progress = max(step fraction, time fraction), so a run cut by its
    time budget still decays fully; ``constant`` keeps the peak after the same linear warm-up.
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown SFT schedule {schedule!r}; valid: constant, cosine")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    history: list[dict[str, float]] = []
    start = time.monotonic()
    for step in range(max_steps):
        progress = step / max_steps
        if time_budget_s is not None:
            progress = max(progress, (time.monotonic() - start) / time_budget_s)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            scheduled = cosine_lr(progress, lr, warmup) if schedule == "cosine" else lr * min(1.0, progress / warmup)
            group["lr"] = max(scheduled, lr * 1e-3)  # never 0: step 0 still learns
        stats = sft_step(model, optimizer, next(batches), autocast=autocast)
        stats["lr"] = optimizer.param_groups[0]["lr"]
        history.append(stats)
        if log is not None:
            log(step, stats)
    return history
