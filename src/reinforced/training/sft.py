"""Supervised warm-up ("cold start"): teacher-forced cross-entropy on completion tokens only.

    L(theta) = - sum_{i, t in completion_i} log pi_theta(y_{i,t} | prompt_i, y_{i,<t}) / sum_i |completion_i|

Vision-R1 (Huang et al., arXiv 2503.06749) and Reason-RFT (Tan et al., arXiv 2503.20752) first fine-tune a
VLM on (prompt, reasoning + answer) pairs so that RL starts from a policy that follows the output format
and sometimes succeeds; GRPO has no gradient where every sample of a group fails. Prompt tokens (image
placeholders included) are context, never targets; the loss is a token mean over the whole batch.

Works for text models (``vision`` None) and VLMs (per-example vision dicts collated by ``models.vision``).

``fit_sft`` is the stage run alone (``reinforced sft CONFIG``) and the ``sft`` stage of a pipeline
(``training/pipeline.py``). It is built by the RL run's own ``setup`` (model, data sampler, held-out sets,
rollout engine and rewards for evaluation, trackers, checkpoints), so the two share every bookkeeping path
and resume bitwise the same way. A prompt is rendered exactly as rollouts see it (``Adapter.encode``: the
template and the model's chat template with its generation prompt, images included); the target is the
answer text followed by the model's end-of-turn / EOS token, so only the assistant's answer is learned.
Rows are right-padded into micro-batches; the loss of a step is divided once by the step's number of
target tokens (not per micro-batch: the normaliser bug of TRL #5619 / OpenRLHF #1249). Targets are a row's
``target`` field (reasoning traces; a ``generate`` stage's kept samples) or a task's solver trace
(``TRACES``), the procedural stand-in for the stronger model's traces of Vision-R1's cold start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from reinforced.algorithms import resolve_spec
from reinforced.config import AlgorithmConfig, Config, ConfigError
from reinforced.models.vision import encode_vlm, vision_forward_kwargs
from reinforced.registry import Registry
from reinforced.tracking.progress import Progress
from reinforced.tracking.report import plot_run
from reinforced.tracking.sinks import MetricsWriter
from reinforced.training import checkpoint as ckpt
from reinforced.training.loop import FitResult, end_of_step, run_eval, stop_requests
from reinforced.training.setup import Run, build_run, restore, run_dir_for, save
from reinforced.training.step import autocast, build_optimizer
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


def sft_loss(model: torch.nn.Module, batch: SFTBatch, normaliser: float | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy summed over target tokens / ``normaliser`` (None: their number here, a mean); stats:
    loss, token accuracy, number of target tokens."""
    extra = vision_forward_kwargs(model.config, batch.input_ids, batch.vision, batch.sample_ids)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **extra).logits  # [n, L, V]
    logits = logits[:, :-1][batch.loss_mask].float()  # [K, V] positions predicting a target token
    labels = batch.input_ids[:, 1:][batch.loss_mask]  # [K]
    total = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    loss = total / (labels.numel() if normaliser is None else normaliser)
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


# ----------------------------------------------------------------------------------------------------------
# The SFT stage: `reinforced sft CONFIG` and pipeline stages of kind `sft`.

TRACES: Registry[Callable[[Prompt], str]] = Registry("solver trace")
"""Procedural task name -> the worked answer built from the task's own ground truth (``sft.targets: trace``)."""


@TRACES.register("count_shapes")
def _count_trace(prompt: Prompt) -> str:
    return f"<think>I count {prompt.answer} {prompt.metadata['shape']}s.</think><answer>{prompt.answer}</answer>"


@TRACES.register("digit_arithmetic")
def _digit_arithmetic_trace(prompt: Prompt) -> str:
    a, b = prompt.metadata["operands"]
    return f"<think>{a} {prompt.metadata['op']} {b} = {prompt.answer}.</think><answer>{prompt.answer}</answer>"


@TRACES.register("arithmetic")
def _arithmetic_trace(prompt: Prompt) -> str:
    return f"<think>{prompt.metadata['expression']} = {prompt.answer}.</think><answer>{prompt.answer}</answer>"


@TRACES.register("bar_chart")
def _bar_chart_trace(prompt: Prompt) -> str:
    return f"<think>The bar reads {prompt.answer}.</think><answer>{prompt.answer}</answer>"


def target_text(prompt: Prompt, targets: str) -> str:
    """The SFT target of ``prompt``: its row's ``target`` (``targets="row"``) or its task's solver trace."""
    if targets == "trace":
        # a row a generate/filter stage wrote names its task by its reward set (open form: the task's name)
        task = prompt.task if prompt.task in TRACES.names() else prompt.reward_set
        if task not in TRACES.names():
            raise ValueError(f"sft.targets=trace: task {prompt.task!r} has no solver trace (tasks with one: "
                             f"{', '.join(TRACES.names())}); give rows with a 'target' field and sft.targets=row")
        return TRACES[task](prompt)
    target = prompt.metadata.get("target")
    if not isinstance(target, str) or not target:
        raise ValueError(f"row {prompt.prompt_id!r} ({prompt.task}) has no 'target' text to learn (sft.targets=row "
                         "reads a row's 'target' field or meta.target); for procedural tasks use sft.targets=trace")
    return target


def encode_target(adapter: Any, prompt: Prompt, target: str) -> SFTExample:
    """``prompt`` rendered as rollouts see it (template + chat template + generation prompt, images) and
    ``target`` + the first EOS id (the end of the assistant turn) as the learned tokens."""
    encoded = adapter.encode(prompt)
    target_ids = adapter.tokenizer.encode(target, add_special_tokens=False) + [adapter.eos_token_ids[0]]
    return SFTExample(prompt.prompt_id, tuple(encoded.input_ids), tuple(target_ids), encoded.vision)


