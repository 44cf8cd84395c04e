"""fit(): the R1-style RL loop, one stage per line.

    for each step:
        prompts   <- sampler                      (uniform / curriculum / prioritized ...)
        groups    <- rollout(prompts, G each)     (one prefill per prompt, G samples from it)
        scored    <- rewards(groups)              (rule-based outcome + process + shaping, time-limited)
        kept      <- filters(scored)              (DAPO dynamic sampling: refill until P informative groups)
        batch     <- advantages(kept)             (group z-score, RLOO, GAE with a critic, ...; CPPO pruning)
        stats     <- update(batch)                (epochs x mini-batches x micro-batches, one normaliser each)
        log / evaluate / checkpoint

Which estimator, objective, aggregation, KL and filters run is decided by the AlgorithmSpec (presets are
data); this loop never branches on an algorithm's name.

Faults: the first SIGINT/SIGTERM prints one line, the step in progress finishes and is checkpointed, and fit
raises ``Interrupted`` (exit 128 + signal). When too many rewards fail, the failing step's samples are written
and the last good step is checkpointed with the state from before the failing rollout. Non-finite updates
are skipped in ``Updater`` (``train/skipped_steps``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from reinforced.algorithms import (
    AdvantageInputs,
    BatchNotFilled,
    compute_advantages,
    fill_batch,
    group_keep_mask,
    plateaued,
    prune_samples,
)
from reinforced.algorithms.advantages import batch_sums
from reinforced.config import Config
from reinforced.evaluation.metrics import eval_sampling, evaluate, summarize
from reinforced.tracking.progress import Progress
from reinforced.tracking.report import plot_run
from reinforced.tracking.sinks import MetricsWriter, sample_notes, write_samples
from reinforced.training import checkpoint as ckpt
from reinforced.training.batch import accuracy_matrix, collate_groups, rewards_matrix, step_token_rewards
from reinforced.training.setup import Run, save, setup
from reinforced.training.step import _Mean, autocast, model_device
from reinforced.types import RolloutGroup, SamplingParams, TrainBatch, is_correct, valid


class RewardFailure(RuntimeError):
    """Most rewards of a batch raised or timed out: the run stops (after a checkpoint of the last good step).

    ``groups``: the failing step's scored groups, written to the samples folder for diagnosis.
    """

    def __init__(self, message: str, groups: list[RolloutGroup] | None = None) -> None:
        super().__init__(message)
        self.groups = groups or []


class Interrupted(SystemExit):
    """SIGINT / SIGTERM: the run stopped after checkpointing its last finished step (exit 128 + signal)."""


@dataclass
class FitResult:
    run_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    steps: int


def fit(cfg: Config, resume: bool = False, show_progress: bool = True) -> FitResult:
    """Train ``cfg``'s model with RL as ``cfg`` says; the engine under ``reinforced train`` and ``Trainer``.

    Args:
        cfg: the whole run (``load_config(path_or_recipe, ["key=value", ...])`` or ``Trainer(...).config``).
        resume: continue from the newest readable checkpoint in ``<run.output_dir>/<run.name>/``; without
            it, a run directory that already holds a checkpoint is an error (``FileExistsError``).
        show_progress: a live bar on a terminal, else one plain line every ``training.progress_every`` steps.

    Returns:
        ``FitResult``: ``run_dir``; ``before`` / ``after``, the held-out metrics before and after RL
        (``eval/<set>/accuracy``, ...; empty without ``eval.sets``); ``steps``, the RL steps run.

    Raises:
        ConfigError / ValueError: a bad set-up, before any model loads (a row without gold, a prompt over
            ``rollout.max_prompt_tokens``, an unknown reward set, ...).
        RunLocked: another process is training in the same run directory.
        RewardFailure: more than ``rewards.max_error_frac`` of a batch's rewards failed (after a checkpoint).
        Interrupted: SIGINT / SIGTERM (after checkpointing the last finished step).

    Writes ``config.yaml``, ``metrics.jsonl``, ``samples/``, ``checkpoints/`` and ``plots/`` under the run
    directory.
    """
    if cfg.stages:  # a pipeline of stages (training/pipeline.py): the RL stages come back here through train()
        from reinforced.training.pipeline import run_pipeline

        return run_pipeline(cfg, resume, show_progress)
    run = setup(cfg, resume)
    try:
        with stop_requests() as stop:
            return train(run, stop, show_progress)
    finally:
        run.rewards.close()
        run.release()


def train(run: Run, stop: dict[str, int], show_progress: bool,
          until: Callable[[dict[str, float]], bool] | None = None) -> FitResult:
    """The RL steps of ``run``; ``until`` (a pipeline stage's advance rule) is asked after each step's metrics
    and True ends the run at that step."""
    cfg = run.cfg
    fresh = "before" not in run.history  # no checkpoint: the history starts afresh
    main = run.strategy.is_main  # rank 0 logs, writes samples and plots; every rank trains and evaluates its share
    writer = MetricsWriter(run.run_dir, cfg.training.report_to, resume_step=-1 if fresh else run.start_step,
                           config=cfg) if main else _Silent()
    if fresh:
        run.history["before"] = run_eval(run, step=0)
        writer.log(0, {**run.history["before"], **pretrain_critic(run)})
    step = run.start_step
    with Progress(cfg.training.max_steps, run.start_step, enabled=show_progress and main,
                  every=cfg.training.progress_every) as progress:
        for step in range(run.start_step + 1, cfg.training.max_steps + 1):
            t0, before_step = time.perf_counter(), resumable_state(run)
            try:
                kept, stats = collect(run, step)                                   # sample, roll out, score, filter
            except RewardFailure as err:
                fail_rewards(run, step, err, before_step)
                raise
            t1 = time.perf_counter()
            batch, adv_stats, notes = prepare(run, kept)                       # advantages, prune
            t2 = time.perf_counter()
            train_stats = run.updater.update(batch, run.generator)             # policy (+ critic) update
            run.refresh_rollout()
            report_skips(run, step, kept, train_stats)
            stats["perf/prepare_s"], stats["perf/update_s"] = t2 - t1, time.perf_counter() - t2
            stats = adv_stats | train_stats | stats  # rollout-wide reward stats win over the kept groups
            stats["perf/step_s"] = time.perf_counter() - t0
            stats = run.strategy.mean_stats(stats, summed=GLOBAL_SUMS)  # over ranks: global means and sums
            stats["perf/tokens_per_s"] = stats["rollout/num_tokens"] / stats["perf/rollout_s"]
            if cfg.eval.every_n_steps and step % cfg.eval.every_n_steps == 0 and step < cfg.training.max_steps:
                stats.update(run_eval(run, step))
            writer.log(step, stats)
            if main:
                write_samples(run.run_dir, step, kept, cfg.training.samples_per_step, notes)
            progress.advance(step, stats)
            stopping = run.strategy.any(bool(stop))  # every rank stops after the same step
            if end_of_step(run, step, stats, stop if stopping else {}, writer, until):
                break
    last = step if until is not None else cfg.training.max_steps
    after = run_eval(run, step=last)
    writer.log(last, after)
    writer.close()
    save(run, last)
    if main:
        ckpt.export_run(run.run_dir)  # <run>/export: the final model for plain transformers
        plot_run(run.run_dir)
    return FitResult(run.run_dir, run.history["before"], after, last)


# Step metrics summed over data-parallel ranks (shares of the global loss, token counts); the rest are means.
GLOBAL_SUMS = ("rollout/num_tokens", "train/loss", "train/pg_loss", "train/value_loss", "train/value/value_loss",
               "critic/loss", "critic/value_loss")


class _Silent:
    """The metrics writer of ranks other than 0."""

    def log(self, step: int, stats: dict[str, float]) -> None: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def stop_requests() -> Iterator[dict[str, int]]:
    """The first SIGINT / SIGTERM prints one line and asks the loop to stop after the step in progress
    (``stop["signal"]`` is set); a second one gets the default handling (stop at once, no checkpoint)."""
    stop: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread only
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        stop["signal"] = signum
        signal.signal(signum, previous[signum])
        print(f"\n{signal.Signals(signum).name}: stopping after the step in progress with a checkpoint "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def end_of_step(run: Run, step: int, stats: dict[str, float], stop: dict[str, int], writer: Any,
                until: Callable[[dict[str, float]], bool] | None) -> bool:
    """Checkpoint when due (or when a stop was requested: then raise ``Interrupted`` after it); True when the
    stage's ``until`` rule says this step ends it. Shared by the RL loop and the SFT stage."""
    every = run.cfg.training.checkpoint_every
    if stop or (every and step % every == 0):
        save(run, step)
    if stop:
        writer.close()
        raise Interrupted(128 + stop.get("signal", signal.SIGTERM))
    return until is not None and until(stats)


def resumable_state(run: Run) -> dict[str, Any]:
    """The state a step's rollout advances (sampler, generators, RNG), copied before the step starts."""
    return {"sampler": copy.deepcopy(run.sampler.state_dict()), "generator": run.generator.get_state(),
            "rng": ckpt.rng_state()}


def fail_rewards(run: Run, step: int, err: RewardFailure, before_step: dict[str, Any]) -> None:
    """Write the failing step's samples (all of them, with their reward errors) and checkpoint the last good
    step with the state from before this step's rollout, unless that checkpoint exists already."""
    write_samples(run.run_dir, step, err.groups, limit=sum(g.group_size for g in err.groups))
    last = ckpt.latest_checkpoint(run.run_dir)
    if last is None or last.name != f"step-{step - 1}":
        save(run, step - 1, before_step)


def report_skips(run: Run, step: int, kept: list[RolloutGroup], stats: dict[str, float]) -> None:
    """Warn about updates skipped for non-finite gradients, naming where they came from."""
    num = int(stats.get("train/skipped_steps", 0))
    if num:
        ids = [g.prompt.prompt_id for g in kept]
        sources = run.updater.skip_sources[-num:]
        warnings.warn(f"step {step}: skipped {num} optimiser step(s): {'; '.join(sources)}; "
                      f"prompt ids by group: {ids}", stacklevel=2)


def pretrain_critic(run: Run) -> dict[str, float]:
    """VC-PPO value pretraining: fit the critic on rollouts of the frozen initial policy until its loss
    plateaus (or ``critic.pretrain_steps``), before any policy update (Yuan et al., arXiv 2503.01491)."""
    critic_cfg = run.spec.critic
    if critic_cfg is None or critic_cfg.pretrain_steps == 0:
        return {}
    losses: list[float] = []
    for i in range(critic_cfg.pretrain_steps):
        kept, _ = collect(run, step=-(i + 1))  # negative steps: their own sampling seeds
        batch, _, _ = prepare(run, kept)
        losses.append(run.updater.update(batch, run.generator, train_policy=False)["critic/loss"])
        if plateaued(losses, critic_cfg.pretrain_patience, critic_cfg.pretrain_tolerance):
            break
    return {"critic/pretrain_steps": float(len(losses)), "critic/pretrain_loss_first": losses[0],
            "critic/pretrain_loss_last": losses[-1]}


def sampling_params(run: Run, step: int, round_: int) -> SamplingParams:
    r = run.cfg.rollout
    return SamplingParams(group_size=r.group_size, max_new_tokens=r.max_new_tokens_at(step), temperature=r.temperature,
                          top_p=r.top_p, top_k=r.top_k, stop=r.stop,
                          seed=run.cfg.run.seed * 1_000_003 + step * 1009 + round_)


def collect(run: Run, step: int) -> tuple[list[RolloutGroup], dict[str, float]]:
    """Roll out and score prompts until P groups pass the group filters: DAPO Algorithm 1 with the cap and
    policy of ``dynamic_sampling`` (``fill_batch``); without dynamic sampling one round keeps them all."""
    total = max(1, round(run.cfg.training.num_prompts * run.spec.prompts_per_step_factor))
    strategy = run.strategy  # this rank's share of the global batch (whole groups: a group never spans ranks)
    num_prompts = total // strategy.world_size + (strategy.rank < total % strategy.world_size)
    if num_prompts == 0:
        raise ValueError(f"training.num_prompts={total} is below the {strategy.world_size} ranks: every rank "
                         f"needs at least one prompt group per step")
    ds = run.spec.dynamic_sampling
    means, num_tokens, rounds = _Mean(), [0], itertools.count()
    timing = {"perf/rollout_s": 0.0, "perf/reward_s": 0.0}

    def draw(n: int) -> tuple[list[RolloutGroup], torch.Tensor]:
        prompts = run.sampler.next(n)
        t0 = time.perf_counter()
        groups = run.engine.generate(prompts, sampling_params(run, step, next(rounds)))
        t1 = time.perf_counter()
        scored, reward_stats = run.rewards.score(groups)
        timing["perf/rollout_s"] += t1 - t0
        timing["perf/reward_s"] += time.perf_counter() - t1
        if reward_stats.get("reward/error_frac", 0.0) > run.cfg.rewards.max_error_frac:
            raise RewardFailure(f"step {step}: {reward_stats['reward/error_frac']:.0%} of rewards failed "
                                f"(limit rewards.max_error_frac={run.cfg.rewards.max_error_frac}); see "
                                f"the samples and reward errors in "
                                f"{run.run_dir / 'samples' / f'step-{step:06d}.jsonl'}", scored)
        # pass rates over the samples whose verifier ran: a failed sample (NaN) is not a wrong one
        rates = [(g.prompt.prompt_id, valid(g.accuracy or ())) for g in scored]
        rates = [(pid, sum(v) / len(v)) for pid, v in rates if v]
        run.sampler.observe([pid for pid, _ in rates], [r for _, r in rates], step)
        keep, filter_stats = group_keep_mask(run.spec, accuracy_matrix(scored))
        filter_stats = {k if "/" in k else f"filter/{k}": v for k, v in filter_stats.items()}
        means.add({**reward_stats, **filter_stats, **rollout_stats(scored)}, 1.0)
        num_tokens[0] += sum(c.num_tokens for g in groups for c in g.completions)
        return scored, keep

    try:
        kept, fill_stats = fill_batch(draw, num_prompts, ds.max_rounds if ds else 1, ds.on_cap if ds else "error")
    except BatchNotFilled as err:
        raise BatchNotFilled(f"step {step}: {err}") from None
    while run.sampler.join_round():  # full: take part in the other ranks' remaining rounds (no prompts)
        run.sampler.observe([], [], step)
    stats = {**means.result(), **run.sampler.stats(), **fill_stats, "rollout/num_tokens": float(num_tokens[0]),
             **timing}
    return kept, stats


def rollout_stats(groups: list[RolloutGroup]) -> dict[str, float]:
    comps = [(c, acc) for g in groups for c, acc in zip(g.completions, g.accuracy or (), strict=False)]
    lengths = [c.num_tokens for c, _ in comps]
    right = [c.num_tokens for c, a in comps if is_correct(a)]  # NaN (failed verifier) is on neither side
    wrong = [c.num_tokens for c, a in comps if math.isfinite(a) and not is_correct(a)]
    stats = {"rollout/completion_len": sum(lengths) / max(1, len(lengths)),
             "rollout/truncated_frac": sum(c.truncated for c, _ in comps) / max(1, len(comps))}
    if right:
        stats["rollout/completion_len_correct"] = sum(right) / len(right)
    if wrong:
        stats["rollout/completion_len_wrong"] = sum(wrong) / len(wrong)
    return stats


@torch.no_grad()
def forward_in_micro_batches(run: Run, model: torch.nn.Module, batch: TrainBatch, values: bool = False
                             ) -> torch.Tensor:
    """Reference log-probs (or critic values) of the whole batch, computed micro-batch by micro-batch."""
    out = []
    device = model_device(model)
    for micro, weight in run.strategy.lockstep(batch.split(run.cfg.training.micro_batch_size)):
        micro = micro.to(device)
        with autocast(run.cfg.training.autocast, device):
            if values:
                result = run.updater.value_fn(model, micro).float().cpu()  # type: ignore[misc]
            else:
                result = run.logprobs(model, micro)[0].float().cpu()
        if weight:  # a lockstep pad (sharded model) only keeps the ranks' forwards in step
            out.append(result)
    return torch.cat(out) * batch.completion_mask


def reference_logprobs(run: Run, batch: TrainBatch) -> torch.Tensor:
    """Reference log-probs [N, T] (a frozen copy, or under LoRA the policy with its adapter disabled)."""
    with run.reference_model() as reference:
        return forward_in_micro_batches(run, reference, batch)


def prepare(run: Run, groups: list[RolloutGroup]
            ) -> tuple[TrainBatch, dict[str, float], list[dict[str, Any]]]:
    """Batch the kept groups, compute advantages (and critic targets), then apply sample-level pruning.
    Also returns each sample's advantage and outcome (``sample_notes``) for the samples file."""
    spec = run.spec
    batch = collate_groups(groups, pad_id=run.adapter.pad_token_id)
    batch, gap_stats = trainer_old_logprobs(run, batch)
    if spec.mask_truncated:  # DAPO overlong filtering: truncated samples leave the loss and its normaliser
        batch = replace(batch, completion_mask=batch.completion_mask & ~batch.is_truncated[:, None])
    # a sample whose reward failed (NaN, rewards/compose.py) leaves the loss: no gradient, no critic target
    failed = ~torch.isfinite(rewards_matrix(groups)).reshape(-1)  # [N]
    batch = replace(batch, completion_mask=batch.completion_mask & ~failed[:, None])
    # KL in the reward is needed before advantages; KL in the loss only for the rows pruning keeps (CPPO).
    early_ref = run.has_reference and spec.kl.placement == "reward"
    ref = reference_logprobs(run, batch) if early_ref else None
    values = None
    if run.updater.critic is not None:
        values = forward_in_micro_batches(run, run.updater.critic, batch, values=True)
    elif run.updater.value_head is not None:  # shared trunk: the head on the policy's own forward
        values = forward_in_micro_batches(run, run.policy.model, batch, values=True)
    steps = step_token_rewards(groups, batch.completion_mask.shape[1], run.adapter.decode)
    with batch_sums(run.strategy.all_reduce_sum):  # batch-level statistics over all ranks' groups
        adv = compute_advantages(spec, AdvantageInputs(
            rewards=rewards_matrix(groups), completion_mask=batch.completion_mask, old_logprobs=batch.old_logprobs,
            ref_logprobs=ref, values=values, token_rewards=None if steps is None else steps[0],
            step_mask=None if steps is None else steps[1]))
    batch = replace(batch, advantages=adv.advantages, ref_logprobs=ref, returns=adv.returns, old_values=values)
    keep, prune_stats = prune_samples(spec, batch.advantages, batch.completion_mask, batch.group_index)
    notes = sample_notes(batch.advantages, batch.completion_mask, batch.is_truncated, failed, keep,
                         spec.mask_truncated)
    if not bool(keep.all()):
        batch = batch.select(keep.nonzero().squeeze(-1))
    if run.has_reference and ref is None:
        batch = replace(batch, ref_logprobs=reference_logprobs(run, batch))
    return batch, {**adv.stats, **prune_stats, **gap_stats}, notes


def trainer_old_logprobs(run: Run, batch: TrainBatch) -> tuple[TrainBatch, dict[str, float]]:
    """The trainer's own log-probs of the sampled tokens (a no-grad forward) when the engine's may differ
    (vLLM: other kernels and precision) or TIS is on: logs the gap ``|trainer - engine|`` over completion
    tokens (``rollout/logprob_diff_mean``, ``_max``); with ``algorithm.tis_cap`` the ratio is then taken
    against the trainer's log-probs and the engine's go to ``rollout_logprobs`` for the TIS weight."""
    if run.spec.tis_cap is None and getattr(run.engine, "logprobs_match_trainer", True):
        return batch, {}
    old = forward_in_micro_batches(run, run.policy.model, batch)  # [N, T]
    gap = (old - batch.old_logprobs).abs()[batch.completion_mask]
    stats = {"rollout/logprob_diff_mean": float(gap.mean()) if gap.numel() else 0.0,
             "rollout/logprob_diff_max": float(gap.max()) if gap.numel() else 0.0}
    if run.spec.tis_cap is not None:
        batch = replace(batch, old_logprobs=old, rollout_logprobs=batch.old_logprobs)
    return batch, stats


def _light(group: RolloutGroup) -> RolloutGroup:
    """A scored group without its images and encoded inputs (what ``summarize`` reads, cheap to gather)."""
    return replace(group, prompt=replace(group.prompt, images=(), messages=()), prompt_ids=(), vision=None)


def run_eval(run: Run, step: int) -> dict[str, float]:
    """Held-out metrics (greedy by default) on every eval set; {} when none is configured. Under data
    parallelism the prompts are split between ranks (every W-th) and the scored groups gathered, so every
    rank gets the metrics of the whole set (staged curricula advance on them in step)."""
    if not run.eval_sets:
        return {}
    e, r = run.cfg.eval, run.cfg.rollout
    params = eval_sampling(e.temperature, e.num_samples, e.max_new_tokens or r.max_new_tokens, r.stop,
                           seed=run.cfg.run.seed + 7919 * step)
    strategy = run.strategy
    if strategy.world_size == 1:
        metrics, _ = evaluate(run.engine, run.rewards, run.eval_sets, params)
    else:  # each rank rolls out every W-th prompt; the scored groups are gathered back into set order
        shards = {name: prompts[strategy.rank :: strategy.world_size] for name, prompts in run.eval_sets.items()}
        _, scored = evaluate(run.engine, run.rewards, shards, params)
        parts = strategy.gather({name: [_light(g) for g in groups] for name, groups in scored.items()})
        metrics = {}
        for name, prompts in run.eval_sets.items():
            ordered = [parts[i % strategy.world_size][name][i // strategy.world_size] for i in range(len(prompts))]
            metrics.update(summarize(ordered, f"eval/{name}"))
    for name in run.eval_sets:  # staged curricula may advance on held-out accuracy
        run.sampler.observe_eval(name, metrics[f"eval/{name}/accuracy"], step)
    return metrics
