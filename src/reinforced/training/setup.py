"""Build every part of a run from its Config: models, engine, rewards, sampler, optimiser, run directory.

This is the only place that wires stages together; ``loop.fit`` then reads like the paper.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reinforced.algorithms import AlgorithmSpec, resolve_spec
from reinforced.config import Config, RewardTerm
from reinforced.data import build_sampler
from reinforced.data.checks import check_gold, check_prompt_lengths
from reinforced.data.samplers import ShardedSampler
from reinforced.data.sources import build_eval_sources
from reinforced.data.tasks import TASKS
from reinforced.models import Adapter, LoadedModel, load_policy, load_reference, lora
from reinforced.rewards import RewardComposer
from reinforced.rollout import build_engine
from reinforced.training import checkpoint as ckpt
from reinforced.training.allocator import configure_allocator
from reinforced.training.distributed import Strategy, build_strategy
from reinforced.training.logprobs import completion_forward, completion_logprobs
from reinforced.training.step import Updater, build_optimizer, enable_gradient_checkpointing
from reinforced.training.value import ValueHead, ValueModel, completion_values
from reinforced.types import TrainBatch


@dataclass
class Run:
    """Everything one training run holds (built once by ``setup``)."""

    cfg: Config
    spec: AlgorithmSpec
    run_dir: Path
    policy: LoadedModel
    adapter: Adapter
    engine: Any
    rewards: RewardComposer
    sampler: Any
    eval_sets: dict[str, list]
    updater: Updater
    reference: torch.nn.Module | None = None
    start_step: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator)
    history: dict[str, Any] = field(default_factory=dict)  # eval before RL, kept across resume
    lock: Any = None  # the open run-directory lock file (closed by ``release``)
    strategy: Strategy = field(default_factory=Strategy)  # data parallelism (training/distributed.py)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None
        self.strategy.close()

    def refresh_rollout(self) -> None:
        """After an update: bring the trained weights to the model the engine samples from (FSDP2's copy)."""
        self.strategy.refresh_rollout_model(self.policy.model, self.adapter.model)

    @property
    def has_reference(self) -> bool:
        """Whether the algorithm's KL term has a reference model (its own copy, or LoRA's disabled adapter)."""
        return self.spec.needs_reference and (self.reference is not None or self.policy.peft is not None)

    @contextmanager
    def reference_model(self) -> Iterator[torch.nn.Module]:
        """The frozen reference for the block: its own copy, or under LoRA the policy with the adapter off."""
        if self.reference is not None:
            yield self.reference
        else:
            with lora.disabled_adapter(self.policy) as base:
                yield base

    def logprobs(self, model: torch.nn.Module, batch: TrainBatch, with_entropy: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return completion_logprobs(model, self.adapter, batch, temperature=self.cfg.rollout.temperature,
                                   with_entropy=with_entropy, entropy_grad=self.spec.entropy_coef > 0,
                                   fused=self.cfg.training.fused_logprobs)

    def forward_with_hidden(self, model: torch.nn.Module, batch: TrainBatch
                            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Logprobs, entropy and last hidden states [n, T, H] (a value head on the policy's trunk)."""
        logprobs, entropy, hidden = completion_forward(
            model, self.adapter, batch, temperature=self.cfg.rollout.temperature, with_entropy=True,
            entropy_grad=self.spec.entropy_coef > 0, with_hidden=True, fused=self.cfg.training.fused_logprobs)
        assert hidden is not None
        return logprobs, entropy, hidden


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU when one is visible, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"run.device={name!r} is not a device: {err} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device={name!r} but no CUDA GPU is visible; use run.device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def task_reward_sets(cfg: Config) -> dict[str, tuple[RewardTerm, ...]]:
    """Each procedural task's declared rewards, as a named set (a config set of the same name wins)."""
    sets: dict[str, tuple[RewardTerm, ...]] = {}
    for source in (*cfg.data.train, *cfg.eval.sets):
        if source.task is not None:
            for name, terms in TASKS[source.task].reward_sets().items():
                sets[name] = tuple(RewardTerm(**t) for t in terms)
    return {**sets, **cfg.rewards.sets}


class RunLocked(RuntimeError):
    """Another process is training in this run directory."""


def lock_run_dir(run_dir: Path) -> Any:
    """Take an exclusive lock on ``<run>/.lock`` (fcntl.flock: released by the kernel when the process dies).

    Returns the open lock file; keep it open for the run's lifetime and close it to release.
    """
    import fcntl

    handle = (run_dir / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunLocked(f"run directory {run_dir} is in use by another training process (pid {holder}); "
                        f"wait for it to finish or choose another run.name") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run_dir_for(cfg: Config, resume: bool) -> tuple[Path, Any]:
    """The run directory, locked. A directory with a complete checkpoint needs ``resume``; one without any
    (a run stopped before its first checkpoint) starts again from step 0 either way."""
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    if not resume and ckpt.latest_checkpoint(run_dir) is not None:
        lock.close()
        raise FileExistsError(
            f"run directory {run_dir} already holds a run: pass --resume to continue it, "
            f"or choose another run.name"
        )
    return run_dir, lock


def setup(cfg: Config, resume: bool = False) -> Run:
    """Build the run in its locked directory (the lock is released if building fails)."""
    spec = resolve_spec(cfg.algorithm.preset, cfg.algorithm.overrides)
    strategy = build_strategy(cfg.training.strategy)
    lock = None
    try:
        run_dir, lock = shared_run_dir(cfg, resume, strategy)
        return build_run(cfg, spec, run_dir, lock, resume, strategy)
    except BaseException:
        if lock is not None:
            lock.close()
        strategy.close()
        raise


def shared_run_dir(cfg: Config, resume: bool, strategy: Strategy) -> tuple[Path, Any]:
    """Rank 0 takes the run directory's lock (one lock per run, whatever the world size) and checks it; its
    error, if any, is raised on every rank."""
    lock, error = None, None
    if strategy.is_main:
        try:
            _, lock = run_dir_for(cfg, resume)
        except (RunLocked, FileExistsError) as err:
            error = err
    errors = strategy.gather(error)
    if errors[0] is not None:
        raise errors[0]
    return Path(cfg.run.output_dir) / cfg.run.name, lock


def build_run(cfg: Config, spec: AlgorithmSpec, run_dir: Path, lock: Any, resume: bool,
              strategy: Strategy | None = None) -> Run:
    strategy = strategy or Strategy()
    if strategy.is_main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        (run_dir / "algorithm.txt").write_text("".join(f"{k}: {v}\n" for k, v in spec.describe()))
    seed_everything(cfg.run.seed)
    configure_allocator(cfg.training.release_memory)
    if cfg.run.num_threads is not None:
        torch.set_num_threads(cfg.run.num_threads)

    # Data first: a row without gold, a corrupt image or an unknown reward set stops the run before models load.
    sampler = ShardedSampler(build_sampler(cfg.data, cfg.run.seed), strategy.gather, strategy.rank)
    eval_sources = build_eval_sources(cfg.eval, cfg.run.seed)
    check_gold([*sampler.sources, *eval_sources], cfg.rewards.terms, task_reward_sets(cfg))
    device = resolve_device(cfg.run.device)
    policy = load_policy(cfg.model)
    policy.model.to(device)
    if cfg.training.gradient_checkpointing:
        enable_gradient_checkpointing(policy.model)
    rollout_model = strategy.rollout_model(policy.model)  # FSDP2: a full copy, taken before sharding
    # LoRA: the reference is the policy with its adapter disabled (Run.reference_model), not a second copy
    reference = load_reference(policy) if spec.needs_reference and policy.peft is None else None
    if reference is not None and cfg.training.autocast == "bf16":
        for p in reference.parameters():  # frozen: bf16 weights once instead of a cast at every forward
            p.data = p.data.to(torch.bfloat16)
    adapter = Adapter(replace(policy, model=rollout_model), cfg.data.template)
    strategy.prepare(policy.model)
    vllm_options = {"settings": cfg.rollout.vllm, "seed": cfg.run.seed} if cfg.rollout.engine == "vllm" else {}
    engine = build_engine(cfg.rollout.engine, adapter, autocast=cfg.training.autocast,
                          max_prompt_tokens=cfg.rollout.max_prompt_tokens, **vllm_options)
    rewards = RewardComposer(
        cfg.rewards.terms, task_reward_sets(cfg), timeout_s=cfg.rewards.timeout_s,
        gate_accuracy_on_format=cfg.rewards.gate_accuracy_on_format,
        step_terms_in_reward=spec.process_mode == "outcome",  # else step rewards count through the steps only
    )
    check_prompt_lengths([*sampler.sources, *eval_sources], lambda p: len(adapter.encode(p).input_ids),
                         cfg.rollout.max_prompt_tokens)
    eval_sets = {s.name: list(s.pool or ()) for s in eval_sources}

    total_opt_steps = cfg.training.max_steps * spec.num_epochs * spec.num_mini_batches
    params = [p for p in policy.model.parameters() if p.requires_grad]
    critic = critic_opt = critic_sched = value_head = None
    if spec.critic is not None and spec.critic.shared_trunk:
        if spec.critic.pretrain_steps:
            raise ValueError("critic.pretrain_steps > 0 with critic.shared_trunk=true would train the policy's "
                             "trunk before RL; value pretraining (VC-PPO) needs a separate critic")
        value_head = strategy.prepare_replicated(
            ValueHead(policy.model.config.get_text_config().hidden_size, cfg.run.seed).to(device))
        params = [{"params": params}, {"params": list(value_head.parameters()), "lr": spec.critic.lr}]
    elif spec.critic is not None:
        if policy.is_vlm:
            raise ValueError("a separate critic is text-only for now; for vision-language models use "
                             "algorithm.critic.shared_trunk=true or a value-free preset such as grpo or dapo")
        critic = strategy.prepare_replicated(ValueModel(rollout_model, seed=cfg.run.seed).to(device))
        # The critic's own schedule over its own steps (VC-PPO pretraining steps included).
        critic_steps = (cfg.training.max_steps + spec.critic.pretrain_steps) * spec.num_epochs * spec.critic.num_mini_batches
        critic_opt, critic_sched = build_optimizer(list(critic.parameters()), cfg.training, lr=spec.critic.lr,
                                                   total_steps=critic_steps)
    optimizer, scheduler = build_optimizer(params, cfg.training, total_steps=total_opt_steps)
    max_new_tokens = max((cfg.rollout.max_new_tokens, *(n for _, n in cfg.rollout.length_schedule)))
    run = Run(cfg=cfg, spec=spec, run_dir=run_dir, policy=policy, adapter=adapter, engine=engine,
              rewards=rewards, sampler=sampler, eval_sets=eval_sets, updater=None,  # type: ignore[arg-type]
              reference=reference, lock=lock, strategy=strategy)
    run.updater = Updater(spec=spec, cfg=cfg.training, model=policy.model, optimizer=optimizer,
                          scheduler=scheduler, max_completion_len=max_new_tokens,
                          logprob_fn=lambda m, b: run.logprobs(m, b, with_entropy=True),
                          critic=critic, critic_optimizer=critic_opt, critic_scheduler=critic_sched,
                          value_fn=completion_values,
                          value_head=value_head, hidden_fn=run.forward_with_hidden, strategy=strategy)
    if value_head is not None:  # old values: the value head on the policy's own forward
        run.updater.value_fn = lambda m, b: value_head(run.forward_with_hidden(m, b)[2].float()) * b.completion_mask
    run.generator.manual_seed(cfg.run.seed)
    if resume:
        restore(run)
    return run


def trainer_state(run: Run) -> dict[str, Any]:
    u = run.updater
    return {
        "optimizer": u.strategy.optimizer_state(u.optimizer),  # full tensors (a collective under FSDP2)
        "scheduler": u.scheduler.state_dict(),
        "critic_optimizer": None if u.critic_optimizer is None else u.critic_optimizer.state_dict(),
        "critic_scheduler": None if u.critic_scheduler is None else u.critic_scheduler.state_dict(),
        "sampler": run.sampler.state_dict(),
        "generator": run.generator.get_state(),
        "history": run.history,
    }


def save(run: Run, step: int, state: dict[str, Any] | None = None) -> Path:
    """Checkpoint ``step``; ``state`` overrides parts of the trainer state (a snapshot from before a failed step)."""
    # every rank gathers the state (collectives under FSDP2); rank 0 writes the single-process layout from
    # the full model (adapter.model: the policy itself, or FSDP2's refreshed copy); its error is raised on all
    full_state = {**trainer_state(run), **(state or {})}
    path, error = ckpt.checkpoint_dir(run.run_dir, step), None
    processing = run.policy.processor or run.policy.tokenizer
    if run.strategy.is_main:
        try:
            path = ckpt.save_checkpoint(run.run_dir, step, lora.saveable(run.adapter.loaded), processing,
                                        full_state,
                                        critic=run.updater.critic or run.updater.value_head,
                                        keep=run.cfg.training.keep_checkpoints)
        except ckpt.CheckpointError as err:
            error = err
    errors = run.strategy.gather(error)
    if errors[0] is not None:
        raise errors[0]
    return path


def restore(run: Run) -> None:
    """Load the newest readable checkpoint (falling back past corrupt ones with a warning); none: step 0."""
    found = ckpt.list_checkpoints(run.run_dir)
    for path in reversed(found):
        try:
            loaded = ckpt.read_checkpoint(path)
            break
        except ckpt.CheckpointError as err:
            warnings.warn(f"{err}; falling back to the previous checkpoint", stacklevel=2)
    else:
        if found:
            raise ckpt.CheckpointError(f"--resume: no readable checkpoint under {run.run_dir / 'checkpoints'}")
        warnings.warn(f"--resume: {run.run_dir} has no checkpoint yet; starting from step 0", stacklevel=2)
        return
    state = loaded.state
    if run.policy.peft is not None:  # LoRA: model/ holds the adapter only
        lora.load_adapter_weights(run.policy, loaded.weights, loaded.path)
    else:
        run.strategy.load_full_weights(run.policy.model, run.adapter.model,
                                       lambda model: ckpt.load_weights(model, loaded.weights, loaded.path))
    u = run.updater
    run.strategy.load_optimizer_state(u.optimizer, state["optimizer"])
    u.scheduler.load_state_dict(state["scheduler"])
    if u.critic is not None:
        u.critic.load_state_dict(loaded.critic)
        u.critic_optimizer.load_state_dict(state["critic_optimizer"])  # type: ignore[union-attr]
        if u.critic_scheduler is not None and state.get("critic_scheduler") is not None:
            u.critic_scheduler.load_state_dict(state["critic_scheduler"])
    if u.value_head is not None:
        u.value_head.load_state_dict(loaded.critic)
    run.sampler.load_state_dict(state["sampler"])
    run.generator.set_state(state["generator"])
    run.history = state.get("history", {})
    ckpt.set_rng_state(state["rng"])
    run.start_step = int(state["step"])