def _on_device(batch: SFTBatch, device: torch.device) -> SFTBatch:
    vision = tuple(None if v is None else {k: t.to(device) for k, t in v.items()} for v in batch.vision)
    return SFTBatch(batch.input_ids.to(device), batch.attention_mask.to(device), batch.loss_mask.to(device),
                    vision, batch.sample_ids)


def sft_update(run: Any, examples: Sequence[SFTExample]) -> dict[str, float]:
    """One optimiser step over ``examples`` in micro-batches of ``training.micro_batch_size``; the loss is
    divided once by the step's number of target tokens. A non-finite gradient skips the step."""
    cfg, model = run.cfg.training, run.policy.model
    optimizer, scheduler = run.updater.optimizer, run.updater.scheduler
    device = next(model.parameters()).device
    model.train()
    num_tokens = sum(len(e.target_ids) for e in examples)  # the step's normaliser, computed once
    optimizer.zero_grad(set_to_none=True)
    loss_sum = correct = 0.0
    for start in range(0, len(examples), cfg.micro_batch_size):
        batch = _on_device(collate_sft(examples[start : start + cfg.micro_batch_size], run.adapter.pad_token_id),
                           device)
        with autocast(cfg.autocast, device):
            loss, stats = sft_loss(model, batch, normaliser=num_tokens)
        loss.backward()
        loss_sum += float(loss.detach())
        correct += stats["token_accuracy"] * stats["num_tokens"]
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
    skipped = not bool(torch.isfinite(norm))
    if not skipped:
        optimizer.step()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"train/loss": loss_sum, "train/token_accuracy": correct / num_tokens, "train/num_tokens": float(num_tokens),
            "train/grad_norm": float(norm), "train/lr": lr, "train/skipped_steps": float(skipped)}


def setup_sft(cfg: Config, resume: bool) -> Run:
    """The RL run's ``setup`` for an SFT stage: no reference model (no KL), an optimiser whose schedule spans
    ``training.max_steps`` optimiser steps, then the checkpoint restored (``--resume``)."""
    if cfg.training.strategy != "single":
        raise ConfigError(f"training.strategy={cfg.training.strategy}: SFT stages run in one process for now")
    no_kl = AlgorithmConfig(preset="grpo", overrides={"kl.coef": 0.0})  # the algorithm is unused: no reference
    spec = resolve_spec(no_kl.preset, no_kl.overrides)
    run_dir, lock = run_dir_for(cfg, resume)
    try:
        run = build_run(cfg.model_copy(update={"algorithm": no_kl}), spec, run_dir, lock, resume=False)
        run.cfg = cfg
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        (run_dir / "algorithm.txt").write_text("sft: cross-entropy on answer tokens / the step's target tokens\n")
        params = [p for p in run.policy.model.parameters() if p.requires_grad]
        run.updater.optimizer, run.updater.scheduler = build_optimizer(params, cfg.training,
                                                                       total_steps=cfg.training.max_steps)
        if resume:
            restore(run)
    except BaseException:
        lock.close()
        raise
    return run


def fit_sft(cfg: Config, resume: bool = False, show_progress: bool = True,
            until: Callable[[dict[str, float]], bool] | None = None,
            position: dict[str, Any] | None = None) -> FitResult:
    """Supervised fine-tuning as ``cfg`` says (``reinforced sft``): the counterpart of ``loop.fit``.

    ``until``: a pipeline's advance rule, asked after each step's metrics (True ends the stage there).
    ``position``: the stage's place in a pipeline, stored in every checkpoint. Writes the same run directory
    as ``fit`` (config.yaml, metrics.jsonl, checkpoints/, export/, plots/).
    """
    run = setup_sft(cfg, resume)
    if position is not None:
        run.history["pipeline"] = position
    try:
        with stop_requests() as stop:
            return train_sft_run(run, stop, show_progress, until)
    finally:
        run.rewards.close()
        run.release()


def train_sft_run(run: Run, stop: dict[str, int], show_progress: bool,
                  until: Callable[[dict[str, float]], bool] | None) -> FitResult:
    cfg = run.cfg
    fresh = "before" not in run.history
    writer = MetricsWriter(run.run_dir, cfg.training.report_to, resume_step=-1 if fresh else run.start_step,
                           config=cfg)
    if fresh:
        run.history["before"] = run_eval(run, step=0)
        writer.log(0, run.history["before"])
    step = run.start_step
    with Progress(cfg.training.max_steps, run.start_step, enabled=show_progress,
                  every=cfg.training.progress_every) as progress:
        for step in range(run.start_step + 1, cfg.training.max_steps + 1):
            t0 = time.perf_counter()
            prompts = run.sampler.next(cfg.training.num_prompts)
            examples = [encode_target(run.adapter, p, target_text(p, cfg.sft.targets)) for p in prompts]
            stats = sft_update(run, examples)
            stats["perf/step_s"] = time.perf_counter() - t0
            if cfg.eval.every_n_steps and step % cfg.eval.every_n_steps == 0 and step < cfg.training.max_steps:
                stats.update(run_eval(run, step))
            writer.log(step, stats)
            progress.advance(step, stats)
            if end_of_step(run, step, stats, stop, writer, until):
                break
    after = run_eval(run, step=step)
    writer.log(step, after)
    writer.close()
    save(run, step)
    ckpt.export_run(run.run_dir)
    plot_run(run.run_dir)
    return FitResult(run.run_dir, run.history["before"], after, step)
